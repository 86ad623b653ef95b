"""The demo: a 4.5M-parameter pixel-space DiT trained on the built-in synthetic dataset on CPU.

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
    frame_stride=3,  # 8 frames spanning up to 22 of a clip's: motion is visible.
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
  # 8x8x3 patches (192 values) at width 192: predicting the clean patch (x0)
  # works where predicting velocity gives noise-like samples; see sora_jax/flow.py.
  c.flow.update(shift_base_tokens=32, prediction="data", min_t=0.5)
  c.optim.update(lr=1e-3, warmup_steps=100, weight_decay=0.0, ema_decay=0.999)
  c.train.update(
    # ~2.8 s per step on 2 cores: training fits the demo's 30-minute budget.
    num_steps=450,
    global_batch_size=16,
    log_every=25,
    checkpoint_every=150,
    keep_checkpoints=2,
  )
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  c.sample.update(steps=30, cfg_scale=3.0, sampler="heun", fps=3)  # 8 fps clips, stride 3.
  return c
