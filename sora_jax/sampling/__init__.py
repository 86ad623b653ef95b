"""Inference: loading a trained run (`run.load`), requests packed like training, the sampler.

May import: sora_jax.diffusion and below.
"""
