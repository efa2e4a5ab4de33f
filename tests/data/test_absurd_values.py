"""Absurd values are dropped and counted, never built into records (issue 15, item 3)."""

from __future__ import annotations

import datetime as dt
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmm_jax import conventions
from lmm_jax.data import build
from lmm_jax.data import meds_io
from lmm_jax.data import records
from lmm_jax.data import vocab as vocab_lib
from tests.data import meds_factory as mf

NUM_PATIENTS = 40


def _splits(rows) -> dict[int, str]:
  ids = sorted({r["subject_id"] for r in rows})
  return {s: conventions.SPLITS[0 if i % 5 < 3 else 1 + i % 2] for i, s in enumerate(ids)}


def _records(out: str) -> dict:
  got = {}
  for kind in (records.TIMELINE, records.TASK):
    for split in conventions.SPLITS:
      got[kind, split] = [{k: np.asarray(v).tolist() for k, v in r.items()}
                          for r in records.read_records(out, kind, split)]
  return got


def test_absurd_rows_are_dropped_counted_and_change_nothing_else(tmp_path):
  rows = mf.claims_world(NUM_PATIENTS, seed=3)
  clean = mf.write_meds(str(tmp_path / "clean"), rows, splits=_splits(rows))
  a = build.build_dataset(clean, str(tmp_path / "a"), mf.build_config(min_code_count=2))
  first = rows[0]["subject_id"]
  day = lambda y, m, d: dt.datetime(y, m, d, 9)
  absurd = {
      "cost_above_cap": [
          {"subject_id": first, "time": day(2020, 3, 4), "code": "COST//ALLOWED",
           "numeric_value": 1e12, "claim_id": "absurd1"},
          {"subject_id": first + 1, "time": day(2020, 5, 6), "code": "COST//ALLOWED",
           "numeric_value": 3e38, "claim_id": "absurd2"}],
      "non_finite_value": [
          {"subject_id": first + 2, "time": day(2020, 7, 8), "code": "COST//ALLOWED",
           "numeric_value": float("inf"), "claim_id": "absurd3"},
          {"subject_id": first + 2, "time": day(2020, 7, 8), "code": "LAB//GLUCOSE",
           "numeric_value": float("-inf"), "claim_id": "absurd3"}],
      "cost_without_value": [   # NaN reads as a null value
          {"subject_id": first + 3, "time": day(2020, 9, 1), "code": "COST//ALLOWED",
           "numeric_value": float("nan"), "claim_id": "absurd4"}],
      "time_out_of_range": [
          {"subject_id": first + 4, "time": dt.datetime(9999, 12, 31), "code": "ICD10CM//I10",
           "claim_id": "absurd5"},
          {"subject_id": first + 4, "time": dt.datetime(9999, 12, 31), "code": "COST//ALLOWED",
           "numeric_value": 100.0, "claim_id": "absurd5"},
          {"subject_id": first + 5, "time": dt.datetime(1850, 1, 1), "code": "CPT//99213",
           "claim_id": "absurd6"}],
  }
  meds = mf.write_meds(str(tmp_path / "meds"), rows + [r for rs in absurd.values() for r in rs],
                       splits=_splits(rows))
  b = build.build_dataset(meds, str(tmp_path / "b"), mf.build_config(min_code_count=2))
  assert {k: v for k, v in b["dropped"].items() if v} == {k: len(v) for k, v in absurd.items()}
  assert {"cost_above_cap", "non_finite_value", "time_out_of_range"} <= set(build.DROP_REASONS)
  # The 9999-12-31 row moved neither the index date nor the data's end.
  assert b["index_date"] == a["index_date"] == "2021-01-01"
  assert b["data_end_date"] == a["data_end_date"]
  assert _records(str(tmp_path / "b")) == _records(str(tmp_path / "a"))
  va = vocab_lib.Vocabulary.load(str(tmp_path / "a"))
  vb = vocab_lib.Vocabulary.load(str(tmp_path / "b"))
  assert vb.tokens == va.tokens
  np.testing.assert_array_equal(vb.cost_value, va.cost_value)
  used = vb.counts > 0   # empty cost bins are worth their midpoint; used ones their train mean
  assert float(vb.cost_value[used].max()) < 1e5


