r"""Prompt following: generate from held-out captions and read colour, shape and motion back.

  python -m sora_jax.evaluate --workdir=DIR --data_dir=DATA [--split=eval] [--output=OUT]
  python -m sora_jax.evaluate --workdir=DIR --data_dir=DATA --evals=prompt_following,editing

  python -m sora_jax.evaluate --workdir=DIR --data_dir=DATA --evals=prompt_following,families \
      [--expander=EXPANDER_DIR] [--probe=DIR] [--autoencoder=AE_DIR]

With --evals=families (sora_jax.evaluators.families), the prompt-following clips are
also measured by the four families of video evaluation (alignment with readback and a
learned probe, a Fréchet distance in the probe's features, motion by optical flow,
temporal consistency by warping error and flicker, visual quality by patch grid,
sharpness and an autoencoder's round trip), beside the same measures on real clips of
the split and on real footage (OUT/families.png). With --expander, each prompt is
expanded into a descriptive caption before generation (sora_jax.sampling.expand) and
the speed and start position it states are scored too.

With --evals=editing (sora_jax.evaluators.editing), clips of the split are
animated from their first frame, extended forward and backward and looped, and
the kept frames' fidelity, the seams and the continuity of colour and motion are
printed against their aims (OUT/editing_results.json, editing_contact_sheet.png).

Takes the distinct canonical captions of a split of the built-in synthetic
dataset (by default `eval`: the (color, shape) pairs held out of training),
generates each at sizes cycling through --sizes, and reads the attributes back
from the pixels (sora_jax.evaluators.prompt_following). Prints the accuracy of
each attribute next to chance, and writes OUT/eval_results.json and
OUT/eval_contact_sheet.png (each sample captioned with its prompt and what was
read back).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from absl import flags

from data_pipelines import shards
from sora_jax.analysis import plots
from sora_jax.core import checkpointing, cli, distributed
from sora_jax.diffusion import latent
from sora_jax.evaluators import alignment, editing, prompt_following
from sora_jax.model_io import adapters, small_model
from sora_jax.sampling import expand, sampler
from sora_jax.sampling import run as run_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.")
  flags.DEFINE_string("model", None, "An exported model directory (instead of --workdir).")
  flags.DEFINE_multi_string("preset", [], "A LoRA adapter directory[:scale]; repeat to stack.")
  distributed.define_flags()
  flags.DEFINE_string("data_dir", None, "The synthetic dataset the prompts come from.")
  flags.DEFINE_string("split", "eval", "Split whose captions are the prompts.")
  flags.DEFINE_integer("num_prompts", 48, "At most this many distinct captions.")
  flags.DEFINE_string(
    "sizes",
    None,
    "FRAMESxHEIGHTxWIDTH sizes to cycle (default: the sizes 1:1, 16:9 and 9:16 clips are "
    "trained at under the run's token budget).",
  )
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_integer("steps", None, "Sampling steps (default: the config's).")
  flags.DEFINE_float("cfg_scale", None, "Guidance scale (default: the config's).")
  flags.DEFINE_integer("seed", 0, "Seed of the first prompt; prompt i uses seed + i.")
  flags.DEFINE_string("output", "out/eval", "Where results and the contact sheet go.")
  flags.DEFINE_list(
    "evals",
    ["prompt_following"],
    "Evaluations to run: prompt_following (text-to-video read back), families (the "
    "four families of video evaluation on the same clips, beside real clips), editing "
    "(image animation, extension both ways and loops: fidelity, seams, continuity).",
  )
  flags.DEFINE_string(
    "expander",
    None,
    "Expand each prompt first: a trained expander directory (sora_jax.train_expander) or "
    "command:PROGRAM (default: none; the config's sample.expander with --expand_prompt).",
  )
  flags.DEFINE_bool("expand_prompt", False, "Expand prompts with the config's sample.expander.")
  flags.DEFINE_string("probe", alignment.DEFAULT_PROBE, "Families: the evaluation probe.")
  flags.DEFINE_string(
    "autoencoder",
    None,
    "Families: an autoencoder workdir whose round trip is measured (default: the run's own "
    "for latent-space runs; none for pixel runs).",
  )
  flags.DEFINE_integer("num_clips", 16, "Editing: clips of the split each mode runs on.")
  flags.DEFINE_string(
    "aims",
    "",
    "ATTRIBUTE:FRACTION,... to print each accuracy against (e.g. color:0.95,motion:0.75); "
    "met or not is also written to the results.",
  )


def parse_aims(spec: str) -> dict[str, float]:
  aims = {}
  for part in filter(None, (p.strip() for p in spec.split(","))):
    name, _, value = part.partition(":")
    try:
      aims[name.strip()] = float(value)
    except ValueError:
      raise sampler.RequestError(f"--aims entry {part!r}: expected ATTRIBUTE:FRACTION") from None
    allowed = (*prompt_following.CHANCE, "one_object")
    if name.strip() not in allowed:
      raise sampler.RequestError(
        f"--aims entry {part!r}: unknown attribute; allowed: {', '.join(allowed)}"
      )
  return aims


def parse_sizes(spec: str) -> list[tuple[int, int, int]]:
  sizes = []
  for part in spec.split(","):
    try:
      t, h, w = (int(x) for x in part.strip().lower().split("x"))
    except ValueError:
      raise sampler.RequestError(f"--sizes entry {part!r}: expected FRAMESxHEIGHTxWIDTH") from None
    sizes.append((t, h, w))
  return sizes


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if not FLAGS.data_dir:
    sys.exit("error: --data_dir is required")
  if bool(FLAGS.workdir) == bool(FLAGS.model):
    sys.exit("error: pass one of --workdir=RUN or --model=EXPORT_DIR")
  cli.quiet()
  distributed.initialize_from_flags()
  cli.log_to_file(os.path.join(FLAGS.output, "logs"), "evaluate")
  allowed = ("prompt_following", "families", "editing")
  unknown = sorted(set(FLAGS.evals) - set(allowed))
  if unknown or not FLAGS.evals:
    sys.exit(f"error: --evals={','.join(FLAGS.evals)}: allowed {', '.join(allowed)}")
  families = "families" in FLAGS.evals
  try:
    aims = parse_aims(FLAGS.aims)
    sizes = parse_sizes(FLAGS.sizes) if FLAGS.sizes else None
    presets = [adapters.parse_spec(p) for p in FLAGS.preset]
    run = run_lib.load(FLAGS.workdir or FLAGS.model, FLAGS.step, presets=presets)
    edits = None
    if "editing" in FLAGS.evals:
      edits = editing.evaluate(
        run,
        FLAGS.data_dir,
        split=FLAGS.split,
        num_clips=FLAGS.num_clips,
        steps=FLAGS.steps,
        cfg_scale=FLAGS.cfg_scale,
        seed=FLAGS.seed,
        output=FLAGS.output,
      )
    result = None
    spec = FLAGS.expander or (run.cfg.sample.get("expander") if FLAGS.expand_prompt else None)
    if FLAGS.expand_prompt and not spec:
      raise sampler.RequestError("--expand_prompt: the run's config has no sample.expander")
    expander = expand.load(spec) if spec else None
    probe = alignment.Probe(FLAGS.probe) if families else None
    stage = None
    if families and FLAGS.autoencoder:
      stage = latent.AutoencoderStage(FLAGS.autoencoder, stats_file=None)
    elif families and run.geom.compression != (1, 1, 1):
      stage = run.stage
    if "prompt_following" in FLAGS.evals or families:
      result = prompt_following.evaluate(
        run,
        FLAGS.data_dir,
        split=FLAGS.split,
        num_prompts=FLAGS.num_prompts,
        sizes=sizes,
        steps=FLAGS.steps,
        cfg_scale=FLAGS.cfg_scale,
        seed=FLAGS.seed,
        output=FLAGS.output,
        aims=aims,
        expander=expander,
        families=families,
        probe=probe,
        stage=stage,
      )
  except (
    sampler.RequestError,
    checkpointing.CheckpointError,
    adapters.ExportError,
    shards.DatasetError,
    expand.ExpandError,
    small_model.SmallModelError,
    FileNotFoundError,
  ) as e:
    sys.exit(f"error: {e}")
  if edits is not None:
    print_editing(edits)
  if result is not None:
    print_prompt_following(result, aims)
  if result is not None and "families" in result:
    print_families(result["families"])


def print_editing(edits: dict) -> None:
  n = edits["modes"][editing.MODES[0]]["n"]
  print(f"editing at step {edits['step']} on {n} clips of split {edits['split']!r}:")
  for mode, m in edits["modes"].items():
    if mode == "blend":
      print(
        f"  {mode:<16} first third reads as A {m['first_is_a']:.0%}, last third as B "
        f"{m['last_is_b']:.0%}"
      )
      continue
    if mode == "storyboard":
      parts = [f"first window motion {m['first_window']:.0%}"]
      parts.append(f"second window motion {m['second_window']:.0%}")
      parts.append(f"switch read in {m['switch_found']:.0%} of clips")
      if "switch_error" in m:
        parts[-1] += f", {m['switch_error']:.1f} frames from the asked one"
      print(f"  {mode:<16} " + ", ".join(parts))
      continue
    if mode == "recut":
      parts = [f"{k} {m[k]:.0%}" for k in ("color", "motion") if k in m]
      if "path_error" in m:
        parts.append(f"path error {m['path_error']:.3f} of the diagonal")
      print(f"  {mode:<16} " + ", ".join(parts))
      continue
    parts = [f"fidelity {m['fidelity']:.1f} dB"]
    if "fidelity_reference" in m:
      parts[-1] += f" (autoencoder alone {m['fidelity_reference']:.1f} dB)"
    if "seam" in m:
      parts.append(f"seam {m['seam']:.2f}x")
      if "seam_baseline" in m:
        parts[-1] += f" (text-to-video at the same frames {m['seam_baseline']:.2f}x)"
    for k in ("color", "motion"):
      if k in m and mode != "loop":
        parts.append(f"{k} {m[k]:.0%}")
    print(f"  {mode:<16} " + ", ".join(parts))
  remix = edits["remix"]
  print(
    "  remix            colour follows the new prompt at keep "
    + ", ".join(f"{k}: {v['color']:.0%}" for k, v in remix.items())
  )
  print(
    "                   path error (of the diagonal) at keep "
    + ", ".join(
      f"{k}: {'-' if v['path_error'] is None else format(v['path_error'], '.3f')}"
      for k, v in remix.items()
    )
  )
  for name, a in edits["aims"].items():
    op = "<=" if name.endswith(".seam") else ">="
    print(f"  aim {name} {op} {a['aim']:g}: {'met' if a['met'] else 'NOT met'}")
  curve = plots.remix_curve(remix, os.path.join(FLAGS.output, "editing_remix.png"))
  print(f"results: {os.path.join(FLAGS.output, 'editing_results.json')}, {curve}")
  print(f"one example of every mode: {FLAGS.output}/MODE.mp4 (given media: MODE.given-K.mp4)")


def print_prompt_following(result: dict, aims: dict[str, float]) -> None:
  accuracy = result["accuracy"]
  n = len(result["samples"])
  print(f"prompt following at step {result['step']} on {n} prompts of split {FLAGS.split!r}:")

  def aim_text(k):
    if k not in aims:
      return ""
    return f"  aim {aims[k]:.0%}: {'met' if accuracy[k] >= aims[k] else 'NOT met'}"

  for k, chance in prompt_following.CHANCE.items():
    if k in accuracy:
      print(
        f"  {k:<10} {accuracy[k]:6.1%}  (chance {chance:.0%}, n={accuracy['n_' + k]})" + aim_text(k)
      )
  for bg, acc in accuracy.get("by_background", {}).items():  # Where the misses are.
    figures = ", ".join(f"{k} {acc[k]:.0%}" for k in prompt_following.CHANCE if k in acc)
    print(f"  {'on ' + bg:<10} {figures} (n={acc['n']})")
  real = result["real"]
  if "one_object" in accuracy:  # Prompts of the built-in vocabulary only.
    print(
      f"  {'one object':<10} {accuracy['one_object']:6.1%}  (real clips {real['one_object']:.0%})"
      + aim_text("one_object")
    )
  print(
    f"  {'patch grid':<10} {accuracy['grid_ratio']:6.2f}x (real clips {real['grid_ratio']:.2f}x; "
    "1 = no grid)"
  )
  if "style" in accuracy:  # Prompts with a style phrase: is the style there in the pixels?
    print(f"  {'style':<10} {accuracy['style']:6.1%}  (n={accuracy['n_style']})")
  for k in ("speed", "start"):  # What only an expanded prompt states.
    if accuracy.get(k) is not None:
      print(
        f"  {k:<10} {accuracy[k]:6.1%}  (stated by the expanded prompt, n={accuracy['n_' + k]})"
      )
  print(f"results: {os.path.join(FLAGS.output, 'eval_results.json')}")


def print_families(fam: dict) -> None:
  sets = [s for s in ("generated", "real", "footage") if s in fam]
  print("video evaluation families: " + " | ".join(sets))
  for panel in plots.FAMILY_PANELS:
    values = [plots.family_value(fam[s], panel) for s in sets]
    if values[0] is None:
      continue
    cells = " | ".join("n/a" if v is None else f"{v:.3g}" for v in values)
    print(f"  {panel[2]:<34} {cells}   ({panel[3]} is better)")
  path = plots.families_chart(fam, os.path.join(FLAGS.output, "families.png"))
  print(f"families: {path} (real footage: {', '.join(fam['footage_files']) or 'none installed'})")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
