"""The demo: a ~2M-parameter pixel-space DiT trained on the built-in synthetic dataset on CPU.

make demo    (data, tokenizer, training, samples and the prompt-following evaluation)
"""

from experiments import base


def get_config(arg=None):
  del arg
  c = base.get_config()
  c.data.update(
    data_dir="out/demo/data",
    seq_len=512,
    max_examples_per_row=8,
    max_tokens_per_example=160,
    max_frames=8,
    min_frame_tokens=16,
    max_text_len=16,
    caption_dropout=0.1,
    num_packing_bins=16,
  )
  c.model.update(
    patch=(1, 8, 8),
    depth=6,
    width=192,
    heads=3,  # head_dim 64: attention is far cheaper on CPUs than with 32.
    dtype="float32",  # bfloat16 matmuls are slow on CPUs.
    remat="none",
  )
  c.model.text.update(width=128, depth=2, heads=2)
  c.flow.update(shift_base_tokens=256)
  c.optim.update(lr=1e-3, warmup_steps=100, weight_decay=0.0, ema_decay=0.999)
  c.train.update(
    num_steps=1500, global_batch_size=16, log_every=25, checkpoint_every=500, keep_checkpoints=2
  )
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  c.sample.update(steps=30, cfg_scale=4.0, sampler="heun", fps=8)
  return c
