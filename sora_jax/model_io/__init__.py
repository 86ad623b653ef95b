"""Models out and in: exported model directories (safetensors or orbax parameters, config,
tokenizer, autoencoder, model card) and LoRA adapter files.

May import: diffusion, models, core, data_pipelines. See docs/design.md and docs/export.md.
"""
