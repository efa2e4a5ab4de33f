"""Oracle rows: the synthetic world's expected values, the limit any model could reach.

The synthesizer writes `meds_dir/ground_truth/oracle.parquet` with subject_id, index_date,
expected_cost, expected_cost_capped and p_{condition} for each of conditions.CONDITION_NAMES; world
v2 adds the conditional median cost (median_cost, NMAE's best predictor) and the Monte-Carlo
standard errors (expected_cost_se, median_cost_se, p_{condition}_se), loaded when present.
`write_median_row` writes the "oracle_median" cost row (ORACLE_MEDIAN) from median_cost.
Rows are joined to the task records on (subject_id, index date); members without an oracle row are
counted and left out of the oracle files (their count shows in the tables' members column).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lmm_jax import conditions
from lmm_jax import conventions
from lmm_jax.baselines import features
from lmm_jax.data import records
from lmm_jax.eval import predictions as preds_io

ORACLE_FILE = os.path.join("ground_truth", "oracle.parquet")
ORACLE_MEDIAN = "oracle_median"   # the cost row of the conditional median


@dataclasses.dataclass
class OracleRows:
  rows: np.ndarray               # int64[M] positions (into the task data) of the matched members
  expected_cost: np.ndarray      # float64[M]
  expected_cost_capped: np.ndarray
  p_MxC: np.ndarray              # float64[M, C]
  notes: dict[str, int]
  # Present in world-v2 oracle files (None in older ones):
  median_cost: np.ndarray | None = None       # float64[M]: conditional median of the cost
  expected_cost_se: np.ndarray | None = None  # float64[M]: Monte-Carlo standard errors
  median_cost_se: np.ndarray | None = None
  p_se_MxC: np.ndarray | None = None          # float64[M, C]


def oracle_path(data_dir: str) -> str | None:
  """meds_dir/ground_truth/oracle.parquet from DATA_DIR/report.json, or None if absent."""
  report = os.path.join(data_dir, records.REPORT_FILE)
  if not os.path.exists(report):
    return None
  with open(report) as f:
    meds_dir = json.load(f).get("meds_dir")
  if not meds_dir:
    return None
  path = os.path.join(meds_dir, ORACLE_FILE)
  return path if os.path.exists(path) else None


def _days(column: pa.ChunkedArray, path: str) -> np.ndarray:
  """Days since 1970-01-01 of a date or timestamp column."""
  if pa.types.is_timestamp(column.type):
    column = pc.cast(column, pa.timestamp("s")).cast(pa.int64())
    return np.floor_divide(column.to_numpy(), 86_400).astype(np.int64)
  if pa.types.is_date(column.type):
    return pc.cast(column, pa.date32()).cast(pa.int32()).to_numpy().astype(np.int64)
  raise ValueError(f"{path}: column index_date has type {column.type}; expected a date or "
                   "timestamp")


def load(path: str, data: features.TaskData) -> OracleRows:
  table = pq.read_table(path)
  need = (["subject_id", "expected_cost", "expected_cost_capped"] +
          [f"p_{c}" for c in conditions.CONDITION_NAMES])
  missing = [c for c in need if c not in table.column_names]
  if missing:
    raise ValueError(f"{path}: missing column(s) {missing}")
  for name in need + (["index_date"] if "index_date" in table.column_names else []):
    if table.column(name).null_count:
      raise ValueError(f"{path}: column {name} has {table.column(name).null_count} null(s)")
  ids = table.column("subject_id").to_numpy().astype(np.int64)
  if "index_date" in table.column_names:
    keys = list(zip(ids.tolist(), _days(table.column("index_date"), path).tolist()))
    want = list(zip(data.subject_id.tolist(), data.index_day.astype(np.int64).tolist()))
  else:
    keys, want = ids.tolist(), data.subject_id.tolist()
  lookup = {}
  for j, k in enumerate(keys):
    if k in lookup:
      raise ValueError(f"{path}: duplicate oracle row for a (subject, index date) key")
    lookup[k] = j
  matched = [(i, lookup[k]) for i, k in enumerate(want) if k in lookup]
  notes = {}
  if len(matched) < len(want):
    notes["members without an oracle row"] = len(want) - len(matched)
  if not matched:
    raise ValueError(f"{path}: no oracle row matches any {data.split} member on subject_id and "
                     "index date")
  rows = np.array([i for i, _ in matched], np.int64)
  src = np.array([j for _, j in matched], np.int64)
  col = lambda name: table.column(name).to_numpy().astype(np.float64)[src]
  p = np.stack([col(f"p_{c}") for c in conditions.CONDITION_NAMES], axis=1)
  if np.any((p < 0) | (p > 1)) or not np.all(np.isfinite(p)):
    raise ValueError(f"{path}: p_* columns must be probabilities in [0, 1]")
  have = set(table.column_names)
  opt = lambda name: col(name) if name in have else None  # noqa: E731
  se_names = [f"p_{c}_se" for c in conditions.CONDITION_NAMES]
  p_se = np.stack([col(n) for n in se_names], axis=1) if set(se_names) <= have else None
  for name in ("median_cost", "expected_cost_se", "median_cost_se"):
    if name in have and table.column(name).null_count:
      raise ValueError(f"{path}: column {name} has {table.column(name).null_count} null(s)")
  return OracleRows(rows, col("expected_cost"), col("expected_cost_capped"), p, notes,
                    median_cost=opt("median_cost"), expected_cost_se=opt("expected_cost_se"),
                    median_cost_se=opt("median_cost_se"), p_se_MxC=p_se)


def write_median_row(workdir: str, data: features.TaskData, o: OracleRows,
                     meta: dict) -> str | None:
  """Writes predictions/cost/oracle_median.parquet (the conditional median, whose absolute
  error is the least any model can reach); None when the oracle file has no median_cost."""
  if o.median_cost is None:
    return None
  r = o.rows
  return preds_io.write_cost_predictions(
      workdir, ORACLE_MEDIAN, data.subject_id[r], data.cost_next[r], o.median_cost,
      y_pred_capped=np.minimum(o.median_cost, conventions.COST_CAP), meta=meta)
