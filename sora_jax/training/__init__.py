"""Training: the DiT and autoencoder trainers, optimizer, non-finite guard, preemption,
the sharded input pipeline and the config validators.

May import: sora_jax.diffusion and below.
"""
