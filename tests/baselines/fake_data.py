"""A small hand-made dataset (vocab.json, report.json, task shards, oracle) with known signal.

Members with a prevalent diabetes code cost more next year and keep diabetes coded; this lets the
tests check that fitted baselines beat the trivial ones without the synthesizer.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lmm_jax import conditions
from lmm_jax import conventions
from lmm_jax.data import records
from lmm_jax.data.vocab import Vocabulary

TOKENS = [
    ("[PAD]", "special", ""), ("[BOS]", "special", ""), ("[EOS]", "special", ""),
    ("GENDER//F", "demographic", "GENDER"), ("GENDER//M", "demographic", "GENDER"),
    ("TIME//0-30d", "time", "TIME"),
    ("ICD10CM//E11.9", "diagnosis", "ICD10CM"), ("ICD10CM//I10", "diagnosis", "ICD10CM"),
    ("ICD10CM//I50.22", "diagnosis", "ICD10CM"), ("ICD10CM//J45.909", "diagnosis", "ICD10CM"),
    ("ICD10CM//Z00.00", "diagnosis", "ICD10CM"),
    ("CPT//99213", "procedure", "CPT"), ("NDC//00002143380", "drug", "NDC"),
    ("COST//BIN01", "cost", "COST"), ("COST//BIN05", "cost", "COST"),
    ("CLAIM//PROFESSIONAL", "claim", "CLAIM"),
]
DX = {"E119": 6, "I10": 7, "I5022": 8, "J45909": 9, "Z0000": 10}
BASE_DAY = 19_000
DIABETES = conditions.CONDITION_NAMES.index("diabetes_t2")


def make_member(rng: np.random.Generator, subject_id: int,
                zero_cost: bool = False) -> tuple[dict, dict]:
  """A task record and its oracle row."""
  sex = int(rng.integers(1, 3))
  lob = int(rng.integers(1, 4))
  age = float(rng.integers(20, 90))
  diabetic = rng.random() < 0.3 + 0.3 * (age > 60)
  dx = ["Z0000"] + (["E119"] if diabetic else []) + (["I10"] if rng.random() < 0.4 else [])
  if diabetic and rng.random() < 0.3:
    dx.append("I5022")
  index_day = BASE_DAY + 400
  tokens, days = [1, 3 if sex == 1 else 4], [BASE_DAY, BASE_DAY]
  for k in range(int(rng.integers(1, 6))):
    day = BASE_DAY + 50 + 60 * k
    tokens += [5, 15] + [DX[d] for d in dx] + [11, 13 if not diabetic else 14]
    days += [day] * (4 + len(dx))
  expected = 2000.0 + 8000.0 * diabetic + 6000.0 * ("I5022" in dx) + 50.0 * age
  cost_next = 0.0 if zero_cost else float(rng.gamma(1.0, expected))
  cond_prior = conditions.condition_flags(dx)
  p = np.clip(0.1 + 0.8 * cond_prior, 0, 1) * 0.9
  cond_next = (rng.random(conditions.NUM_CONDITIONS) < p).astype(np.uint8)
  record = {
      "subject_id": np.int64(subject_id), "tokens": np.asarray(tokens, np.int32),
      "days": np.asarray(days, np.int32), "age": np.full(len(tokens), age - 1, np.float32),
      "prefix_len": np.int32(2), "index_day": np.int32(index_day), "sex": np.int8(sex),
      "lob": np.int8(lob), "age_at_index": np.float32(age),
      "cost_next": np.float32(cost_next),
      "cost_next_capped": np.float32(min(cost_next, conventions.COST_CAP)),
      "cost_prior": np.float32(expected * rng.uniform(0.5, 1.5)),
      "cond_next": cond_next, "cond_prior": cond_prior, "dx_prior": dx,
      "prediction_time": np.int64(index_day) * 86_400_000_000, "boolean_value": np.int8(-1),
      "float_value": np.float32(-np.inf),
  }
  oracle = {"subject_id": subject_id, "index_day": index_day, "expected_cost": expected,
            "expected_cost_capped": min(expected, conventions.COST_CAP),
            **{f"p_{c}": float(p[j]) for j, c in enumerate(conditions.CONDITION_NAMES)}}
  return record, oracle


def write_dataset(root: str, sizes=(("train", 300), ("tuning", 80), ("held_out", 120)),
                  seed: int = 0, with_oracle: bool = True, zero_cost: bool = False,
                  with_median: bool = False) -> str:
  """Writes DATA_DIR (returned) and a MEDS dir holding only ground_truth/oracle.parquet.

  zero_cost: every cost target is zero (as real MEDS data without cost events); with_median: the
  oracle carries a median_cost column (the exponential's median, ln 2 x the mean).
  """
  rng = np.random.default_rng(seed)
  data_dir = os.path.join(root, "data")
  meds_dir = os.path.join(root, "meds")
  entries = [{"token": t, "kind": k, "system": s, "count": 1} for t, k, s in TOKENS]
  Vocabulary(entries).save(os.path.join(data_dir, records.VOCAB_FILE))
  with open(os.path.join(data_dir, records.REPORT_FILE), "w") as f:
    json.dump({"meds_dir": meds_dir}, f)
  oracle_rows = []
  next_id = 1000
  for split, n in sizes:
    path = os.path.join(data_dir, records.TASK, records.shard_name(split, 0, 1))
    with records.ShardWriter(path) as w:
      for _ in range(n):
        rec, orow = make_member(rng, next_id, zero_cost)
        if with_median:
          orow["median_cost"] = np.log(2.0) * orow["expected_cost"]
        next_id += int(rng.integers(1, 50))
        w.write(rec)
        oracle_rows.append(orow)
  records.write_manifest(data_dir, vocab_size=len(entries))
  if with_oracle:
    table = pa.table({k: [r[k] for r in oracle_rows] for k in oracle_rows[0] if k != "index_day"})
    days = pa.array([r["index_day"] for r in oracle_rows], pa.int32()).cast(pa.date32())
    table = table.append_column("index_date", days)
    os.makedirs(os.path.join(meds_dir, "ground_truth"), exist_ok=True)
    pq.write_table(table, os.path.join(meds_dir, "ground_truth", "oracle.parquet"))
  return data_dir