def test_date_shifted_data_is_accepted_and_limits_are_configurable(tmp_path):
  rows = mf.claims_world(NUM_PATIENTS, seed=4, start_year=2199)   # MIMIC-style date shifting
  meds = mf.write_meds(str(tmp_path / "meds"), rows, splits=_splits(rows))
  report = build.build_dataset(meds, str(tmp_path / "out"), mf.build_config())
  assert report["index_date"] == "2201-01-01" and not report["dropped"]["time_out_of_range"]
  cheap = build.build_dataset(meds, str(tmp_path / "cheap"), mf.build_config(
      max_claim_cost=100.0, required_splits=(), min_share_with_target_year_data=0.0))
  assert cheap["dropped"]["cost_above_cap"] > 0
  with pytest.raises(ValueError, match=r"^max_date must be 'YYYY-MM-DD', got 'soon'$"):
    build.build_dataset(meds, str(tmp_path / "bad"), mf.build_config(max_date="soon"))
  with pytest.raises(ValueError, match=r"^max_claim_cost=0.0 must be positive$"):
    build.build_dataset(meds, str(tmp_path / "bad"), mf.build_config(max_claim_cost=0.0))


def test_uint64_subject_id_beyond_int64_names_file_and_column(tmp_path):
  meds = str(tmp_path / "meds")
  os.makedirs(os.path.join(meds, "data"))
  path = os.path.join(meds, "data", "0.parquet")
  ids = [2**63 + 5, 2**63 + 5]
  pq.write_table(pa.table({
      "subject_id": pa.array(ids, pa.uint64()),
      "time": pa.array([dt.datetime(2020, 1, 1)] * 2, pa.timestamp("us")),
      "code": pa.array(["MEDS_BIRTH", "CPT//99213"]),
      "numeric_value": pa.array([None, None], pa.float32())}), path)
  msg = rf"^{path}, column 'subject_id': subject id {2**63 + 5} does not fit in int64"
  with pytest.raises(meds_io.MEDSFormatError, match=msg):
    meds_io.read_shard(path)
  with pytest.raises(meds_io.MEDSFormatError, match=msg):
    next(meds_io.iter_shard(path, max_rows=1))
  # uint64 ids that fit are read as int64.
  pq.write_table(pa.table({
      "subject_id": pa.array([7, 7], pa.uint64()),
      "time": pa.array([dt.datetime(2020, 1, 1)] * 2, pa.timestamp("us")),
      "code": pa.array(["MEDS_BIRTH", "CPT//99213"]),
      "numeric_value": pa.array([None, None], pa.float32())}), path)
  assert meds_io.read_shard(path).subject_id.tolist() == [7, 7]


def test_empty_split_fails_with_the_figures(tmp_path):
  rows = mf.claims_world(10, seed=5)
  meds = mf.write_meds(str(tmp_path / "meds"), rows,
                       splits={r["subject_id"]: "train" for r in rows})
  cfg = mf.build_config(required_splits=conventions.SPLITS)
  with pytest.raises(ValueError, match=r"^the build has an empty split or task: tuning \(0 "
                     r"patients, 0 task examples\), held_out \(0 patients, 0 task examples\), "
                     r"from \d+ of \d+ input rows at index date 2021-01-01"):
    build.build_dataset(meds, str(tmp_path / "out"), cfg)
  # A task emptied by the index date (nobody enrolled through 2031) fails the same way.
  with pytest.raises(ValueError, match=r"empty split or task: train \(10 patients, 0 task "):
    build.build_dataset(meds, str(tmp_path / "out2"), mf.build_config(index_date="2031-01-01"))
  with pytest.raises(ValueError, match=r"required_splits names unknown split\(s\) \['test'\]"):
    build.build_dataset(meds, str(tmp_path / "out3"), mf.build_config(required_splits=("test",)))


def test_almost_no_data_after_the_index_fails_with_the_figures(tmp_path):
  # Open-ended enrollment (no END rows): every subject counts as covered to the end of the last
  # year, so one subject's late claim moves the auto index date past everyone else's data.
  rows = [r for r in mf.claims_world(40, seed=6) if not r["code"].startswith("ENROLLMENT//END")]
  late = rows[0]["subject_id"]
  rows.append({"subject_id": late, "time": dt.datetime(2024, 6, 1), "code": "CPT//99213",
               "claim_id": "late"})
  meds = mf.write_meds(str(tmp_path / "meds"), rows, splits={r["subject_id"]: "train"
                                                             for r in rows})
  with pytest.raises(ValueError, match=r"^only [01] of \d+ task examples \(\d+\.\d%\) have any "
                     r"claim in the target year after the index date 2024-01-01 \(data end "
                     r"2024-06-01\), below min_share_with_target_year_data=0.05"):
    build.build_dataset(meds, str(tmp_path / "out"), mf.build_config())
  ok = build.build_dataset(meds, str(tmp_path / "ok"), mf.build_config(
      min_share_with_target_year_data=0.0))
  assert ok["task_examples"]["train"] == 40
  assert ok["task_examples_with_target_year_data"]["train"] <= 1
