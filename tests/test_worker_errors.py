"""Errors in worker processes reach the parent promptly (issue 18).

Our exception types survive pickling; the process pool of the dataset builder and the synthesizer
re-raises a worker's error and detects a dead worker; grain worker processes' errors reach the
caller and the trainer's run exits non-zero. Every test runs under a time limit: a hang fails.
(Sweep points: tests/sweeps/test_sweeps.py; bad MEDS input with 1 and 2 workers:
tests/data/test_foreign_and_bad_input.py.)
"""

import ast
import builtins
import glob
import importlib
import inspect
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from lmm_jax import workers
from lmm_jax.data import build
from lmm_jax.data import meds_io
from lmm_jax.data import pipeline
from lmm_jax.data import records
from lmm_jax.synth import synthesize
from tests import worker_jobs
from tests.data import meds_factory as mf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PACKAGES = ("lmm_jax", "data_prep", "experiments")

# ------------------------------------------------------------------------------------------------
# Our exception classes survive a pickle round trip (how a worker's error reaches its parent).

# Constructor arguments for classes whose signature a string per parameter does not fit.
_EXAMPLES = {
    "MEDSFormatError": [("data/0.parquet", "required column is missing", "code"),
                        ("data/0.parquet", "unreadable parquet file")],
}


def _base_names(node: ast.ClassDef) -> set[str]:
  out = set()
  for b in node.bases:
    if isinstance(b, ast.Name):
      out.add(b.id)
    elif isinstance(b, ast.Attribute):
      out.add(b.attr)
  return out


def _module_name(path: str) -> str:
  return os.path.splitext(os.path.relpath(path, REPO))[0].replace(os.sep, ".").removesuffix(
      ".__init__")


def our_exception_classes() -> list[type]:
  """Every module-level exception class defined in lmm_jax, data_prep and experiments.

  Found from the source (importing every binary would define its flags twice): a class is a
  candidate when a base is named like an exception or is one of ours found so far; candidates'
  modules are imported and kept if the class really is an exception.
  """
  defs = []
  for package in _PACKAGES:
    for path in sorted(glob.glob(os.path.join(REPO, package, "**", "*.py"), recursive=True)):
      with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
      defs += [(path, node) for node in tree.body if isinstance(node, ast.ClassDef)]
  known = {n for n, v in vars(builtins).items()
           if isinstance(v, type) and issubclass(v, BaseException)}
  found: dict[str, type] = {}
  changed = True
  while changed:  # until no class derives from a newly found one
    changed = False
    for path, node in defs:
      key = f"{path}:{node.name}"
      bases = _base_names(node)
      if key in found or not (bases & known or any(
          b.endswith(("Error", "Exception", "Warning")) for b in bases)):
        continue
      cls = getattr(importlib.import_module(_module_name(path)), node.name)
      if isinstance(cls, type) and issubclass(cls, BaseException):
        found[key] = cls
        known.add(node.name)
        changed = True
  return list(found.values())


def _instances(cls: type) -> list[BaseException]:
  if cls.__name__ in _EXAMPLES:
    return [cls(*args) for args in _EXAMPLES[cls.__name__]]
  try:
    parameters = list(inspect.signature(cls).parameters.values())
  except ValueError:  # the builtin constructor: (*args)
    return [cls("a message")]
  args, kwargs = [], {}
  for p in parameters:
    if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
      continue
    if p.kind == p.KEYWORD_ONLY:
      kwargs[p.name] = f"<{p.name}>"
    else:
      args.append(f"<{p.name}>")
  try:
    return [cls(*args, **kwargs)]
  except Exception as e:  # pylint: disable=broad-except
    pytest.fail(f"cannot make a {cls.__qualname__} from strings ({e}): add its constructor "
                f"arguments to _EXAMPLES in {__file__}")


def test_the_scan_finds_our_exception_classes():
  names = {c.__name__ for c in our_exception_classes()}
  assert {"MEDSFormatError", "WorkerError", "WorkerDiedError", "RemoteTraceback"} <= names


@pytest.mark.parametrize("cls", our_exception_classes(), ids=lambda c: c.__qualname__)
def test_exception_survives_pickling(cls):
  for e in _instances(cls):
    e.add_note("a note added on the way")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is cls
    assert str(back) == str(e) and back.args == e.args
    assert vars(back) == vars(e)


def test_meds_format_error_keeps_its_fields_through_pickle():
  e = pickle.loads(pickle.dumps(meds_io.MEDSFormatError("d/0.parquet", "bad type", "time")))
  assert (e.path, e.message, e.column) == ("d/0.parquet", "bad type", "time")
  assert str(e) == "d/0.parquet, column 'time': bad type"


# ------------------------------------------------------------------------------------------------
# The process pool (workers.ProcessPool, spawned workers as under JAX).


