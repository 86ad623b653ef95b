"""Exported model directories: written from a training run, read by sampling and fine-tuning.

  DIR/
    config.json                    format, model, geometry, sampling defaults, provenance,
                                   the run's whole config ("train_config"), evaluations
    model.safetensors              DiT + text encoder (or model-0000i-of-0000n.safetensors
                                   and model.safetensors.index.json), per-layer names
    params/                        instead, with format "orbax": the parameters only
    tokenizer.model                the sentencepiece model the captions were tokenized with
    autoencoder/                   latent runs: model.safetensors, config.json, latent_stats.json
    README.md                      the model card

`export(...)` streams: the checkpoint's arrays are restored a group at a time
(orbax's partial restore: the rest of the tree is never read), cast, split into
per-layer tensors and handed to a `ShardWriter`, so host memory stays near one
group plus one shard. It writes into DIR.tmp-PID and renames at the end.
`ModelDir(path)` reads one back; `restore_params` places the weights on any
mesh. Tensor names are documented in docs/export.md.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from tqdm import tqdm

from data_pipelines import sizing
from data_pipelines import tokenizer as tokenizer_lib
from sora_jax.core import checkpointing, configs, safetensors_io
from sora_jax.diffusion import latent
from sora_jax.model_io import adapters, common
from sora_jax.model_io.common import ExportError
from sora_jax.models import dit
from sora_jax.models import lora as lora_lib

FORMAT = "sora_jax.model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
PARAMS_DIR = "params"  # The parameter-only orbax checkpoint of format "orbax".
AUTOENCODER_DIR = "autoencoder"


@dataclasses.dataclass
class ExportOptions:
  weights: str = "ema"  # "ema" or "raw"
  dtype: str = "bfloat16"  # "bfloat16" or "float32"
  max_shard_size: str = "2GB"
  format: str = "safetensors"  # or "orbax" (parameters only, for fast pod restores)
  overwrite: bool = False
  merge_lora: Sequence[tuple[str, float]] = ()  # Adapter directories baked into the weights.
  eval_results: Sequence[str] = ()  # JSON files whose figures go into the model card.
  group_size: str = "256MB"  # Checkpoint arrays restored at a time (at least one array).
  progress: bool = True

  def validate(self) -> None:
    if self.weights not in ("ema", "raw"):
      raise ExportError(f"--weights={self.weights}: choose ema or raw")
    if self.dtype not in common.DTYPES:
      raise ExportError(f"--dtype={self.dtype}: choose one of {sorted(common.DTYPES)}")
    if self.format not in ("safetensors", "orbax"):
      raise ExportError(f"--format={self.format}: choose safetensors or orbax")
    for flag, value in (
      ("max_shard_size", self.max_shard_size),
      ("restore_group_size", self.group_size),
    ):
      try:
        if safetensors_io.parse_size(value) <= 0:
          raise ValueError("must be positive")
      except ValueError as e:
        raise ExportError(f"--{flag}={value}: {e}") from None


def _geometry(cfg, workdir: str) -> sizing.Geometry:
  """The run's token geometry, read from the autoencoder copy beside its checkpoints (the
  original autoencoder may have moved or gone)."""
  name = latent.copy_name(cfg.latent)
  copy = os.path.join(workdir, name) if name else ""
  directory = copy if name and os.path.isdir(copy) else None
  compression, channels = latent.stage_shape(cfg.latent, directory)
  return sizing.Geometry(tuple(int(p) for p in cfg.model.patch), compression, channels)


def _dit_config(cfg, vocab_size: int, workdir: str, *, with_lora: bool) -> dit.DiTConfig:
  geom = _geometry(cfg, workdir)
  return dit.DiTConfig.from_config(
    cfg.model,
    geom.patch_dim,
    vocab_size,
    dit.packing_of(cfg.data),
    lora_cfg=cfg.get("lora") if with_lora else None,
  )


def _read_evaluations(paths: Sequence[str]) -> dict[str, Any]:
  out = {}
  for path in paths:
    try:
      with open(path) as f:
        d = json.load(f)
    except (OSError, ValueError) as e:
      raise ExportError(f"--eval_results={path}: unreadable ({e})") from None
    summary = {k: d[k] for k in ("step", "accuracy", "split") if k in d}
    out[os.path.basename(os.path.dirname(os.path.abspath(path))) or path] = summary or d
  return out


def export(
  workdir: str, step: int | None, output: str, opts: ExportOptions | None = None
) -> dict[str, Any]:
  """Writes the model directory of `workdir`'s checkpoint `step` (default: latest) to `output`.

  A run trained with adapters (config.lora) exports its adapter alone (see
  sora_jax.model_io.adapters); `opts.merge_lora` bakes adapters into a base.
  Returns a summary (files, sizes, parameter count, fingerprint).
  """
  opts = opts or ExportOptions()
  opts.validate()
  step, config_json = checkpointing.restore_config(workdir, step)
  cfg = configs.from_json(config_json)
  tok_path = os.path.join(workdir, tokenizer_lib.MODEL_NAME)
  if not os.path.exists(tok_path):
    raise ExportError(f"--workdir={workdir}: no {tokenizer_lib.MODEL_NAME} beside the checkpoints")
  vocab = tokenizer_lib.Tokenizer(tok_path).vocab_size
  if lora_lib.LoraConfig.from_config(cfg.get("lora")) is not None:
    if opts.merge_lora:
      raise ExportError(f"--workdir={workdir} trained an adapter; --merge_lora needs a base run")
    dit_cfg = _dit_config(cfg, vocab, workdir, with_lora=True)
    return adapters.export(workdir, step, output, cfg, config_json, dit_cfg, opts)
  dit_cfg = _dit_config(cfg, vocab, workdir, with_lora=False)
  positions = common.layer_positions(dit_cfg)
  tmp = common.prepare_output(output, opts.overwrite)
  try:
    summary = _write(workdir, step, cfg, config_json, dit_cfg, positions, tmp, opts)
    shutil.copyfile(tok_path, os.path.join(tmp, tokenizer_lib.MODEL_NAME))
    if cfg.latent.get("kind") == "autoencoder":
      _export_autoencoder(workdir, os.path.join(tmp, AUTOENCODER_DIR))
    elif cfg.latent.get("kind") == "pca":  # Two small files: copied as they are.
      latent.PCAStage(os.path.join(workdir, latent.PCA_COPY)).export(
        os.path.join(tmp, latent.PCA_COPY)
      )
    with open(os.path.join(tmp, CONFIG_FILE)) as f:
      card = model_card(json.load(f), summary)
    with open(os.path.join(tmp, "README.md"), "w") as f:
      f.write(card)
    common.finish_output(tmp, output)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  summary["output"] = os.path.abspath(output)
  return summary


def _write(workdir, step, cfg, config_json, dit_cfg, positions, tmp, opts) -> dict[str, Any]:
  dtype = common.DTYPES[opts.dtype]
  merges = [adapters.read(d) for d, _ in opts.merge_lora]
  scales = [s for _, s in opts.merge_lora]
  fp_base, fp_out = common.Fingerprint(), common.Fingerprint()
  count = 0
  total = None
  writer = None
  if opts.format == "safetensors":
    meta = {"format": "pt", "sora_jax_format": FORMAT, "step": str(step)}
    writer = safetensors_io.ShardWriter(tmp, max_shard_size=opts.max_shard_size, metadata=meta)
  orbax_params = {}
  with tqdm(desc="export", unit="tensor", disable=not opts.progress) as bar:
    group_bytes = safetensors_io.parse_size(opts.group_size)
    for name, array in common.stream_params(workdir, step, opts.weights, group_bytes=group_bytes):
      for part, a in safetensors_io.unstacked(name, array, positions.get(name)):
        fp_base.add_array(part, a)
      if merges:
        array = adapters.merge_array(name, array, merges, scales, positions)
      for part, a in safetensors_io.unstacked(name, array, positions.get(name)):
        out = a.astype(dtype)
        fp_out.add_array(part, out)
        if writer is not None:
          writer.add(part, out)
        count += int(a.size)
        bar.update(1)
      if opts.format == "orbax":
        orbax_params[name] = array.astype(dtype)
  if writer is not None:
    files = writer.close()
    total = writer.total_size
  else:
    tree = safetensors_io.unflatten(orbax_params)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(epath.Path(tmp) / PARAMS_DIR, tree)
    ckptr.wait_until_finished()
    ckptr.close()
    files = [PARAMS_DIR]
    total = int(sum(a.nbytes for a in orbax_params.values()))
    del orbax_params
  for m in merges:  # Checked once the base weights have been read (streamed, not kept).
    adapters.check_base(m, fp_base.hexdigest())
  # Merged adapters make new weights; their own fingerprint is what adapters must match.
  fp = (fp_out if merges else fp_base).hexdigest()
  geom = _geometry(cfg, workdir)
  t = cfg.train
  config = {
    "format": FORMAT,
    "format_version": FORMAT_VERSION,
    "weights": {
      "format": opts.format,
      "files": files,
      "source": opts.weights,
      "dtype": opts.dtype,
      "num_params": count,
      "total_bytes": total,
      "fingerprint": fp,
      "names": "per-layer (scanned layers unstacked); see docs/export.md",
      "merged_adapters": [
        {"directory": os.path.abspath(d), "scale": s, "base": m.config["base_fingerprint"]}
        for (d, s), m in zip(opts.merge_lora, merges, strict=True)
      ],
    },
    "model": {
      **{
        k: v
        for k, v in dataclasses.asdict(dit_cfg).items()
        if k not in ("text", "packing", "lora", "attention", "context_parallel", "remat")
      },
      "text": dataclasses.asdict(dit_cfg.text),
    },
    "geometry": {
      "patch": list(geom.patch),
      "compression": list(geom.compression),
      "channels": geom.channels,
      "patch_dim": geom.patch_dim,
      "latent": cfg.latent.get("kind", "pixel"),
    },
    "sampling": dict(cfg.sample),
    "provenance": {
      "run": os.path.abspath(workdir),
      "step": step,
      "row_tokens_seen": int(step) * int(t.global_batch_size) * int(cfg.data.seq_len),
      "source_commit": common.source_commit(),
      "config_sha256": common.config_sha256(config_json),
      "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    },
    "evaluations": _read_evaluations(opts.eval_results),
    "train_config": config_json,
  }
  with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
    json.dump(config, f, indent=2, default=str)
  return {
    "step": step,
    "files": files,
    "num_params": count,
    "total_bytes": total,
    "fingerprint": fp,
  }


def _export_autoencoder(workdir: str, out: str) -> None:
  """The run's autoencoder copy as safetensors (float32), its config and latent statistics."""
  src = os.path.join(workdir, latent.AUTOENCODER_COPY)
  if not os.path.isdir(src):
    raise ExportError(f"--workdir={workdir}: this latent run has no autoencoder copy ({src})")
  step = checkpointing.latest_step(src)
  os.makedirs(out)
  with safetensors_io.ShardWriter(out, max_shard_size="100GB") as writer:
    for name, array in common.stream_params(src, step, "ema"):
      writer.add(name, array.astype(np.float32))
  for name in ("config.json", latent.STATS_FILE):
    shutil.copyfile(os.path.join(src, name), os.path.join(out, name))


