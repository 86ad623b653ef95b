"""Multi-process start-up: finds how many processes a job has and starts `jax.distributed`.

One helper for every launcher. `detect()` is a pure function of the environment and the
flags: it returns the `Plan` (what `jax.distributed.initialize` will get and where each value
came from) or None for a single process. `initialize()` applies the plan and returns the
`Topology` it produced. Sources, first match wins:

  flags   --coordinator_address and --num_processes (together), --process_id; the process id
          may instead come from SORA_JAX_PROCESS_ID, an indexed Job or SLURM_PROCID.
  env     SORA_JAX_COORDINATOR, SORA_JAX_NUM_PROCESSES, SORA_JAX_PROCESS_ID, set by a launcher.
  k8s     the same variables in a Kubernetes indexed Job or JobSet pod (JOB_COMPLETION_INDEX is
          set): the process id defaults to the completion index and, in a JobSet, the
          coordinator to the pod DNS name `<JOBSET_NAME>-<REPLICATED_JOB_NAME>-0-0.<subdomain>`.
  slurm   an `srun` step (SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID,
          SLURM_LOCALID), read as jax's SlurmCluster reads it.
  tpu     a Cloud TPU VM: jax finds the pod's hosts itself (`jax.distributed.initialize()`).
  None    nothing of the above, or one process: nothing to start.

Explicit plans call jax with `cluster_detection_method="deactivate"` so that jax's own
auto-detection cannot override them; in particular jax's SLURM default of one GPU per process
(`local_device_ids=[SLURM_LOCALID]`) would leave 7 of 8 GPUs idle in a one-process-per-node job.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from absl import flags, logging

DEFAULT_PORT = 8476  # Coordinator port for the env and k8s sources when none is given.

ENV_COORDINATOR = "SORA_JAX_COORDINATOR"  # host[:port] of process 0
ENV_NUM_PROCESSES = "SORA_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "SORA_JAX_PROCESS_ID"
ENV_PORT = "SORA_JAX_COORDINATOR_PORT"  # port added to a coordinator given without one
ENV_SUBDOMAIN = "SORA_JAX_SUBDOMAIN"  # JobSet network subdomain (default: JOBSET_NAME)

# Set by the Kubernetes Job controller in every pod of an indexed Job.
K8S_COMPLETION_INDEX = "JOB_COMPLETION_INDEX"
# Set by our JobSet yaml from the pod's jobset.sigs.k8s.io/* labels (downward API).
K8S_JOBSET_NAME = "JOBSET_NAME"
K8S_REPLICATED_JOB_NAME = "REPLICATED_JOB_NAME"
K8S_JOB_INDEX = "JOB_INDEX"  # jobset.sigs.k8s.io/job-index
K8S_REPLICATED_JOB_REPLICAS = "REPLICATED_JOB_REPLICAS"  # jobset.sigs.k8s.io/replicatedjob-replicas

SLURM_STEP_VARS = (
  "SLURM_JOB_ID",
  "SLURM_STEP_NODELIST",
  "SLURM_NTASKS",
  "SLURM_PROCID",
  "SLURM_LOCALID",
)
SLURM_NODE_COUNT_VARS = ("SLURM_STEP_NUM_NODES", "SLURM_JOB_NUM_NODES", "SLURM_NNODES")


@dataclasses.dataclass(frozen=True)
class Plan:
  """What `jax.distributed.initialize` gets, and where it came from."""

  source: str  # "flags", "env", "k8s", "slurm" or "tpu"
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None  # None: every local device
  origin: Mapping[str, str] = dataclasses.field(default_factory=dict)  # value -> flag/env var

  def initialize_kwargs(self) -> dict[str, Any]:
    """Keyword arguments for `jax.distributed.initialize`."""
    ids = list(self.local_device_ids) if self.local_device_ids is not None else None
    if self.source == "tpu":  # jax reads the TPU metadata server or the GKE TPU env itself.
      return {} if ids is None else {"local_device_ids": ids}
    return {
      "coordinator_address": self.coordinator_address,
      "num_processes": self.num_processes,
      "process_id": self.process_id,
      "local_device_ids": ids,
      "cluster_detection_method": "deactivate",
    }

  def describe(self) -> str:
    if self.source == "tpu":
      return "source=tpu (jax detects the Cloud TPU pod)"
    where = ", ".join(f"{k} from {v}" for k, v in self.origin.items())
    return (
      f"source={self.source} process {self.process_id}/{self.num_processes} "
      f"coordinator={self.coordinator_address} local_device_ids={self.local_device_ids} ({where})"
    )


@dataclasses.dataclass(frozen=True)
class Topology:
  """The job as jax sees it after start-up."""

  process_index: int
  process_count: int
  local_device_count: int
  global_device_count: int
  platform: str  # "cpu", "gpu" or "tpu"
  device_kinds: tuple[str, ...]  # distinct kinds over all devices, e.g. ("NVIDIA H100 80GB HBM3",)
  source: str  # the Plan's source, or "single" for one process
  coordinator_address: str | None = None


# ------------------------------------------------------------------------------
# Detection (pure).
# ------------------------------------------------------------------------------


def detect(
  environ: Mapping[str, str],
  *,
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  local_device_ids: Sequence[int] | None = None,
  coordinator_port: int | None = None,
  on_cloud_tpu: bool = False,
) -> Plan | None:
  """Returns how to start this process's part of the job, or None for a single process.

  `environ` is the process environment (os.environ, or a dict in tests); the keyword arguments
  are the binaries' flags (None: not given). Raises ValueError naming the flag or environment
  variable when the inputs are incomplete or inconsistent.
  """
  ids = _local_device_ids(environ, local_device_ids)
  port = _port(environ, coordinator_port)
  flags_given = (coordinator_address, num_processes, process_id) != (None, None, None)
  env_given = any(environ.get(k) for k in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID))

  if flags_given:
    if coordinator_address is None:
      given = "--num_processes" if num_processes is not None else "--process_id"
      raise ValueError(
        f"--coordinator_address is required when {given} is given: "
        "pass --coordinator_address=HOST[:PORT] (process 0's host) and --num_processes=N"
      )
    if num_processes is None:
      raise ValueError(
        f"--num_processes is required when --coordinator_address={coordinator_address} is given"
      )
    origin = {"coordinator_address": "--coordinator_address", "num_processes": "--num_processes"}
    if process_id is None:
      process_id, origin["process_id"] = _process_id_from_env(
        environ, num_processes, "--process_id"
      )
    else:
      origin["process_id"] = "--process_id"
    coordinator = _with_port(coordinator_address, port, "--coordinator_address")
    return _checked(Plan("flags", coordinator, num_processes, process_id, ids, origin))

  if env_given or K8S_COMPLETION_INDEX in environ:
    if not env_given and on_cloud_tpu:  # A GKE TPU Job: jax reads TPU_WORKER_HOSTNAMES itself.
      return Plan("tpu", local_device_ids=ids)
    return _checked(_plan_from_env(environ, ids, port))

  if all(k in environ for k in SLURM_STEP_VARS):
    return _checked(_plan_from_slurm(environ, ids, coordinator_port))

  if on_cloud_tpu:
    return Plan("tpu", local_device_ids=ids)
  return None


def _plan_from_env(environ: Mapping[str, str], ids, port: int) -> Plan:
  """SORA_JAX_* variables, completed from an indexed Job or JobSet where one runs."""
  k8s = K8S_COMPLETION_INDEX in environ
  source = "k8s" if k8s else "env"
  if not environ.get(ENV_NUM_PROCESSES):
    what = (
      f"{K8S_COMPLETION_INDEX} is set (a Kubernetes indexed Job)"
      if k8s
      else f"{ENV_COORDINATOR} or {ENV_PROCESS_ID} is set"
    )
    raise ValueError(
      f"{what} but {ENV_NUM_PROCESSES} is not: set it to the number of processes "
      f"(the Job's parallelism; {ENV_NUM_PROCESSES}=1 runs each pod on its own)"
    )
  num_processes = _int(environ, ENV_NUM_PROCESSES)
  origin = {"num_processes": ENV_NUM_PROCESSES}

  if environ.get(ENV_COORDINATOR):
    coordinator = _with_port(environ[ENV_COORDINATOR], port, ENV_COORDINATOR)
    origin["coordinator_address"] = ENV_COORDINATOR
  elif k8s and environ.get(K8S_JOBSET_NAME) and environ.get(K8S_REPLICATED_JOB_NAME):
    # JobSet pod hostnames: <jobset>-<replicatedjob>-<jobindex>-<podindex>.<subdomain>, where the
    # subdomain (the headless service) defaults to the JobSet's name.
    jobset, rjob = environ[K8S_JOBSET_NAME], environ[K8S_REPLICATED_JOB_NAME]
    subdomain = environ.get(ENV_SUBDOMAIN) or jobset
    coordinator = f"{jobset}-{rjob}-0-0.{subdomain}:{port}"
    origin["coordinator_address"] = f"{K8S_JOBSET_NAME}/{K8S_REPLICATED_JOB_NAME}"
  else:
    hint = f" or {K8S_JOBSET_NAME} and {K8S_REPLICATED_JOB_NAME} (JobSet)" if k8s else ""
    raise ValueError(
      f"{ENV_NUM_PROCESSES} is set but {ENV_COORDINATOR}{hint} is not: "
      f"set {ENV_COORDINATOR}=HOST[:PORT] to process 0's host"
    )

  if environ.get(ENV_PROCESS_ID):
    process_id, origin["process_id"] = _int(environ, ENV_PROCESS_ID), ENV_PROCESS_ID
  else:
    process_id, origin["process_id"] = _process_id_from_env(environ, num_processes, ENV_PROCESS_ID)
  return Plan(source, coordinator, num_processes, process_id, ids, origin)


def _plan_from_slurm(environ: Mapping[str, str], ids, coordinator_port: int | None) -> Plan:
  """An srun step, read as jax's SlurmCluster reads it, but keeping every GPU of a node."""
  num_processes = _int(environ, "SLURM_NTASKS")
  if coordinator_port is None and environ.get(ENV_PORT):
    coordinator_port = _int(environ, ENV_PORT)
  if coordinator_port is None and environ.get("JAX_COORDINATOR_PORT"):
    coordinator_port = _int(environ, "JAX_COORDINATOR_PORT")
  if coordinator_port is None:
    # jax's choice: a port in [61440, 65535] from the job id, so jobs sharing a node differ.
    coordinator_port = _int(environ, "SLURM_JOB_ID") % 2**12 + (65535 - 2**12 + 1)
  host = first_slurm_host(environ["SLURM_STEP_NODELIST"])
  origin = {
    "coordinator_address": "SLURM_STEP_NODELIST",
    "num_processes": "SLURM_NTASKS",
    "process_id": "SLURM_PROCID",
  }
  if ids is None:
    nodes_var = next((k for k in SLURM_NODE_COUNT_VARS if environ.get(k)), None)
    num_nodes = _int(environ, nodes_var) if nodes_var else num_processes
    visible = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if num_processes > num_nodes and len(visible) != 1:
      # Several tasks per node, each sharing the node's GPUs: one GPU per task, as jax does.
      # (A task that Slurm bound to one GPU, CUDA_VISIBLE_DEVICES=k, keeps its only device.)
      ids = (_int(environ, "SLURM_LOCALID"),)
      origin["local_device_ids"] = "SLURM_LOCALID"
  return Plan(
    "slurm",
    f"{host}:{coordinator_port}",
    num_processes,
    _int(environ, "SLURM_PROCID"),
    ids,
    origin,
  )


