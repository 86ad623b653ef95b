"""A 65,536-token row on 8 context-parallel devices: the long-video path on CPU.

One 64-frame 128x128 clip with 4x4 patches is 64 x 32 x 32 = 65,536 tokens. The
sequence is split over `mesh.context` devices; attention runs context-parallel
(all_gather or ulysses, model.context_parallel) with query-chunked, rematerialized
reference attention, so memory stays bounded on CPU.

python -m data_pipelines.synthetic --output_dir=LONG --num_examples=8 --num_eval=0 \\
    --min_frames=64 --max_frames=64 --image_fraction=0 --min_side=128 --aspect_ratios=1:1
python -m data_pipelines.tokenizer --data_dir=LONG --vocab_size=64
XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m sora_jax.train \\
    --config=experiments/long_context.py --workdir=RUN --config.data.data_dir=LONG

On 2 CPU cores: about 2 minutes per step and 14 GB of host memory for the 8 fake
devices (docs/performance.md).
"""

from experiments import base


def get_config(arg=None):
  del arg
  c = base.get_config()
  c.data.update(
    seq_len=65536,
    max_examples_per_row=1,
    max_tokens_per_example=65536,
    max_frames=64,
    min_frame_tokens=1024,
    max_text_len=24,  # The captions' 99th percentile is 21 tokens with this tokenizer.
    num_packing_bins=1,
  )
  c.model.update(
    patch=(1, 4, 4),
    depth=1,
    width=64,
    # One 64-wide head: on CPUs a wide head is several times faster than 8 of width 8.
    # context_parallel="ulysses" needs heads divisible by mesh.context (e.g. heads=8).
    heads=1,
    dtype="float32",
    remat="full",
    context_parallel="all_gather",
  )
  c.model.text.update(width=32, depth=1, heads=1)
  c.optim.update(lr=1e-3, warmup_steps=1)
  c.train.update(num_steps=3, global_batch_size=1, log_every=1, checkpoint_every=3)
  c.mesh.update(data=1, fsdp=1, context=-1, tensor=1)
  return c
