"""Multi-process start-up: detection from simulated environments, and a real 2-process run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml
from jax._src.clusters import SlurmCluster

from sora_jax.core import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL_SH = os.path.join(ROOT, "launch", "local.sh")

SLURM = {  # What srun sets for task 5 of `--nodes=4 --ntasks-per-node=2`, abridged.
  "SLURM_JOB_ID": "123456",
  "SLURM_STEP_NODELIST": "gpu-node[007-009,012]",
  "SLURM_JOB_NODELIST": "gpu-node[007-009,012]",
  "SLURM_NTASKS": "8",
  "SLURM_PROCID": "5",
  "SLURM_LOCALID": "1",
  "SLURM_STEP_NUM_NODES": "4",
}
JOBSET = {  # Pod 2 of a JobSet "sora" with one replicated job "workers" of 4 pods.
  "JOB_COMPLETION_INDEX": "2",
  "JOBSET_NAME": "sora",
  "REPLICATED_JOB_NAME": "workers",
  "SORA_JAX_NUM_PROCESSES": "4",
  "KUBERNETES_SERVICE_HOST": "10.0.0.1",
}


# ------------------------------------------------------------------------------
# Detection.
# ------------------------------------------------------------------------------


def test_nothing_is_single_process():
  assert distributed.detect({}) is None
  assert distributed.detect({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4"}) is None  # sbatch, no srun


def test_slurm_one_process_per_node_keeps_every_gpu():
  env = {**SLURM, "SLURM_NTASKS": "4", "SLURM_PROCID": "2", "SLURM_LOCALID": "0"}
  plan = distributed.detect(env)
  assert plan.source == "slurm"
  assert plan.coordinator_address == f"gpu-node007:{123456 % 4096 + 61440}"
  assert (plan.num_processes, plan.process_id, plan.local_device_ids) == (4, 2, None)
  assert plan.initialize_kwargs()["cluster_detection_method"] == "deactivate"


def test_slurm_several_tasks_per_node_take_one_gpu_each():
  plan = distributed.detect(SLURM)
  assert (plan.num_processes, plan.process_id, plan.local_device_ids) == (8, 5, (1,))
  bound = distributed.detect({**SLURM, "CUDA_VISIBLE_DEVICES": "3"})  # --gpus-per-task=1
  assert bound.local_device_ids is None


def test_slurm_single_task_and_port_override():
  assert distributed.detect({**SLURM, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None
  plan = distributed.detect({**SLURM, "SORA_JAX_COORDINATOR_PORT": "9000"})
  assert plan.coordinator_address == "gpu-node007:9000"
  assert distributed.detect(SLURM, coordinator_port=9001).coordinator_address == "gpu-node007:9001"


@pytest.mark.parametrize(
  "nodelist", ["node001", "node001,host2", "node[001-015],host2", "node[001,007-015],host2"]
)
def test_slurm_coordinator_matches_jax(nodelist, monkeypatch):
  env = {**SLURM, "SLURM_STEP_NODELIST": nodelist}
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  assert SlurmCluster.is_env_present()
  expected = SlurmCluster.get_coordinator_address(timeout_secs=None, override_coordinator_port=None)
  assert distributed.detect(env).coordinator_address == expected


def test_slurm_first_host_with_several_ranges():
  assert distributed.first_slurm_host("rack[1-2]-n[07-08],x") == "rack1-n07"
  with pytest.raises(ValueError, match="SLURM_STEP_NODELIST"):
    distributed.first_slurm_host("node[001")


def test_jobset_pod():
  plan = distributed.detect(JOBSET)
  assert plan.source == "k8s"
  assert plan.coordinator_address == "sora-workers-0-0.sora:8476"
  assert (plan.num_processes, plan.process_id, plan.local_device_ids) == (4, 2, None)
  env = {**JOBSET, "SORA_JAX_SUBDOMAIN": "net", "SORA_JAX_COORDINATOR_PORT": "1234"}
  assert distributed.detect(env).coordinator_address == "sora-workers-0-0.net:1234"


def test_jobset_with_replicated_jobs():
  env = {**JOBSET, "JOB_INDEX": "1", "REPLICATED_JOB_REPLICAS": "2", "JOB_COMPLETION_INDEX": "1"}
  assert distributed.detect(env).process_id == 3  # job 1 of 2, pod 1 of 2
  with pytest.raises(ValueError, match="REPLICATED_JOB_REPLICAS=3"):
    distributed.detect({**env, "REPLICATED_JOB_REPLICAS": "3"})


def test_indexed_job_needs_count_and_coordinator():
  with pytest.raises(ValueError, match="SORA_JAX_NUM_PROCESSES"):
    distributed.detect({"JOB_COMPLETION_INDEX": "0"})
  with pytest.raises(ValueError, match="SORA_JAX_COORDINATOR"):
    distributed.detect({"JOB_COMPLETION_INDEX": "0", "SORA_JAX_NUM_PROCESSES": "2"})
  env = {
    "JOB_COMPLETION_INDEX": "1",
    "SORA_JAX_NUM_PROCESSES": "2",
    "SORA_JAX_COORDINATOR": "j-0.svc",
  }
  plan = distributed.detect(env)
  assert (plan.coordinator_address, plan.process_id) == ("j-0.svc:8476", 1)
  assert (
    distributed.detect({**env, "SORA_JAX_NUM_PROCESSES": "1", "JOB_COMPLETION_INDEX": "0"}) is None
  )


def test_explicit_env_beats_slurm_and_tpu():
  env = {
    **SLURM,
    "SORA_JAX_COORDINATOR": "head:7000",
    "SORA_JAX_NUM_PROCESSES": "3",
    "SORA_JAX_PROCESS_ID": "1",
  }
  plan = distributed.detect(env, on_cloud_tpu=True)
  assert plan.source == "env"
  assert (plan.coordinator_address, plan.num_processes, plan.process_id) == ("head:7000", 3, 1)


def test_flags_beat_the_environment():
  plan = distributed.detect(
    {**JOBSET, **SLURM}, coordinator_address="10.0.0.2:1111", num_processes=2, process_id=1
  )
  assert plan.source == "flags"
  assert (plan.coordinator_address, plan.num_processes, plan.process_id) == ("10.0.0.2:1111", 2, 1)
  assert plan.origin["process_id"] == "--process_id"
  # --process_id may come from the scheduler; a coordinator without a port gets the default one.
  plan = distributed.detect(SLURM, coordinator_address="head", num_processes=8)
  assert (plan.coordinator_address, plan.process_id, plan.origin["process_id"]) == (
    "head:8476",
    5,
    "SLURM_PROCID",
  )


def test_k8s_jobset_yaml_sets_what_the_detector_reads():
  with open(os.path.join(ROOT, "launch", "k8s_jobset.yaml")) as f:
    jobset = yaml.safe_load(f)
  (rjob,) = jobset["spec"]["replicatedJobs"]
  pod = rjob["template"]["spec"]["template"]["spec"]
  assert rjob["template"]["spec"]["completionMode"] == "Indexed"
  labels = {  # What the JobSet controller puts on pod 1 of job 0.
    "jobset.sigs.k8s.io/jobset-name": jobset["metadata"]["name"],
    "jobset.sigs.k8s.io/replicatedjob-name": rjob["name"],
    "jobset.sigs.k8s.io/job-index": "0",
    "jobset.sigs.k8s.io/replicatedjob-replicas": str(rjob["replicas"]),
  }
  env = {"JOB_COMPLETION_INDEX": "1"}
  for var in pod["containers"][0]["env"]:
    if "value" in var:
      env[var["name"]] = var["value"]
    else:
      path = var["valueFrom"]["fieldRef"]["fieldPath"]
      env[var["name"]] = labels[path.split("'")[1]]
  plan = distributed.detect(env)
  assert plan.source == "k8s"
  assert plan.coordinator_address == "sora-train-workers-0-0.sora-train:8476"
  assert plan.num_processes == rjob["replicas"] * rjob["template"]["spec"]["parallelism"]
  assert plan.process_id == 1


def test_tpu_is_left_to_jax():
  plan = distributed.detect({}, on_cloud_tpu=True)
  assert plan.source == "tpu" and plan.initialize_kwargs() == {}
  assert distributed.detect({"JOB_COMPLETION_INDEX": "3"}, on_cloud_tpu=True).source == "tpu"  # GKE


@pytest.mark.parametrize(
  "kwargs, env, message",
  [
    ({"num_processes": 2}, {}, "--coordinator_address is required when --num_processes"),
    ({"process_id": 0}, {}, "--coordinator_address is required when --process_id"),
    ({"coordinator_address": "h:1"}, {}, "--num_processes is required"),
    ({"coordinator_address": "h:1", "num_processes": 2}, {}, "--process_id is required"),
    (
      {"coordinator_address": "h:1", "num_processes": 2, "process_id": 2},
      {},
      r"process id 2 \(from --process_id\)",
    ),
    (
      {"coordinator_address": "h:x", "num_processes": 2, "process_id": 0},
      {},
      "--coordinator_address='h:x'",
    ),
    ({"coordinator_address": "h", "num_processes": 0, "process_id": 0}, {}, "must be >= 1"),
    ({}, {**SLURM, "SLURM_NTASKS": "eight"}, "SLURM_NTASKS='eight' is not an integer"),
    ({}, {"SORA_JAX_COORDINATOR": "h:1"}, "SORA_JAX_NUM_PROCESSES is not"),
    (
      {},
      {"SORA_JAX_COORDINATOR": "h:1", "SORA_JAX_NUM_PROCESSES": "2"},
      "SORA_JAX_PROCESS_ID is required",
    ),
    ({}, {**JOBSET, "SORA_JAX_COORDINATOR_PORT": "70000"}, "SORA_JAX_COORDINATOR_PORT=70000"),
    ({}, {**JOBSET, "JAX_LOCAL_DEVICE_IDS": "0,a"}, "JAX_LOCAL_DEVICE_IDS='0,a'"),
  ],
)
def test_inconsistent_inputs_name_the_flag_or_variable(kwargs, env, message):
  with pytest.raises(ValueError, match=message):
    distributed.detect(env, **kwargs)


def test_tpus_are_not_used_when_jax_platforms_excludes_them():
  assert not distributed.on_cloud_tpu_vm({"JAX_PLATFORMS": "cpu"})
  assert not distributed.on_cloud_tpu_vm({})  # this machine has no TPU


def test_single_process_initialize_starts_nothing():
  topology = distributed.initialize(environ={"JAX_PLATFORMS": "cpu"})
  assert topology.source == "single" and topology.process_count == 1
  assert topology.global_device_count == topology.local_device_count >= 1


# ------------------------------------------------------------------------------
# launch/local.sh: real processes.
# ------------------------------------------------------------------------------


def _probe_results(output: str) -> list[dict]:
  """The JSON lines of tests/distributed_probe.py, by process; gloo may log around them."""
  decoder, results, start = json.JSONDecoder(), [], 0
  while (start := output.find('{"process_index"', start)) >= 0:
    result, start = decoder.raw_decode(output, start)
    results.append(result)
  return sorted(results, key=lambda r: r["process_index"])


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _alive(pid: int) -> bool:
  """False once the process is gone or a zombie (no init may reap orphans in a container)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False
  except OSError:  # No /proc: ask the kernel.
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return False
    return True


