"""MEDS metadata that puts a subject in another split than the data/<split>/ directory of its file
is counted in report.json (`split_directory_conflicts`); the metadata's split is used."""

import collections
import os

import numpy as np
import pyarrow.parquet as pq

from lmm_jax import conventions
from lmm_jax.data import build
from lmm_jax.data import meds_io
from lmm_jax.data import records
from tests.data import meds_factory as mf


def test_directory_split():
  assert meds_io.directory_split("/m", "/m/data/train/a.parquet") == "train"
  assert meds_io.directory_split("/m", "/m/data/held_out/x/a.parquet") == "held_out"
  assert meds_io.directory_split("/m", "/m/data/a.parquet") is None
  assert meds_io.directory_split("/m", "/m/data/other/a.parquet") is None


def test_held_out_subjects_under_data_train_are_counted(tmp_path):
  rows = mf.claims_world(24, seed=5)
  ids = sorted({r["subject_id"] for r in rows})
  splits = {s: ("held_out" if i % 4 == 0 else "tuning" if i % 6 == 1 else "train")
            for i, s in enumerate(ids)}
  meds = mf.write_meds(str(tmp_path / "meds"), rows, num_files=2, splits=splits)
  # MEDS layout data/<split>/: the first file is filed under train, the second under tuning.
  expected = collections.Counter()
  moved_held_out = set()
  for i, where in enumerate(("train", "tuning")):
    os.makedirs(os.path.join(meds, "data", where))
    src = os.path.join(meds, "data", f"shard_{i}.parquet")
    for sid in set(pq.read_table(src, columns=["subject_id"]).column(0).to_pylist()):
      if splits[sid] != where:
        expected[f"{where}->{splits[sid]}"] += 1
        if splits[sid] == "held_out":
          moved_held_out.add(sid)
    os.rename(src, os.path.join(meds, "data", where, f"shard_{i}.parquet"))
  assert expected["train->held_out"] > 0
  report = build.build_dataset(meds, str(tmp_path / "out"), mf.build_config())
  assert report["split_directory_conflicts"] == dict(sorted(expected.items()))
  # The metadata wins: every held-out subject's records are in held_out, wherever its file was.
  held = {int(r["subject_id"]) for r in records.read_records(str(tmp_path / "out"),
                                                            records.TIMELINE, conventions.HELD_OUT)}
  assert held <= {s for s, v in splits.items() if v == "held_out"} and held & moved_held_out


def test_no_conflicts_without_metadata_or_directories(tmp_path):
  rows = mf.claims_world(6, seed=1)
  meds = mf.write_meds(str(tmp_path / "meds"), rows, splits=None)
  paths = meds_io.data_files(meds)
  assert meds_io.split_directory_conflicts(meds, paths, None) == {}
  ids = np.array(sorted({r["subject_id"] for r in rows}), np.int64)
  splits = meds_io.Splits(ids, np.full(ids.shape, 2, np.int8))
  assert meds_io.split_directory_conflicts(meds, paths, splits) == {}  # files not under data/<split>/
