"""Builds appear whole or not at all (issue 15 item 1): lock, temporary directory, manifest, and
readers that refuse anything else; token ids range-checked by the pipeline (item 4)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from lmm_jax.baselines import features
from lmm_jax.data import build
from lmm_jax.data import pipeline
from lmm_jax.data import records
from lmm_jax.tasks import pretrain
from tests.data import meds_factory as mf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REBUILD = "rebuild it with python -m data_prep.build_dataset"


@pytest.fixture(scope="module")
def meds(tmp_path_factory) -> str:
  rows = mf.claims_world(40, seed=5)
  return mf.write_meds(str(tmp_path_factory.mktemp("meds") / "meds"), rows, num_files=3)


@pytest.fixture(scope="module")
def built(meds, tmp_path_factory) -> str:
  out = str(tmp_path_factory.mktemp("built") / "out")
  build.build_dataset(meds, out, mf.build_config(min_code_count=3))
  return out


def _files(data_dir: str) -> dict[str, str]:
  """Relative path -> sha256 of every file under data_dir."""
  out = {}
  for root, _, names in os.walk(data_dir):
    for n in names:
      p = os.path.join(root, n)
      out[os.path.relpath(p, data_dir)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
  return out


def _build_subprocess(meds: str, out: str, hook: str = "", workers: int = 1,
                      min_code_count: int = 3, wait: bool = True, extra=()):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop(build.TEST_HOOK_ENV, None)
  if hook:
    env[build.TEST_HOOK_ENV] = hook
  cmd = [sys.executable, "-m", "data_prep.build_dataset", f"--meds_dir={meds}",
         f"--output_dir={out}", f"--min_code_count={min_code_count}",
         f"--num_workers={workers}", "--no_progress", *extra]
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  if not wait:
    return proc
  stdout, stderr = proc.communicate(timeout=300)
  return proc.returncode, stdout, stderr


def _assert_readers_refuse(data_dir: str, error=(FileNotFoundError, ValueError), match=REBUILD):
  """Every reader of records refuses data_dir with the rebuild sentence."""
  readers = {
      "read_records": lambda: records.read_records(data_dir, records.TIMELINE, "train"),
      "make_dataset": lambda: pipeline.make_dataset(
          data_dir, records.TASK, "train", seq_len=16, batch_size=2, seed=0, shard_index=0,
          shard_count=1, prefetch_buffer_size=0),
      "num_examples": lambda: pipeline.num_examples(data_dir, records.TIMELINE, "train"),
      "load_vocab": lambda: pretrain.load_vocab(data_dir),
      "baselines": lambda: features.load_split(data_dir, "train", progress=False),
  }
  for name, read in readers.items():
    with pytest.raises(error, match=match) as e:
      read()
    assert "\n" not in str(e.value), (name, str(e.value))


def test_a_build_ends_with_a_manifest_of_its_files(built):
  manifest = records.check_dataset(built)
  report = json.load(open(os.path.join(built, records.REPORT_FILE)))
  assert manifest["vocab_digest"] == records.vocab_digest(built) == hashlib.sha256(
      open(os.path.join(built, records.VOCAB_FILE), "rb").read()).hexdigest()
  assert manifest["vocab_size"] == report["vocab_size"]
  assert manifest["builder"]["version"] == build.BUILDER_VERSION
  assert manifest["builder"]["config_digest"] == build.config_digest(report["config"])
  for split, n in report["patients"].items():
    assert manifest["records"]["timeline"][split] == n
    assert manifest["records"]["task"][split] == report["task_examples"][split]
    assert len(manifest["shards"]["timeline"][split]) == report["num_input_shards"]
  # Nothing but the build is left: no scratch directory beside it, no temporary file inside.
  parent = os.path.dirname(built)
  assert sorted(os.listdir(parent)) == [".out.lock", "out"]
  assert sorted(os.listdir(built)) == ["manifest.json", "report.json", "task", "timeline",
                                       "vocab.json"]
  assert os.stat(built).st_mode & 0o755 == 0o755 & ~_umask()


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def test_records_are_those_of_an_in_place_build(meds, built, tmp_path):
  """The same input and config give the same bytes, whatever replaces what."""
  out = str(tmp_path / "again")
  os.makedirs(out)  # an empty directory is replaced
  build.build_dataset(meds, out, mf.build_config(min_code_count=3))
  build.build_dataset(meds, out, mf.build_config(min_code_count=3))  # a build replaces a build
  a, b = _files(built), _files(out)
  del a["report.json"], b["report.json"], a["manifest.json"], b["manifest.json"]
  assert a == b


@pytest.mark.time_limit(300)
def test_kill_at_a_shard_boundary_leaves_no_output_and_readers_refuse(meds, tmp_path):
  out = str(tmp_path / "out")
  rc, _, stderr = _build_subprocess(meds, out, hook="kill@shards=1", workers=2)
  assert rc == -9, stderr[-2000:]
  assert not os.path.exists(out)
  scratch = [n for n in os.listdir(tmp_path) if ".building-" in n]
  assert len(scratch) == 1  # the partial build sits beside it, never at out
  partial = os.path.join(tmp_path, scratch[0])
  assert os.listdir(os.path.join(partial, records.TIMELINE))  # some shards were written
  _assert_readers_refuse(out, FileNotFoundError, "does not exist; " + REBUILD)
  _assert_readers_refuse(partial, FileNotFoundError, "has no manifest.json.*; " + REBUILD)
  # The next build removes the leftovers and succeeds.
  build.build_dataset(meds, out, mf.build_config(min_code_count=3))
  records.check_dataset(out)
  assert sorted(os.listdir(tmp_path)) == [".out.lock", "out"]


@pytest.mark.time_limit(300)
def test_kill_mid_shard_over_an_old_build_keeps_the_old_build(meds, tmp_path):
  out = str(tmp_path / "out")
  build.build_dataset(meds, out, mf.build_config(min_code_count=3))
  before = _files(out)
  old_size = json.load(open(os.path.join(out, records.REPORT_FILE)))["vocab_size"]
  # Another vocabulary (5 cost bins, not 20), killed while writing its 5th record.
  rc, _, stderr = _build_subprocess(meds, out, hook="kill@records=5",
                                    extra=["--config.num_cost_bins=5"])
  assert rc == -9, stderr[-2000:]
  assert _files(out) == before  # untouched: no stale report.json beside a newer vocab.json
  records.check_dataset(out)
  report = json.load(open(os.path.join(out, records.REPORT_FILE)))
  vocab = json.load(open(os.path.join(out, records.VOCAB_FILE)))
  assert report["vocab_size"] == len(vocab["tokens"])
  # The truncated shard exists only in the scratch directory, which readers refuse.
  partial = [os.path.join(tmp_path, n) for n in os.listdir(tmp_path) if ".building-" in n]
  assert len(partial) == 1
  _assert_readers_refuse(partial[0], FileNotFoundError, "has no manifest.json")
  truncated = os.path.join(partial[0], records.TIMELINE, records.shard_name("train", 0, 3))
  with pytest.raises(RuntimeError, match="should be at least 64KB big"):
    records.read_shard(truncated).__next__()  # what readers met before the manifest
  # Completed, the new build replaces the old one whole.
  rc, _, stderr = _build_subprocess(meds, out, extra=["--config.num_cost_bins=5"])
  assert rc == 0, stderr[-2000:]
  records.check_dataset(out)
  report = json.load(open(os.path.join(out, records.REPORT_FILE)))
  vocab = json.load(open(os.path.join(out, records.VOCAB_FILE)))
  assert report["vocab_size"] == len(vocab["tokens"]) < old_size
  assert sorted(os.listdir(tmp_path)) == [".out.lock", "out"]


@pytest.mark.time_limit(300)
def test_a_second_concurrent_build_fails_at_once(meds, tmp_path):
  out = str(tmp_path / "out")
  gate = str(tmp_path / "gate")
  first = _build_subprocess(meds, out, hook=f"wait@shards=1:{gate}", wait=False,
                            min_code_count=1)
  try:
    deadline = time.time() + 200
    while not os.path.exists(gate + ".reached"):
      assert first.poll() is None and time.time() < deadline, first.stderr.read()[-2000:]
      time.sleep(0.1)
    start = time.time()
    with pytest.raises(build.BuildLockedError, match=f"another build is writing {out} "):
      build.build_dataset(meds, out, mf.build_config(min_code_count=3))
    assert time.time() - start < 5
    # Through the binary: one line, exit status 2.
    rc, _, stderr = _build_subprocess(meds, out)
    assert rc == 2 and stderr.strip().splitlines() == [
        f"error: another build is writing {out} (it holds the lock {build.lock_path(out)}); "
        "wait for it to finish or pass another --output_dir"], stderr[-2000:]
    open(gate, "w").close()
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
  finally:
    if first.poll() is None:
      first.kill()
  # The first build's output is whole: one vocabulary, every token id inside it.
  manifest = records.check_dataset(out)
  assert json.load(open(os.path.join(out, records.REPORT_FILE)))["config"]["min_code_count"] == 1
  for split in ("train", "tuning", "held_out"):
    for rec in records.read_records(out, records.TIMELINE, split):
      assert rec["tokens"].max() < manifest["vocab_size"]


def test_readers_refuse_a_directory_that_does_not_match_its_manifest(built, meds, tmp_path):
  other = str(tmp_path / "other")
  build.build_dataset(meds, other, mf.build_config(min_code_count=1))

  def copy(name):
    d = str(tmp_path / name)
    shutil.copytree(built, d)
    return d

  d = copy("no_manifest")
  os.remove(os.path.join(d, records.MANIFEST_FILE))
  _assert_readers_refuse(d, FileNotFoundError, "has no manifest.json")

  d = copy("other_vocab")
  shutil.copy(os.path.join(other, records.VOCAB_FILE), os.path.join(d, records.VOCAB_FILE))
  _assert_readers_refuse(d, records.DatasetMismatchError, "vocab.json is not the one it lists")

  d = copy("stale_report")
  shutil.copy(os.path.join(other, records.REPORT_FILE), os.path.join(d, records.REPORT_FILE))
  _assert_readers_refuse(d, records.DatasetMismatchError, "report.json is not the one")

  d = copy("extra_shard")
  name = records.shard_name("train", 7, 9)
  shutil.copy(records.shard_paths(other, records.TIMELINE, "train")[0],
              os.path.join(d, records.TIMELINE, name))
  _assert_readers_refuse(d, records.DatasetMismatchError, f"unlisted shard.*{name}")

  d = copy("missing_shard")
  os.remove(records.shard_paths(d, records.TASK, "tuning")[0])
  _assert_readers_refuse(d, records.DatasetMismatchError, "lacks 1 listed")

  d = copy("truncated_shard")  # what kill -9 mid-shard used to leave: refused before it is opened
  path = records.shard_paths(d, records.TIMELINE, "train")[0]
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  _assert_readers_refuse(d, records.DatasetMismatchError, "has .* bytes, the manifest lists")


def test_an_output_dir_with_other_files_is_not_replaced(meds, tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match=r"holds files that are not a dataset build \(notes.txt\)"):
    build.build_dataset(meds, str(out), mf.build_config(min_code_count=3))
  assert os.listdir(out) == ["notes.txt"]
  assert not [n for n in os.listdir(tmp_path) if ".building-" in n]


# ------------------------------------------------------------------------------------------------
# Token ids against the vocabulary (item 4).


def test_the_pipeline_refuses_token_ids_outside_the_vocabulary(tmp_path):
  path = os.path.join(tmp_path, records.TIMELINE, records.shard_name("train", 0, 1))
  with records.ShardWriter(path) as w:
    for i, top in enumerate((9, 10)):  # record 1 holds id 10 of a 10-token vocabulary
      w.write({"subject_id": np.int64(i), "tokens": np.array([1, 2, 3, top], np.int32),
               "days": np.arange(4, dtype=np.int32), "age": np.zeros(4, np.float32),
               "prefix_len": 3})
  records.write_manifest(str(tmp_path), vocab_size=10)
  ds = pipeline.make_dataset(str(tmp_path), records.TIMELINE, "train", seq_len=8, batch_size=2,
                             seed=0, shuffle=False, shard_index=0, shard_count=1,
                             prefetch_buffer_size=0)
  with pytest.raises(ValueError, match=r"token id 10 is outside the vocabulary \[0, 10\)") as e:
    next(iter(ds))
  assert f"{path}, record 1" in str(e.value) and "\n" not in str(e.value)