@pytest.mark.time_limit(120)
def test_pool_keeps_job_order_whatever_the_workers():
  items = [(1, 0.3), 2, (3, 0.1), 4, 5, (6, 0.2), 7]
  expected = [10, 20, 30, 40, 50, 60, 70]
  for num_workers in (1, 2, 3):
    assert list(workers.ordered_map(worker_jobs.job, items, num_workers=num_workers)) == expected
  with workers.ProcessPool(2) as pool:  # a pool runs several maps (the builder's two passes)
    assert list(pool.imap(worker_jobs.job, items)) == expected
    assert list(pool.imap(worker_jobs.job, [9, 8])) == [90, 80]


@pytest.mark.time_limit(120)
def test_worker_exception_is_reraised_with_its_type_message_and_traceback():
  with pytest.raises(meds_io.MEDSFormatError) as e:
    list(workers.ordered_map(worker_jobs.job, [1, "meds_error", 3], num_workers=2,
                             describe=lambda x: f"on {x}"))
  assert (e.value.path, e.value.column) == ("data/3.parquet", "code")
  assert "raised in the worker on meds_error" in e.value.__notes__[0]
  assert isinstance(e.value.__cause__, workers.RemoteTraceback)
  assert "worker_jobs.py" in str(e.value.__cause__) and "in job" in str(e.value.__cause__)


@pytest.mark.time_limit(120)
@pytest.mark.parametrize("item,message", [
    ("two_arg_error", r"tests\.worker_jobs\.TwoArgError: data/3\.parquet: bad"),
    ("unpicklable_result", "pickle"),
])
def test_what_pickle_cannot_carry_becomes_a_worker_error(item, message):
  with pytest.raises(workers.WorkerError, match=message):
    list(workers.ordered_map(worker_jobs.job, [1, item], num_workers=2))


@pytest.mark.time_limit(120)
@pytest.mark.parametrize("item,how", [
    ("sigkill", r"was killed \(signal 9, SIGKILL: out of memory\?\)"),
    ("exit", "exited with status 5 without reporting an error"),
    ("sys_exit", "exited with status 4 without reporting an error"),
])
def test_dead_worker_is_detected_and_named(item, how):
  start = time.time()
  with pytest.raises(workers.WorkerDiedError, match=f"^worker building {item} {how}$"):
    list(workers.ordered_map(worker_jobs.job, [(1, 0.5), item, 3, 4], num_workers=2,
                             describe=lambda x: f"building {x}"))
  assert time.time() - start < 60


@pytest.mark.time_limit(120)
def test_first_error_stops_every_worker_and_drops_the_remaining_jobs(tmp_path):
  items = [(str(tmp_path), i, 10.0 if i == 1 else 0.0) for i in range(8)]
  pool = workers.ProcessPool(2)
  pids = pool.pids
  with pytest.raises(ValueError, match="job 0 fails"):
    list(pool.imap(worker_jobs.marker_job, items))
  for pid in pids:  # stopped and reaped: nobody is left to run job 1 or the others
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)
  assert not os.listdir(tmp_path)
  with pytest.raises(workers.WorkerError, match="closed"):
    list(pool.imap(worker_jobs.job, [1]))


# ------------------------------------------------------------------------------------------------
# The dataset builder's and the synthesizer's workers.


def _meds_two_files(meds_dir: str) -> str:
  rows = mf.claims_world(6, seed=2)
  return mf.write_meds(meds_dir, rows, num_files=2)


_KILL_SHARD_1 = textwrap.dedent("""
    import os, signal, sys
    from absl import app
    from lmm_jax.data import build
    from data_prep import build_dataset

    _real_pass1 = build._pass1

    def _pass1(path):  # the worker counting shard_1 is killed as if out of memory
      if path.endswith("shard_1.parquet"):
        os.kill(os.getpid(), signal.SIGKILL)
      return _real_pass1(path)

    build._pass1 = _pass1
    sys.argv = ["build_dataset"] + sys.argv[1:]
    app.run(build_dataset.main)
    """)


@pytest.mark.time_limit(180)
def test_builder_binary_fails_promptly_when_a_worker_is_killed(tmp_path):
  """The binary with 2 forked workers (no JAX in it), one killed: exit 1 and one line."""
  meds = _meds_two_files(str(tmp_path / "meds"))
  start = time.time()
  proc = subprocess.run(
      [sys.executable, "-c", _KILL_SHARD_1, f"--meds_dir={meds}",
       f"--output_dir={tmp_path / 'out'}", "--num_workers=2", "--no_progress",
       "--min_code_count=1"],
      cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
      timeout=150)
  assert proc.returncode == 1, proc.stderr[-3000:]
  path = os.path.join(meds, "data", "shard_1.parquet")
  assert (f"error: worker counting codes in {path} was killed (signal 9, SIGKILL: out of memory?)"
          in proc.stderr), proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert time.time() - start < 120


