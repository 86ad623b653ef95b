r"""A TFDS builder for the sora_jax example schema, in the ArrayRecord file format.

  python -m data_pipelines.tfds_builder --source_dir=DIR --tfds_data_dir=OUT [--name=sora_jax]

copies every split of the sora_jax dataset in DIR into the TFDS dataset
OUT/{name}/{version}, so `tfds.data_source(name, data_dir=OUT, split=...)`
gives random access to it. Record order equals the source's (shard by shard,
shuffling disabled), and `example_from_tfds` turns a record back into the same
`schema.Example`, so one grain pipeline reads either source (`ExampleSource` is
a split as a random-access sequence of examples).

TensorFlow is not needed, to build or to read: every feature is one TFDS can
encode and decode without it (TFDS's Image and Video features need TF, so the
media stay encoded bytes):

  media                         Tensor(shape=(), dtype=object)  (bytes, kept exactly)
  media_format, source_id       Text
  captions                      Sequence(Text)
  attributes                    Text (a JSON object)
  fps, clip_start               Tensor(shape=(), dtype=float64, encoding=BYTES)
  num_frames, height, width     Scalar(int32)

The floats are stored as bytes because TFDS's default encoding keeps only
float32, which changes a value such as 29.97. The builder registers no name in
the TFDS registry; `tfds.data_source` finds the dataset by its files.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import tempfile
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import app, flags, logging

from data_pipelines import schema, shards

DEFAULT_NAME = "sora_jax"
TFDS_VERSION = f"{schema.SCHEMA_VERSION}.0.0"  # Follows the record schema.
METADATA_KEY = "sora_jax_manifest"  # DatasetInfo metadata: the source manifest.

_NAME_RE = re.compile(r"[a-z][a-z0-9_]*")
_SPLIT_RE = re.compile(r"\w+")


def features() -> tfds.features.FeaturesDict:
  """The TFDS features of one example; see the module docstring."""
  text = tfds.features.Text
  float64 = functools.partial(
    tfds.features.Tensor, shape=(), dtype=np.float64, encoding=tfds.features.Encoding.BYTES
  )
  return tfds.features.FeaturesDict(
    {
      "media": tfds.features.Tensor(shape=(), dtype=np.object_),
      "media_format": text(),
      "fps": float64(),
      "num_frames": tfds.features.Scalar(dtype=np.int32),
      "height": tfds.features.Scalar(dtype=np.int32),
      "width": tfds.features.Scalar(dtype=np.int32),
      "captions": tfds.features.Sequence(text()),
      "source_id": text(),
      "clip_start": float64(),
      "attributes": text(),
    }
  )


def example_to_tfds(example: schema.Example) -> dict[str, Any]:
  """The TFDS feature dict of one example (the inverse of `example_from_tfds`)."""
  return {
    "media": bytes(example.media),
    "media_format": example.media_format,
    "fps": float(example.fps),
    "num_frames": example.num_frames,
    "height": example.height,
    "width": example.width,
    "captions": list(example.captions),
    "source_id": example.source_id,
    "clip_start": float(example.clip_start),
    "attributes": json.dumps(dict(example.attributes), sort_keys=True),
  }


def _item(value: Any) -> Any:
  return value.item() if isinstance(value, np.ndarray | np.generic) else value


def _str(value: Any) -> str:
  value = _item(value)
  return bytes(value).decode("utf-8") if isinstance(value, bytes | bytearray) else str(value)


def example_from_tfds(record: Mapping[str, Any]) -> schema.Example:
  """Converts what `tfds.data_source(...)[i]` returns into a `schema.Example`."""
  try:
    attributes = json.loads(_str(record["attributes"]) or "{}")
    return schema.Example(
      media=bytes(_item(record["media"])),
      media_format=_str(record["media_format"]),
      fps=float(_item(record["fps"])),
      num_frames=int(_item(record["num_frames"])),
      height=int(_item(record["height"])),
      width=int(_item(record["width"])),
      captions=tuple(_str(c) for c in record["captions"]),
      source_id=_str(record["source_id"]),
      clip_start=float(_item(record["clip_start"])),
      attributes={str(k): str(v) for k, v in attributes.items()},
    )
  except KeyError as e:
    raise schema.SchemaError(f"TFDS record is missing feature {e.args[0]!r}") from None
  except (json.JSONDecodeError, AttributeError) as e:
    raise schema.SchemaError(f"TFDS record has malformed attributes: {e}") from None


# ------------------------------------------------------------------------------
# The builder.
# ------------------------------------------------------------------------------


class SoraDataset(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Copies a sora_jax dataset directory (`source_dir`) into a TFDS dataset.

  Pass `source_dir` to generate; without it the builder can only read an
  already prepared dataset. Use `builder_class(name)` for a name other than
  the default.
  """

  name = DEFAULT_NAME
  VERSION = tfds.core.Version(TFDS_VERSION)
  RELEASE_NOTES = {TFDS_VERSION: f"sora_jax example schema version {schema.SCHEMA_VERSION}."}

  def __init__(self, *, source_dir: str | None = None, **kwargs: Any):
    self._source_dir = source_dir
    self._manifest = shards.read_manifest(source_dir) if source_dir else None
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> None:
    # No checksums or resource files live beside this code. TFDS's own lookup of
    # the code path needs the `importlib_resources` backport for a class in a
    # package, which etils declares only as an optional extra.
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    metadata = tfds.core.MetadataDict()
    if self._manifest is not None:
      metadata[METADATA_KEY] = self._manifest
    return tfds.core.DatasetInfo(
      builder=self,
      description=(
        "Captioned images and video clips in the sora_jax example schema, copied from "
        f"{self._source_dir or 'a sora_jax dataset directory'}."
      ),
      features=features(),
      disable_shuffling=True,  # Record order equals the source shards' order.
      metadata=metadata,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    del dl_manager  # Nothing to download.
    if self._source_dir is None:
      raise shards.DatasetError(f"the {self.name} builder needs source_dir to generate data")
    return {
      split: self._generate_examples(files)
      for split, files in source_splits(self._source_dir, self._manifest).items()
    }

  def _generate_examples(self, files: Sequence[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    index = 0
    for path in files:
      for example in _read_shard(path):
        yield index, example_to_tfds(example)
        index += 1


def _read_shard(path: str) -> Iterator[schema.Example]:
  try:
    yield from shards.read_shard(path)
  except RuntimeError as e:  # What the ArrayRecord reader raises for a corrupt file.
    raise shards.DatasetError(f"{path} is not a readable ArrayRecord shard: {e}") from None


def source_splits(source_dir: str, manifest: Mapping[str, Any]) -> dict[str, list[str]]:
  """The shards of each non-empty split, in manifest order; raises DatasetError if unusable."""
  out = {}
  for split, entry in manifest["splits"].items():
    if not _SPLIT_RE.fullmatch(split):
      raise shards.DatasetError(
        f"split {split!r} of {source_dir}: TFDS split names are letters, digits and _"
      )
    files = shards.split_files(source_dir, split)
    if entry.get("num_examples", 1) == 0:
      logging.warning("split %r of %s is empty; TFDS cannot store it, skipped", split, source_dir)
      continue
    out[split] = files
  if not out:
    raise shards.DatasetError(f"{source_dir} has no non-empty split")
  return out


@functools.cache
def builder_class(name: str = DEFAULT_NAME) -> type[SoraDataset]:
  """The builder class storing under `name` (TFDS takes a dataset's name from its class)."""
  if not _NAME_RE.fullmatch(name):
    raise ValueError(f"--name={name!r}; a TFDS name is lower-case letters, digits and _")
  if name == DEFAULT_NAME:
    return SoraDataset
  return types.new_class(
    "SoraDataset_" + name,
    (SoraDataset,),
    {"skip_registration": True},
    lambda ns: ns.update(name=name, __module__=__name__),
  )


def build(
  source_dir: str,
  tfds_data_dir: str,
  name: str = DEFAULT_NAME,
  overwrite: bool = False,
  num_shards: int | None = None,
) -> SoraDataset:
  """Prepares the TFDS dataset `tfds_data_dir/name/VERSION` from a sora_jax dataset.

  Args:
    source_dir: sora_jax dataset directory (with manifest.json).
    tfds_data_dir: TFDS data directory to write into.
    name: TFDS dataset name.
    overwrite: regenerate even if the TFDS dataset exists (else it is reused).
    num_shards: TFDS shards per split (None: TFDS picks by size).

  Returns:
    The prepared builder.

  Raises:
    shards.DatasetError: the source is missing, malformed or disagrees with its manifest.
    schema.SchemaError: a source record is malformed.
  """
  manifest = shards.read_manifest(source_dir, flag="--source_dir")
  source_splits(source_dir, manifest)  # Fail before TFDS writes anything.
  builder = builder_class(name)(source_dir=source_dir, data_dir=tfds_data_dir)
  mode = tfds.download.GenerateMode
  config = tfds.download.DownloadConfig(
    download_mode=mode.REUSE_CACHE_IF_EXISTS if overwrite else mode.REUSE_DATASET_IF_EXISTS,
    num_shards=num_shards,
  )
  with tempfile.TemporaryDirectory(prefix="tfds_downloads") as download_dir:
    builder.download_and_prepare(download_dir=download_dir, download_config=config)
  for split, entry in manifest["splits"].items():
    want = entry.get("num_examples")
    got = builder.info.splits[split].num_examples if split in builder.info.splits else 0
    if want is not None and got != want:
      raise shards.DatasetError(
        f"split {split!r}: the manifest of {source_dir} says {want} examples but "
        f"{builder.data_dir} has {got}; rebuild with --overwrite if the source changed"
      )
  return builder


def data_source(tfds_data_dir: str, split: str, name: str = DEFAULT_NAME) -> Sequence[Any]:
  """The random-access TFDS source of one split; records convert with `example_from_tfds`."""
  try:
    return tfds.data_source(name, data_dir=tfds_data_dir, split=split, download=False)
  except tfds.core.registered.DatasetNotFoundError:
    raise shards.DatasetError(
      f"no TFDS dataset {name!r} in {tfds_data_dir}; build it with "
      f"`python -m data_pipelines.tfds_builder --source_dir=DIR --tfds_data_dir={tfds_data_dir}`"
    ) from None
  except ValueError as e:  # Unknown split.
    raise shards.DatasetError(f"split={split!r} of TFDS dataset {name!r}: {e}") from None


class ExampleSource:
  """A TFDS split as a random-access sequence of `schema.Example` (picklable for grain)."""

  def __init__(self, tfds_data_dir: str, split: str, name: str = DEFAULT_NAME):
    self._args = (tfds_data_dir, split, name)
    self._source = data_source(tfds_data_dir, split, name)

  def __getstate__(self):
    return self._args

  def __setstate__(self, args):
    self.__init__(*args)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> schema.Example:
    if not 0 <= index < len(self._source):
      raise IndexError(f"index {index} out of range for {len(self._source)} examples")
    return example_from_tfds(self._source[index])

  def __iter__(self) -> Iterator[schema.Example]:
    return (self[i] for i in range(len(self)))


# ------------------------------------------------------------------------------
# Command line.
# ------------------------------------------------------------------------------


def define_flags() -> None:
  """Defines the command-line flags (only when run as a program: other modules may share names)."""
  flags.DEFINE_string("source_dir", None, "sora_jax dataset directory to copy.")
  flags.DEFINE_string("tfds_data_dir", None, "TFDS data directory to write into.")
  flags.DEFINE_string("name", DEFAULT_NAME, "TFDS dataset name.")
  flags.DEFINE_bool("overwrite", False, "Regenerate an existing TFDS dataset.")


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  if not f.source_dir:
    sys.exit("error: --source_dir is required")
  if not f.tfds_data_dir:
    sys.exit("error: --tfds_data_dir is required")
  if os.path.abspath(f.tfds_data_dir) == os.path.abspath(f.source_dir):
    sys.exit("error: --tfds_data_dir must differ from --source_dir")
  if not os.path.isfile(os.path.join(f.source_dir, shards.MANIFEST)):
    sys.exit(f"error: --source_dir={f.source_dir} has no {shards.MANIFEST}; not a sora_jax dataset")
  if not _NAME_RE.fullmatch(f.name):
    sys.exit(f"error: --name={f.name!r}; a TFDS name is lower-case letters, digits and _")
  try:
    builder = build(f.source_dir, f.tfds_data_dir, f.name, f.overwrite)
  except (shards.DatasetError, schema.SchemaError, OSError) as e:
    sys.exit(f"error: {e}")
  for split, info in builder.info.splits.items():
    print(f"{split}: {info.num_examples} examples in {info.num_shards} shard(s)")
  print(f"TFDS dataset {builder.name} {builder.version} -> {builder.data_dir}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