def model_card(config: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
  """README.md of an export: what the model is, where it came from, what it scored."""
  m, g, w, p = config["model"], config["geometry"], config["weights"], config["provenance"]
  lines = [
    "# sora_jax text-to-video model",
    "",
    f"A {w['num_params'] / 1e6:.1f}M-parameter diffusion transformer (depth {m['depth']}, width "
    f"{m['width']}, {m['heads']} heads) over {g['latent']}-space spacetime patches "
    f"{tuple(g['patch'])}, with a {m['text']['depth']}-layer text encoder, exported by "
    "`python -m sora_jax.export`.",
    "",
    "| | |",
    "|---|---|",
    f"| weights | {w['source']}, {w['dtype']}, {w['format']} ({', '.join(w['files'])}) |",
    f"| bytes | {w['total_bytes']:,} |",
    f"| fingerprint | `{w['fingerprint']}` |",
    f"| run | `{p['run']}`, step {p['step']:,} |",
    f"| row tokens seen | {p['row_tokens_seen']:,} (packed rows x length, padding included) |",
    f"| source commit | `{p['source_commit']}` |",
    f"| config sha256 | `{p['config_sha256']}` |",
    f"| exported | {p['exported_at']} |",
  ]
  if w.get("merged_adapters"):
    merged = ", ".join(f"{a['directory']} x {a['scale']}" for a in w["merged_adapters"])
    lines.append(f"| merged adapters | {merged} |")
  lines += ["", "## Evaluations", ""]
  if config.get("evaluations"):
    for name, ev in config["evaluations"].items():
      acc = ev.get("accuracy", {})
      shown = {k: v for k, v in acc.items() if not k.startswith("n_")}
      lines.append(
        f"- {name} (step {ev.get('step', '?')}): "
        + ", ".join(f"{k} {v:.1%}" for k, v in shown.items() if isinstance(v, int | float))
      )
  else:
    lines.append("None recorded (pass --eval_results=FILE to `sora_jax.export`).")
  lines += [
    "",
    "## Use",
    "",
    "```",
    'python -m sora_jax.sample --model=THIS_DIR --prompt="a red circle moving left on a '
    'black background"',
    "python -m sora_jax.train --config=CONFIG --config.init_from=THIS_DIR --workdir=RUN",
    "```",
    "",
    "The safetensors files open with `safetensors.safe_open(path, 'numpy')` alone; tensor",
    "names are described in sora_jax's docs/export.md. `config.json` holds everything",
    "needed to rebuild the model (`train_config`) and its sampling defaults.",
    "",
  ]
  return "\n".join(lines)


# ------------------------------------------------------------------------------
# Reading an export.
# ------------------------------------------------------------------------------


def is_model_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, CONFIG_FILE)) and not os.path.isdir(
    checkpointing.directory(path)
  )


