"""The demo: a 1.6M-parameter pixel-space DiT trained on the built-in synthetic dataset on CPU.

make demo    (data, tokenizer, training, samples and the prompt-following evaluation)
"""

from experiments import base
from sora_jax.diffusion import conditioning


def get_config(arg=None):
  del arg
  c = base.get_config()
  c.data.update(
    data_dir="out/demo/data",
    seq_len=256,
    max_examples_per_row=12,
    # 8-frame clips at up to 16x20 pixels (2 x 20 tokens); images up to 40 tokens (20x32).
    max_tokens_per_example=40,
    max_frames=8,
    min_frame_tokens=16,
    max_text_len=16,
    # Captions are 8-10 tokens, 8-10 per row (at most 107 of a row's tokens seen): a
    # budget of 128 instead of room for 12 full captions (192) cuts the caption encoder's
    # and every cross-attention's keys by a third (docs/performance.md).
    text_tokens_per_row=128,
    caption_dropout=0.1,
    num_packing_bins=16,
    # Records read in the thread that packs them: on 2 cores grain's 16 reader threads per
    # shard only compete with the training step (0.14 against 0.155 s a step).
    read_threads=0,
    frame_stride=3,  # 8 frames spanning up to 22 of a clip's: motion is visible.
  )
  c.model.update(
    # 4-frame patches: a token sees the object move, so direction is a property of
    # each token (like colour) rather than a relation between tokens that attention
    # must learn; 4x fewer tokens per clip also means ~3.5x more clips per CPU second.
    # With (1, 8, 8) the demo's motion direction stayed at chance. 4x4 pixels: a token
    # is 4x4x4x3 = 192 values, the model's width, where 4x8x8 patches (768 values,
    # frames of 32x40) left the output a 192-dimensional subspace of each patch and the
    # samples blocks of colour noise (docs/performance.md, "4x4x4 patches").
    patch=(4, 4, 4),
    # 4 layers of width 128 (1.6M parameters, ~3x cheaper a step than 6 x 192) for
    # 2.4x the steps: at this compute the smaller model learns shape on seen pairs
    # where 6 x 192 at 1000 steps did not (docs/performance.md, "A smaller model for
    # longer"; the scaling sweep's optimum is smaller still, docs/scaling.md).
    depth=4,
    width=128,
    heads=2,  # head_dim 64: attention is far cheaper on CPUs than with 32.
    # Per-block modulation from the timestep and the pooled caption (DiT's adaLN): with
    # the caption's words kept apart (text depth 0, below) this binds a colour to a
    # shape it was never trained with far better (held-out shape 62.5% against 37.5%).
    adaln="block",
    dtype="float32",  # bfloat16 matmuls are slow on CPUs.
    remat="none",
    # Layers unrolled: on CPUs a scanned stack zero-fills and copies its per-layer
    # residual buffers every step; unrolled, the step runs ~10% faster (docs/performance.md).
    scan_layers=False,
  )
  # No caption encoder layers: each caption token is its own (normed) embedding, so a
  # held-out (colour, shape) pair is made of exactly the tokens seen in training.
  c.model.text.update(width=128, depth=0, heads=2)
  # Pixel patches are wider than the model: predicting the clean patch (x0) works
  # where predicting velocity gives noise-like samples; see sora_jax/diffusion/flow.py.
  c.flow.update(shift_base_tokens=32, prediction="data", min_t=0.5)
  # A quarter of the examples are given clean frames (first, last, both ends, a prefix or
  # suffix, random frames, per-frame levels): the same model animates images, extends,
  # loops, blends and remixes (make demo writes every mode to out/demo/edits).
  c.flow.conditioning.update(conditioning.MIXTURE)
  # lr 2e-3: with 4-row steps, held-out shape 79.2% on training seeds 1 and 2 where 1e-3
  # read 62.5 / 75.0% (docs/performance.md, "4-row steps at twice the learning rate").
  c.optim.update(lr=2e-3, warmup_steps=100, weight_decay=0.0, ema_decay=0.999)
  c.train.update(
    # 4 rows (~32 examples) a step for 4800 steps: twice the steps of 8-row batches over
    # the same examples in the same time (0.13-0.15 s a step on 2 cores, 0.23-0.27 s on
    # one: ~11 and ~20 minutes). Held-out shape is what more steps move (docs/
    # performance.md, "Twice the training" and "4-row steps at twice the learning rate").
    num_steps=4800,
    global_batch_size=4,
    log_every=50,
    checkpoint_every=1000,
    keep_checkpoints=2,
    # The safety net for make demo's 30 minutes, if a machine is slower still or shared
    # (docs/performance.md, "The demo's budget").
    time_limit_minutes=24.0,
  )
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  # Guidance 3: one object 96-100% and motion 90-95% on two training seeds x two sampling
  # seeds, against 83-96% and 87.5-92.5% at 4.5, on the earlier 6 x 192 model (docs/
  # performance.md, "4x4x4 patches"). On the 4 x 128 model, guidance 2 / 4.5 / 6 read
  # held-out shape 47.9 / 52.1 / 52.1% against 56.2% at 3 ("Where held-out shape fails").
  c.sample.update(steps=30, cfg_scale=3.0, sampler="heun", fps=3)  # 8 fps clips, stride 3.
  return c
