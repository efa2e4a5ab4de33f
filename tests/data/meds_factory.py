"""Small hand-made MEDS datasets for the builder's tests (pyarrow only).

`write_meds` writes rows given as dicts; `claims_world` makes a few patients' claims in our
conventions (or in a foreign ETL's spellings) with known facts the tests check.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.configs import build_dataset as build_dataset_config
from lmm_jax import conventions
from lmm_jax.data import build
from lmm_jax.data import records

MEDS_SCHEMA = pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")),
                         ("code", pa.string()), ("numeric_value", pa.float32())])


def write_meds(meds_dir: str, rows: Sequence[dict[str, Any]], *, num_files: int = 1,
               splits: Optional[dict[int, str]] = None, extra: Sequence[str] = ("claim_id",),
               schema: Optional[pa.Schema] = None) -> str:
  """Writes data/shard_{i}.parquet (subjects round-robin over files) and metadata/."""
  os.makedirs(os.path.join(meds_dir, "data"), exist_ok=True)
  os.makedirs(os.path.join(meds_dir, "metadata"), exist_ok=True)
  fields = list(schema or MEDS_SCHEMA)
  for col in extra:
    if col not in [f.name for f in fields]:
      typ = pa.string()
      fields.append(pa.field(col, typ))
  schema = pa.schema(fields)
  subjects = sorted({r["subject_id"] for r in rows})
  file_of = {s: i % num_files for i, s in enumerate(subjects)}
  for i in range(num_files):
    mine = [r for r in rows if file_of[r["subject_id"]] == i]
    mine.sort(key=lambda r: (r["subject_id"], r.get("time") or dt.datetime.min))
    cols = {f.name: [r.get(f.name) for r in mine] for f in schema}
    table = pa.table({f.name: pa.array(cols[f.name], f.type) for f in schema}, schema=schema)
    pq.write_table(table, os.path.join(meds_dir, "data", f"shard_{i}.parquet"))
  with open(os.path.join(meds_dir, "metadata", "dataset.json"), "w") as f:
    json.dump({"dataset_name": "test", "dataset_version": "0", "etl_name": "tests",
               "meds_version": "0.4.1"}, f)
  if splits is not None:
    ids = sorted(splits)
    pq.write_table(pa.table({"subject_id": pa.array(ids, pa.int64()),
                             "split": pa.array([splits[s] for s in ids], pa.string())}),
                   os.path.join(meds_dir, "metadata", "subject_splits.parquet"))
  return meds_dir


# Diagnoses with their foreign spellings: (ours, DIAGNOSIS//ICD//10//, ICD10// no dot).
_DX = ["E11.9", "I10", "E78.5", "J45.909", "F32.A", "M17.11", "N18.3", "I50.9", "Z00.00", "K21.9"]
_CPT = ["99213", "99214", "80053", "93000", "36415"]
_NDC = ["00002143380", "00071015523", "00378395077"]


def _ts(day0: dt.date, offset: int, hour: int = 9) -> dt.datetime:
  return dt.datetime.combine(day0 + dt.timedelta(days=offset), dt.time(hour))


def claims_world(num_patients: int, seed: int = 0, *, start_year: int = 2019, years: int = 3,
                 foreign: bool = False, claims_per_year: int = 8) -> list[dict[str, Any]]:
  """Patients enrolled over the whole span with a few claims a year.

  foreign=True spells diagnoses `DIAGNOSIS//ICD//10//E119` / `ICD9CM//250.00`, procedures
  `CPT4//`, drugs `MEDICATION//NDC//`, adds labs with values, uses no claim_id (claims grouped by
  time) and no enrollment rows.
  """
  rng = np.random.default_rng(seed)
  rows: list[dict[str, Any]] = []
  day0 = dt.date(start_year, 1, 1)
  span = (dt.date(start_year + years, 1, 1) - day0).days
  for p in range(num_patients):
    sid = 1000 + p
    age = int(rng.integers(20, 85))
    birth = dt.datetime(start_year - age, int(rng.integers(1, 13)), int(rng.integers(1, 28)))
    rows.append({"subject_id": sid, "time": None,
                 "code": "GENDER//F" if rng.random() < 0.5 else "GENDER//M"})
    rows.append({"subject_id": sid, "time": birth, "code": "MEDS_BIRTH"})
    if not foreign:
      lob = "MEDICARE" if age >= 65 else "COMMERCIAL"
      rows.append({"subject_id": sid, "time": _ts(day0, 0, 0), "code": f"ENROLLMENT//START//{lob}"})
      rows.append({"subject_id": sid, "time": _ts(day0, span - 1, 0),
                   "code": f"ENROLLMENT//END//{lob}"})
    patient_dx = list(rng.choice(_DX, size=3, replace=False))
    n_claims = claims_per_year * years
    for c, off in enumerate(sorted(rng.integers(0, span, size=n_claims))):
      t = _ts(day0, int(off), int(rng.integers(8, 17)))
      claim_id = f"{sid}-{c}"
      pharmacy = rng.random() < 0.25
      cost = float(np.round(rng.lognormal(4.5, 1.2), 2))
      base = {"subject_id": sid, "time": t}
      if not foreign:
        base["claim_id"] = claim_id
      if pharmacy:
        ndc = str(rng.choice(_NDC))
        rows.append({**base, "code": "CLAIM//PHARMACY"} if not foreign else
                    {**base, "code": "CLAIM//PHARMACY"})
        rows.append({**base, "code": f"MEDICATION//NDC//{ndc}" if foreign else f"NDC//{ndc}"})
      else:
        rows.append({**base, "code": "CLAIM//PROFESSIONAL"})
        rows.append({**base, "code": "POS//11"})
        for dx in rng.choice(patient_dx, size=int(rng.integers(1, 3)), replace=False):
          if foreign:
            code = f"DIAGNOSIS//ICD//10//{dx.replace('.', '')}"
          else:
            code = f"ICD10CM//{dx}"
          rows.append({**base, "code": code})
        cpt = str(rng.choice(_CPT))
        rows.append({**base, "code": f"CPT4//{cpt}" if foreign else f"CPT//{cpt}"})
        if foreign and rng.random() < 0.5:
          rows.append({**base, "code": "LAB//GLUCOSE", "numeric_value": float(rng.normal(110, 20))})
      rows.append({**base, "code": "COST//ALLOWED", "numeric_value": cost})
  return rows


def build_config(**overrides):
  """The builder's default config for tests: one worker, no progress bars, only the train split
  required non-empty (a world of a few patients often hashes none into tuning or held-out), then
  the overrides."""
  c = build_dataset_config.get_config()
  c.num_workers = 1
  c.progress = False
  c.required_splits = ("train",)
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


# Report entries that depend on how the input is laid out in files, not on the data.
LAYOUT_KEYS = ("meds_dir", "output_dir", "num_input_shards", "elapsed_s", "config")


def built_dataset(out: str):
  """Everything a build writes, independent of the number and names of the shards: the records
  by (kind, subject id) as (split, encoded record), vocab.json's text, report.json but
  LAYOUT_KEYS."""
  recs = {}
  for kind in (records.TIMELINE, records.TASK):
    for split in conventions.SPLITS:
      for rec in records.read_records(out, kind, split):
        recs[kind, int(rec["subject_id"])] = (split, records.encode(rec))
  with open(os.path.join(out, records.VOCAB_FILE)) as f:
    vocab = f.read()
  with open(os.path.join(out, records.REPORT_FILE)) as f:
    report = {k: v for k, v in json.load(f).items() if k not in LAYOUT_KEYS}
  return recs, vocab, report
