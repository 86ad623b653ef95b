"""Evaluations of trained models, one module each with `evaluate(...) -> dict`.

May import: sora_jax.sampling, sora_jax.training.input_pipeline, and below.
"""