@pytest.mark.time_limit(180)
def test_builder_in_process_detects_a_killed_spawned_worker(tmp_path):
  meds = _meds_two_files(str(tmp_path / "meds"))
  killer = worker_jobs.KillFirstWorker()
  killer.start()
  try:
    # The killer may catch a worker after its last job's result arrived ("between jobs").
    with pytest.raises(workers.WorkerDiedError,
                       match=r"^worker ((counting codes in|writing the records of) \S+shard_[01]"
                       r"\.parquet|between jobs) was killed \(signal 9"):
      build.build_dataset(meds, str(tmp_path / "out"),
                          mf.build_config(num_workers=2, min_code_count=1))
  finally:
    killer.stop()
  assert killer.killed is not None


@pytest.mark.time_limit(180)
def test_synthesizer_detects_a_killed_worker(tmp_path):
  killer = worker_jobs.KillFirstWorker()
  killer.start()
  try:
    # The killer may catch a worker after its last job's result arrived ("between jobs").
    with pytest.raises(workers.WorkerDiedError,
                       match=r"^worker (simulating chunk \d \(data/\*/\d\.parquet\)|between "
                             r"jobs) was killed"):
      synthesize(str(tmp_path / "meds"), num_patients=60, seed=1, patients_per_shard=20,
                 num_workers=2, oracle_rollouts=1, progress=False)
  finally:
    killer.stop()
  assert killer.killed is not None


# ------------------------------------------------------------------------------------------------
# grain worker processes (pipeline.make_dataset(worker_count=2)).

_RECORDS_PER_SHARD = 40


def _write_timelines(data_dir: str, bad_record: bool = False) -> str:
  """Two timeline shards; returns the second one's path."""
  path = ""
  for shard in range(2):
    path = os.path.join(data_dir, records.TIMELINE, records.shard_name("train", shard, 2))
    with records.ShardWriter(path) as w:
      for i in range(_RECORDS_PER_SHARD):
        n = 10
        rec = {"subject_id": np.int64(100 * shard + i),
               "tokens": np.arange(1, n + 1, dtype=np.int32), "days": np.arange(n, dtype=np.int32),
               "age": np.zeros(n, np.float32), "prefix_len": 3}
        if bad_record and shard == 1 and i == 7:
          rec["days"] = np.zeros(3, np.int32)
        w.write(rec)
  records.write_manifest(data_dir, vocab_size=100)
  return path


def _corrupt_first_chunk(path: str) -> None:
  # The records' first chunk, not the footer: the file opens, reading a record fails.
  with open(path, "r+b") as f:
    f.seek(200)
    f.write(b"\xff" * 1000)


def _grain_iterator(data_dir: str, num_epochs=1):
  return iter(pipeline.make_dataset(data_dir, records.TIMELINE, "train", seq_len=16, batch_size=4,
                                    seed=0, shard_index=0, shard_count=1, worker_count=2,
                                    num_epochs=num_epochs))


def _drain(it) -> None:
  try:
    for _ in it:
      pass
  finally:
    it.close()


@pytest.mark.time_limit(180)
def test_grain_worker_error_on_a_bad_record_reaches_the_caller(tmp_path):
  path = _write_timelines(str(tmp_path), bad_record=True)
  with pytest.raises(ValueError, match="days has 3 entries") as e:
    _drain(_grain_iterator(str(tmp_path)))
  assert path in str(e.value) and "record 7" in str(e.value)


@pytest.mark.time_limit(180)
def test_grain_worker_error_on_a_corrupt_shard_reaches_the_caller(tmp_path):
  _corrupt_first_chunk(_write_timelines(str(tmp_path)))
  with pytest.raises(RuntimeError, match="Corrupted"):
    _drain(_grain_iterator(str(tmp_path)))


@pytest.mark.time_limit(180)
def test_grain_detects_a_killed_worker(tmp_path):
  _write_timelines(str(tmp_path))
  it = _grain_iterator(str(tmp_path), num_epochs=None)  # endless: only the kill ends it
  try:
    next(it)
    victims = worker_jobs.spawned_children()
    assert victims
    os.kill(victims[0], 9)
    with pytest.raises(RuntimeError, match="terminated unexpectedly with exit code -9"):
      for _ in range(100_000):
        next(it)
  finally:
    it.close()


@pytest.mark.slow
@pytest.mark.time_limit(420)
def test_pretraining_on_a_corrupt_shard_with_grain_workers_exits_nonzero(tiny_data_dir, tmp_path):
  data_dir = str(tmp_path / "records")
  shutil.copytree(tiny_data_dir, data_dir)
  for path in records.shard_paths(data_dir, records.TIMELINE, "train"):
    _corrupt_first_chunk(path)
  start = time.time()
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.pretrain",
       "--config=experiments/configs/pretrain.py:tiny", f"--workdir={tmp_path / 'run'}",
       f"--config.data_dir={data_dir}", "--config.num_train_steps=50",
       "--config.worker_count=2", "--config.progress=False"],
      cwd=REPO, capture_output=True, text=True, timeout=400, check=False)
  assert proc.returncode != 0
  assert "Corrupted" in proc.stderr, proc.stderr[-3000:]
  assert time.time() - start < 360