def first_slurm_host(nodelist: str) -> str:
  """The first host of a Slurm hostlist: 'gpu[003-004,9],x' -> 'gpu003', 'r[1-2]-n[07-8]' -> 'r1-n07'."""
  host, i = [], 0
  while i < len(nodelist) and nodelist[i] != ",":
    if nodelist[i] == "[":
      end = nodelist.find("]", i)
      if end < 0:
        raise ValueError(f"SLURM_STEP_NODELIST={nodelist!r}: unbalanced '['")
      host.append(nodelist[i + 1 : end].split(",")[0].split("-")[0])
      i = end + 1
    else:
      host.append(nodelist[i])
      i += 1
  if not host:
    raise ValueError(f"SLURM_STEP_NODELIST={nodelist!r}: no host")
  return "".join(host)


def _process_id_from_env(
  environ: Mapping[str, str], num_processes: int, wanted: str
) -> tuple[int, str]:
  """This process's index from the scheduler, when the launcher did not pass one."""
  if environ.get(ENV_PROCESS_ID):
    return _int(environ, ENV_PROCESS_ID), ENV_PROCESS_ID
  if K8S_COMPLETION_INDEX in environ:
    index = _int(environ, K8S_COMPLETION_INDEX)
    if not environ.get(K8S_JOB_INDEX):
      return index, K8S_COMPLETION_INDEX
    # A JobSet whose replicated job has R replicas (e.g. one per TPU slice): job j's pods are
    # processes j * (N / R) ... (j + 1) * (N / R) - 1.
    replicas = (
      _int(environ, K8S_REPLICATED_JOB_REPLICAS) if environ.get(K8S_REPLICATED_JOB_REPLICAS) else 1
    )
    if replicas < 1 or num_processes % replicas:
      raise ValueError(
        f"{K8S_REPLICATED_JOB_REPLICAS}={replicas} must be >= 1 and divide the number of "
        f"processes {num_processes}"
      )
    job = _int(environ, K8S_JOB_INDEX)
    return job * (num_processes // replicas) + index, f"{K8S_JOB_INDEX}/{K8S_COMPLETION_INDEX}"
  if "SLURM_PROCID" in environ:
    return _int(environ, "SLURM_PROCID"), "SLURM_PROCID"
  raise ValueError(
    f"{wanted} is required: no {ENV_PROCESS_ID}, {K8S_COMPLETION_INDEX} or SLURM_PROCID "
    "in the environment gives this process's index"
  )


def _checked(plan: Plan) -> Plan | None:
  n, i = plan.num_processes, plan.process_id
  assert n is not None and i is not None
  if n < 1:
    raise ValueError(f"number of processes {n} (from {plan.origin['num_processes']}) must be >= 1")
  if not 0 <= i < n:
    raise ValueError(
      f"process id {i} (from {plan.origin['process_id']}) must be in [0, {n}) "
      f"({n} processes from {plan.origin['num_processes']})"
    )
  return plan if n > 1 else None  # One process needs no coordinator.


def _int(environ: Mapping[str, str], name: str) -> int:
  value = environ[name]
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"{name}={value!r} is not an integer") from None


