"""Bounded builder memory: data files read in chunks of whole subjects give the same dataset."""


import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmm_jax.data import build
from lmm_jax.data import meds_io
from tests.data import meds_factory as mf

def test_one_big_file_and_many_small_files_build_the_same_dataset(tmp_path):
  # Fewer train claims than cost_sample_size: above it the cost sample depends on the files'
  # claim indices (docs/data.md), whichever way a file is read.
  rows = mf.claims_world(30, seed=11)
  rows += [dict(r) for r in rows[5:400:7]]   # duplicate rows, counted as dropped
  splits = {1000 + i: ("held_out" if i % 5 == 0 else "train") for i in range(30)}
  one = mf.write_meds(str(tmp_path / "one"), rows, num_files=1, splits=splits)
  many = mf.write_meds(str(tmp_path / "many"), rows, num_files=7, splits=splits)
  builds = {}
  for name, meds, budget in (("one", one, 512.0), ("one_chunked", one, 0.01),
                             ("many", many, 512.0), ("many_chunked", many, 0.004)):
    out = str(tmp_path / f"out_{name}")
    build.build_dataset(meds, out, mf.build_config(min_code_count=2, memory_budget_mb=budget))
    builds[name] = mf.built_dataset(out)
  assert build.rows_per_chunk(mf.build_config(memory_budget_mb=0.01), 1) < len(rows) / 10
  ref = builds["one"]
  assert len(ref[0]) > 40 and ref[2]["input_rows"] == len(rows)
  assert ref[2]["dropped"]["duplicate_row"] == len(range(5, 400, 7))
  for name, got in builds.items():
    assert got[1] == ref[1], name                 # vocab.json, byte for byte
    assert got[2] == ref[2], name                 # accounting
    assert got[0].keys() == ref[0].keys(), name
    for key in ref[0]:
      assert got[0][key] == ref[0][key], (name, key)


def _write(path, subject, claim=None):
  n = len(subject)
  cols = {"subject_id": pa.array(subject, pa.int64()),
          "time": pa.array(np.arange(n) * meds_io.US_PER_DAY, pa.timestamp("us")),
          "code": pa.array([f"CPT//{99200 + i % 7}" for i in range(n)], pa.string()),
          "numeric_value": pa.array([None] * n, pa.float32())}
  if claim is not None:
    cols["claim_id"] = pa.array(claim)
  pq.write_table(pa.table(cols), path, row_group_size=5)
  return path


@pytest.mark.parametrize("claim_type", ["string", "int"])
@pytest.mark.parametrize("max_rows", [1, 3, 4, 7, 1000])
def test_chunks_hold_whole_subjects_and_match_a_whole_file_read(tmp_path, max_rows, claim_type):
  subject = [5] * 6 + [2] * 3 + [9] + [4] * 8 + [1] * 2
  # Claim ids shared across subjects (per-patient ordinals) and nulls: ids as in one read.
  claim = ["c", "a", "a", None, "b", "c", "b", "a", None, "z", "a", "y", "y", "c", "b", "x",
           None, "a", "q", "a"]
  if claim_type == "int":
    claim = pa.array([None if c is None else 1000 - ord(c) for c in claim], pa.int64())
  path = _write(str(tmp_path / "f.parquet"), subject, claim)
  whole = meds_io.read_shard(path)
  chunks = list(meds_io.iter_shard(path, "claim_id", max_rows))
  assert sum(c.num_rows for c in chunks) == len(subject)
  if max_rows < len(subject):
    assert len(chunks) > 1
  per_chunk = np.concatenate([np.unique(c.subject_id) for c in chunks])
  assert per_chunk.size == np.unique(per_chunk).size   # no subject in two chunks
  for name in ("subject_id", "time_us", "value", "claim", "duplicate"):
    np.testing.assert_array_equal(np.concatenate([getattr(c, name) for c in chunks]),
                                  getattr(whole, name), err_msg=name)
  codes = np.concatenate([np.array(c.codes)[c.code_index] for c in chunks])
  np.testing.assert_array_equal(codes, np.array(whole.codes)[whole.code_index])


@pytest.mark.parametrize("max_rows", [None, 2, 100])
def test_a_subject_whose_rows_are_not_together_is_an_error(tmp_path, max_rows):
  path = _write(str(tmp_path / "f.parquet"), [1, 1, 2, 2, 3, 1, 4])
  with pytest.raises(meds_io.MEDSFormatError, match="row 5 continues a subject") as e:
    list(meds_io.iter_shard(path, "claim_id", max_rows))
  assert path in str(e.value) and "'subject_id'" in str(e.value)


def test_empty_file_and_bad_budget(tmp_path):
  path = _write(str(tmp_path / "f.parquet"), [])
  (chunk,) = meds_io.iter_shard(path, "claim_id", 10)
  assert chunk.num_rows == 0
  with pytest.raises(ValueError, match="memory_budget_mb"):
    build.rows_per_chunk(mf.build_config(memory_budget_mb=0.0), 4)
  # Workers share the budget; a file never gets fewer than one row per chunk.
  cfg = mf.build_config(memory_budget_mb=64.0, num_workers=4)
  assert build.rows_per_chunk(cfg, 2) == 2 * build.rows_per_chunk(cfg, 8)
  assert build.rows_per_chunk(mf.build_config(memory_budget_mb=1e-9), 1) == 1
