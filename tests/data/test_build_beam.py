"""The Beam driver builds what the local builder builds: the same vocabulary, records and
accounting (lmm_jax/data/build_beam.py)."""

import collections
import os

import pytest

from lmm_jax.data import build
from lmm_jax.data import records
from tests.data import meds_factory as mf

pytest.importorskip("apache_beam", reason="apache_beam is not installed")
from lmm_jax.data import build_beam  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_beam_and_local_builds_are_identical(tmp_path):
  rows = mf.claims_world(30, seed=11)
  rows += [dict(r) for r in rows[5:400:7]]   # duplicate rows, counted as dropped
  splits = {1000 + i: ("held_out" if i % 5 == 0 else "tuning" if i % 5 == 1 else "train")
            for i in range(30)}
  meds = mf.write_meds(str(tmp_path / "meds"), rows, num_files=3, splits=splits)
  config = mf.build_config(min_code_count=2)
  local = str(tmp_path / "local")
  build.build_dataset(meds, local, config)
  beam_out = str(tmp_path / "beam")
  report = build_beam.build_dataset(meds, beam_out, config, [
      "--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"])
  assert report["output_dir"] == beam_out
  ref, got = mf.built_dataset(local), mf.built_dataset(beam_out)
  assert len(ref[0]) > 40
  assert ref[2]["dropped"]["duplicate_row"] == len(range(5, 400, 7))
  assert got[1] == ref[1]           # vocab.json, byte for byte
  assert got[2] == ref[2]           # accounting and the rest of report.json
  assert got[0] == ref[0]           # records (by kind and subject: one each), decoded split too
  # Nothing of the sink's or the driver's scratch is left in the output.
  assert sorted(os.listdir(beam_out)) == sorted(os.listdir(local))
  for kind in (records.TIMELINE, records.TASK):
    assert all(n.endswith(records.SHARD_SUFFIX) for n in os.listdir(os.path.join(beam_out, kind)))


def test_counters_must_agree_with_the_combined_counts():
  counts = {"input_rows": 10, "used_rows": 8, "dropped": collections.Counter(duplicate_row=2)}
  counters = {"input_rows": 10, "used_rows": 8, "dropped.duplicate_row": 2}
  build_beam.accounting_from_counters(dict(counters), counts)
  assert counts["dropped"]["duplicate_row"] == 2
  with pytest.raises(AssertionError, match="disagree"):
    build_beam.accounting_from_counters({**counters, "input_rows": 20}, counts)
