"""A tiny binary for the multi-process test: starts jax.distributed from flags, prints JSON.

  launch/local.sh 2 .venv/bin/python tests/distributed_probe.py

Defines the same distributed flags as the sora_jax binaries, calls
`sora_jax.core.distributed.initialize`, gathers every process's index over the real cross-process
collectives, and prints its topology as one JSON line.
"""

import dataclasses
import json
from collections.abc import Sequence

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "Number of processes.")
flags.DEFINE_integer("process_id", None, "This process's index.")


def main(argv: Sequence[str]) -> None:
  del argv
  import jax
  import jax.numpy as jnp
  from jax.experimental import multihost_utils

  from sora_jax.core import distributed

  topology = distributed.initialize(
    FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
  )
  indices = multihost_utils.process_allgather(jnp.array([jax.process_index()]))  # [P, 1]
  print(
    json.dumps({**dataclasses.asdict(topology), "gathered": indices.ravel().tolist()}), flush=True
  )


if __name__ == "__main__":
  app.run(main)