def _port(environ: Mapping[str, str], port: int | None) -> int:
  name = "coordinator_port"
  if port is None and environ.get(ENV_PORT):
    port, name = _int(environ, ENV_PORT), ENV_PORT
  port = DEFAULT_PORT if port is None else port
  if not 0 < port < 65536:
    raise ValueError(f"{name}={port} is not a port (1 ... 65535)")
  return port


def _with_port(address: str, port: int, name: str) -> str:
  """`host` -> `host:port`; `host:port` and `[v6]:port` are kept."""
  if not address or address.startswith(":"):
    raise ValueError(f"{name}={address!r}: expected HOST or HOST:PORT")
  has_port = "]:" in address if address.startswith("[") else ":" in address
  if not has_port:
    return f"{address}:{port}"
  given = address.rsplit(":", 1)[1]
  if not given.isdigit() or not 0 < int(given) < 65536:
    raise ValueError(f"{name}={address!r}: the port must be a number in 1 ... 65535")
  return address


def _local_device_ids(
  environ: Mapping[str, str], ids: Sequence[int] | None
) -> tuple[int, ...] | None:
  if ids is not None:
    return tuple(int(i) for i in ids)
  value = environ.get("JAX_LOCAL_DEVICE_IDS")  # jax's own override; read here so the plan shows it
  if not value:
    return None
  try:
    return tuple(int(i) for i in value.split(","))
  except ValueError:
    raise ValueError(f"JAX_LOCAL_DEVICE_IDS={value!r}: expected comma-separated integers") from None


