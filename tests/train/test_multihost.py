"""Two processes over jax.distributed: a SIGTERM to one of them stops both at the same step."""

import json
import os
import re
import subprocess
import sys
import time

import portpicker

from lmm_jax.train import checkpoint as ckpt_lib
from lmm_jax.train import metrics as metrics_lib
from tests.train import multihost_worker

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 1
TIMEOUT_S = 150  # a hang (e.g. one process saving alone) fails the test instead of stalling


def _run_processes(workdir: str, logs: str, term_process: int, term_at: int) -> list[str]:
  """Runs all processes of one job to completion; returns each one's stdout."""
  port = portpicker.pick_unused_port()
  os.makedirs(logs, exist_ok=True)
  procs, files = [], []
  for i in range(NUM_PROCESSES):
    # Unoptimized XLA programs compile in about half the time; the test checks agreement, and the
    # numbers of a resumed run are checked bitwise elsewhere (test_trainer).
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
               JAX_NUM_PROCESSES=str(NUM_PROCESSES), JAX_PROCESS_ID=str(i),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}",
               JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    # Files, not pipes: a full pipe would block one process and with it the other.
    out, err = (open(os.path.join(logs, f"{i}.{s}"), "w", encoding="utf-8")
                for s in ("out", "err"))
    files += [out, err]
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "tests.train.multihost_worker", workdir, str(term_process),
         str(term_at)], cwd=REPO, env=env, stdout=out, stderr=err))
  deadline = time.time() + TIMEOUT_S
  hung = False
  try:
    for p in procs:
      p.wait(timeout=max(deadline - time.time(), 1))
  except subprocess.TimeoutExpired:
    hung = True
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    for f in files:
      f.close()

  def read(i, s):
    with open(os.path.join(logs, f"{i}.{s}"), encoding="utf-8") as f:
      return f.read()
  for i, p in enumerate(procs):
    how = f"still running after {TIMEOUT_S} s (killed)" if hung and p.returncode == -9 else (
        f"exited {p.returncode}")
    assert p.returncode == 0, f"process {i} {how}:\n{read(i, 'err')[-3000:]}"
  return [read(i, "out") for i in range(NUM_PROCESSES)]


def _stopped_at(stdout: str) -> int:
  m = re.search(r"process \d stopped at step (\d+)", stdout)
  assert m, stdout
  return int(m.group(1))


def test_sigterm_to_one_process_saves_the_same_step_on_all(tmp_path):
  workdir = str(tmp_path / "run")
  term_process, term_at = 1, 3  # the signal reaches a non-primary process only
  outs = _run_processes(workdir, str(tmp_path / "logs1"), term_process, term_at)
  steps = [_stopped_at(o) for o in outs]
  # Every process stopped at the one agreed step, after the signal and well before the end.
  assert len(set(steps)) == 1, steps
  stop = steps[0]
  assert term_at < stop < multihost_worker.NUM_STEPS, steps
  with ckpt_lib.reading(workdir) as (ckpt, latest):
    assert latest == stop
    data_dir = os.path.join(ckpt.directory, str(stop), ckpt_lib.DATA_ITEM)
  for i in range(NUM_PROCESSES):  # each process saved its own input position
    with open(os.path.join(data_dir, f"process_{i}-of-{NUM_PROCESSES}.json"),
              encoding="utf-8") as f:
      assert json.load(f) == {"index": stop, "shard": i}

  # The restarted job resumes from that step (each process from its own iterator state) to the end.
  outs = _run_processes(workdir, str(tmp_path / "logs2"), -1, -1)
  assert [_stopped_at(o) for o in outs] == [multihost_worker.NUM_STEPS] * NUM_PROCESSES
  logged = [r["step"] for r in metrics_lib.read_metrics(workdir) if "train_loss" in r]
  assert logged == list(range(1, multihost_worker.NUM_STEPS + 1))  # no step trained twice
