"""The diffusion process around the model: the rectified-flow objective and the latent stage
(pixels or a learned autoencoder, with its latent statistics).

May import: sora_jax.models, sora_jax.core, data_pipelines.
"""