# ------------------------------------------------------------------------------
# Start-up.
# ------------------------------------------------------------------------------


def on_cloud_tpu_vm(environ: Mapping[str, str]) -> bool:
  """True on a Cloud TPU VM (libtpu installed, TPU chips on the PCI bus) that jax may use.

  `import jax` runs this check and records it in a private module; no public API answers it
  without starting the backend, which must not happen before `jax.distributed.initialize`.
  JAX_PLATFORMS without "tpu" (e.g. `cpu` for tests) means the TPUs are not used.
  """
  platforms = environ.get("JAX_PLATFORMS", "")
  if platforms and "tpu" not in platforms.split(","):
    return False
  try:
    from jax._src import cloud_tpu_init
  except ImportError:
    return False
  return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  local_device_ids: Sequence[int] | None = None,
  *,
  coordinator_port: int | None = None,
  initialization_timeout: int = 300,
  environ: Mapping[str, str] | None = None,
) -> Topology:
  """Starts `jax.distributed` as `detect()` plans it; logs and returns the topology.

  Call once, first thing in a binary's main, before anything touches jax devices. Flags left at
  None fall back to the environment; with no flags and no cluster environment this does nothing.
  """
  environ = os.environ if environ is None else environ
  plan = detect(
    environ,
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
    local_device_ids=local_device_ids,
    coordinator_port=coordinator_port,
    on_cloud_tpu=on_cloud_tpu_vm(environ),
  )
  if plan is None:
    if environ.get("SLURM_NTASKS", "1") != "1" and "SLURM_STEP_NODELIST" not in environ:
      logging.warning(
        "SLURM_NTASKS=%s outside an srun step: running as one process", environ["SLURM_NTASKS"]
      )
  elif jax.distributed.is_initialized():
    logging.info(
      "jax.distributed is already initialized; not starting it again (%s)", plan.describe()
    )
  else:
    logging.info("Starting jax.distributed: %s", plan.describe())
    jax.distributed.initialize(
      **plan.initialize_kwargs(), initialization_timeout=initialization_timeout
    )

  devices = jax.devices()
  topology = Topology(
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    local_device_count=jax.local_device_count(),
    global_device_count=jax.device_count(),
    platform=devices[0].platform,
    device_kinds=tuple(sorted({d.device_kind for d in devices})),
    source=plan.source if plan else "single",
    coordinator_address=plan.coordinator_address if plan else None,
  )
  if topology.process_index == 0:
    logging.info(
      "Topology: %d process(es), %d device(s) (%d local), platform %s, kinds %s, source %s",
      topology.process_count,
      topology.global_device_count,
      topology.local_device_count,
      topology.platform,
      ", ".join(topology.device_kinds),
      topology.source,
    )
  return topology


def define_flags() -> None:
  """The flags every binary that uses devices defines (only when run as a program)."""
  flags.DEFINE_string(
    "coordinator_address",
    None,
    "host[:port] of process 0 in a multi-process job. Default: from the environment "
    "(Slurm, Kubernetes, Cloud TPU), else a single process.",
  )
  flags.DEFINE_integer(
    "num_processes", None, "Number of processes; given together with --coordinator_address."
  )
  flags.DEFINE_integer(
    "process_id",
    None,
    "This process's index (default: SORA_JAX_PROCESS_ID, JOB_COMPLETION_INDEX or SLURM_PROCID).",
  )


def initialize_from_flags() -> Topology:
  """`initialize` with the values of `define_flags`' flags; bad values exit with one line."""
  f = flags.FLAGS
  try:
    return initialize(f.coordinator_address, f.num_processes, f.process_id)
  except ValueError as e:
    sys.exit(f"error: {e}")