def _local_sh(n: int, *command: str, timeout: float = 120) -> subprocess.CompletedProcess:
  env = {**os.environ, "DEVICES_PER_PROCESS": "4", "KILL_AFTER": "5"}
  return subprocess.run(
    [LOCAL_SH, str(n), *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
  )


def test_local_sh_starts_a_two_process_job():
  run = _local_sh(2, sys.executable, "tests/distributed_probe.py")
  assert run.returncode == 0, run.stdout + run.stderr
  results = _probe_results(run.stdout)
  assert [r["process_index"] for r in results] == [0, 1], run.stdout
  for i, r in enumerate(results):
    # Each line is prefixed with its process id. (Gloo logs from its own threads, so its text
    # may share the JSON's line; the prefix still names the process.)
    (line,) = [x for x in run.stdout.splitlines() if json.dumps(r) in x]
    assert line.startswith(f"[{i}] "), line
    assert r["process_count"] == 2
    assert (r["local_device_count"], r["global_device_count"]) == (4, 8)
    assert (r["platform"], r["source"], r["gathered"]) == ("cpu", "flags", [0, 1])


def test_slurm_step_starts_a_two_process_job():
  """What srun gives one task on each of two nodes, here both on localhost; no flags."""
  step = {
    **SLURM,
    "SLURM_STEP_NODELIST": "localhost",
    "SLURM_NTASKS": "2",
    "SLURM_STEP_NUM_NODES": "2",
    "SLURM_LOCALID": "0",
    "SORA_JAX_COORDINATOR_PORT": str(_free_port()),
    "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
  }
  procs = [
    subprocess.Popen(
      [sys.executable, "tests/distributed_probe.py"],
      cwd=ROOT,
      env={**os.environ, **step, "SLURM_PROCID": str(i)},
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  try:
    for i, p in enumerate(procs):
      out, err = p.communicate(timeout=120)
      assert p.returncode == 0, err
      (r,) = _probe_results(out)
      assert (r["process_index"], r["process_count"], r["global_device_count"]) == (i, 2, 4)
      assert r["source"] == "slurm" and r["gathered"] == [0, 1]
  finally:
    for p in procs:
      p.kill()


def test_local_sh_fails_when_a_process_fails():
  start = time.monotonic()
  code = 'import sys, time; sys.exit(3) if "--process_id=1" in sys.argv else time.sleep(60)'
  run = _local_sh(2, sys.executable, "-c", code)
  assert run.returncode == 3
  assert "process 1 exited with status 3" in run.stderr
  assert time.monotonic() - start < 30  # process 0 was stopped, not waited for


def test_local_sh_forwards_sigterm(tmp_path):
  pids = tmp_path / "pids"
  code = f'import os, sys, time; open("{pids}", "a").write(f"{{os.getpid()}}\\n"); time.sleep(60)'
  proc = subprocess.Popen([LOCAL_SH, "2", sys.executable, "-c", code], cwd=ROOT)
  deadline = time.monotonic() + 20
  while time.monotonic() < deadline and (not pids.exists() or len(pids.read_text().split()) < 2):
    time.sleep(0.1)
  children = [int(p) for p in pids.read_text().split()]
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=20) == 143
  time.sleep(0.5)
  assert not any(_alive(pid) for pid in children)