class ModelDir:
  """An exported model directory: its config, tokenizer, autoencoder and weights."""

  def __init__(self, path: str):
    self.path = os.path.abspath(path)
    cfg_path = os.path.join(self.path, CONFIG_FILE)
    if not os.path.isdir(self.path):
      raise ExportError(f"{path}: no such model directory")
    try:
      with open(cfg_path) as f:
        self.config = json.load(f)
    except (OSError, ValueError) as e:
      raise ExportError(f"{cfg_path}: not a readable model config ({e})") from None
    if self.config.get("format") != FORMAT:
      raise ExportError(f"{path}: not a sora_jax model directory ({CONFIG_FILE} lacks the format)")
    if int(self.config.get("format_version", 0)) > FORMAT_VERSION:
      raise ExportError(
        f"{path}: format version {self.config['format_version']} is newer than this "
        f"sora_jax reads ({FORMAT_VERSION})"
      )
    self.cfg = configs.from_json(self.config["train_config"])
    self.tokenizer_path = os.path.join(self.path, tokenizer_lib.MODEL_NAME)
    if not os.path.exists(self.tokenizer_path):
      raise ExportError(f"{path}: no {tokenizer_lib.MODEL_NAME}")
    self.autoencoder_dir = os.path.join(self.path, AUTOENCODER_DIR)
    # The directory a latent stage is read from (the autoencoder's, or the PCA stage's).
    name = latent.copy_name(self.cfg.latent)
    self.stage_dir = os.path.join(self.path, name) if name else None
    self.weights = self.config["weights"]
    self.fingerprint = self.weights["fingerprint"]
    if self.weights["format"] == "safetensors":  # Fail now, not at the first sample.
      try:
        safetensors_io.Reader(self.path)
      except safetensors_io.SafetensorsError as e:
        raise ExportError(str(e)) from None

  def restore_params(self, abstract: Mapping[str, Any], dit_cfg: dit.DiTConfig) -> dict[str, Any]:
    """The base weights onto the shardings of `abstract` (a ShardedModel's abstract_params)."""
    if self.weights["format"] == "orbax":
      ckptr = ocp.StandardCheckpointer()
      try:
        return ckptr.restore(epath.Path(self.path) / PARAMS_DIR, abstract)
      except Exception as e:  # noqa: BLE001
        raise ExportError(
          f"{self.path}/{PARAMS_DIR}: cannot restore ({common.first_line(e)})"
        ) from None
      finally:
        ckptr.close()
    positions = common.layer_positions(dataclasses.replace(dit_cfg, lora=None))
    try:
      return safetensors_io.read_tree(self.path, abstract, positions)
    except safetensors_io.SafetensorsError as e:
      raise ExportError(str(e)) from None
