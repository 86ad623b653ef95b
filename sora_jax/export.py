r"""Exports a training run as a self-contained model directory (or a LoRA adapter).

  python -m sora_jax.export --workdir=RUN --output=DIR [--step=N] [--weights=ema|raw] \
      [--dtype=bfloat16|float32] [--max_shard_size=2GB] [--format=safetensors|orbax] \
      [--merge_lora=ADAPTER[:scale]] [--eval_results=FILE] [--overwrite]

DIR holds the DiT and text encoder as safetensors (per-layer names, shards plus
model.safetensors.index.json above --max_shard_size), config.json (model,
geometry, sampling defaults, provenance, the run's whole config), the
tokenizer, the autoencoder of a latent run, and a README.md model card; see
docs/export.md. Arrays are restored and written a few at a time, so host
memory stays near one group of arrays plus one shard. An adapter run
(config.lora.rank > 0) exports its adapter alone: adapter.safetensors and
adapter_config.json. Use the result with

  python -m sora_jax.sample --model=DIR --prompt=...  [--preset=ADAPTER[:scale]]
  python -m sora_jax.train --config=... --config.init_from=DIR ...
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence

from absl import flags

from sora_jax.core import checkpointing, cli
from sora_jax.model_io import adapters, model_dir

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("output", None, "The model (or adapter) directory to write.")
  flags.DEFINE_enum("weights", "ema", ["ema", "raw"], "EMA or raw training parameters.")
  flags.DEFINE_enum("dtype", "bfloat16", sorted(model_dir.common.DTYPES), "Tensor dtype.")
  flags.DEFINE_string("max_shard_size", "2GB", "Largest safetensors file (e.g. 2GB, 500MB).")
  flags.DEFINE_enum(
    "format", "safetensors", ["safetensors", "orbax"], "orbax: parameters only, for pods."
  )
  flags.DEFINE_multi_string("merge_lora", [], "ADAPTER_DIR[:scale] to bake into the weights.")
  flags.DEFINE_multi_string("eval_results", [], "Evaluation JSON(s) for the model card.")
  flags.DEFINE_bool("overwrite", False, "Replace --output if it exists.")
  flags.DEFINE_string(
    "restore_group_size", "256MB", "Checkpoint arrays restored at a time (at least one array)."
  )


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  for name in ("workdir", "output"):
    if not FLAGS[name].value:
      sys.exit(f"error: --{name} is required")
  cli.quiet()
  # --output is the published directory (new, or replaced under --overwrite), so the log goes
  # beside the run's own; a missing (mistyped) or read-only --workdir gets no log file.
  with contextlib.suppress(OSError):
    if os.path.isdir(FLAGS.workdir):
      log_file = cli.log_to_file(os.path.join(FLAGS.workdir, "logs"), "export")
      cli.say(f"sora_jax.export: logs in {log_file}")
  try:
    opts = model_dir.ExportOptions(
      weights=FLAGS.weights,
      dtype=FLAGS.dtype,
      max_shard_size=FLAGS.max_shard_size,
      format=FLAGS.format,
      overwrite=FLAGS.overwrite,
      merge_lora=[adapters.parse_spec(s) for s in FLAGS.merge_lora],
      eval_results=FLAGS.eval_results,
      group_size=FLAGS.restore_group_size,
    )
    summary = model_dir.export(FLAGS.workdir, FLAGS.step, FLAGS.output, opts)
  except (model_dir.ExportError, checkpointing.CheckpointError, FileNotFoundError) as e:
    # A damaged checkpoint leaves orbax's reads in flight; exit at once so their
    # late callbacks cannot print after the one line.
    sys.stderr.write(f"error: {e}\n")
    sys.stderr.flush()
    os._exit(1)
  kind = "adapter" if summary.get("adapter") else "model"
  print(
    f"exported the {kind} of step {summary['step']} ({summary['num_params']:,} parameters, "
    f"{summary['total_bytes'] / 1e6:.1f} MB) to {summary['output']}:"
  )
  for f in sorted(os.listdir(summary["output"])):
    print(f"  {f}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
