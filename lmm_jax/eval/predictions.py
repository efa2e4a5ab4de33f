"""The predictions files every evaluated model writes, and the only input of the paper tables.

  WORKDIR/predictions/cost/MODEL.parquet
    subject_id int64, y_true float64 (next-12-month allowed cost, uncapped),
    y_pred float64 (dollars),
    optional y_pred_capped (the model's prediction of the $250k-capped target),
    optional y_p10 / y_p50 / y_p90 (quantiles of the uncapped cost)
  WORKDIR/predictions/chronic/MODEL.parquet
    subject_id int64 and, per condition c of lmm_jax.conditions.CONDITION_NAMES:
    {c}_true uint8 (coded in the target window), {c}_pred float64 (probability),
    {c}_prior uint8 (coded before the index date; 0 marks the members at risk of a new onset)

The parquet schema carries a JSON key-value entry `lmm_jax` with: model, kind (baseline, oracle,
finetuned, zero-shot), data_dir, split, num_members, num_params (int or null), description, and
task (cost/chronic). Files are written to a temporary name and renamed, so a reader never sees a
partial file. Per-patient files live only under a run's workdir; nothing here logs identifiers.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lmm_jax import conditions

COST, CHRONIC = "cost", "chronic"
TASKS = (COST, CHRONIC)
KINDS = ("baseline", "oracle", "finetuned", "zero-shot")
META_KEY = b"lmm_jax"
QUANTILES = ("p10", "p50", "p90")
_REQUIRED_META = ("kind", "data_dir", "split", "num_params", "description")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def predictions_path(workdir: str, task: str, model: str) -> str:
  if task not in TASKS:
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
  if not _MODEL_NAME.match(model):
    raise ValueError(f"model name {model!r} must match {_MODEL_NAME.pattern} (it is a file name)")
  return os.path.join(workdir, "predictions", task, f"{model}.parquet")


def _check_meta(meta: Mapping[str, Any]) -> None:
  missing = [k for k in _REQUIRED_META if k not in meta]
  if missing:
    raise ValueError(f"predictions metadata lacks {missing}; required: {list(_REQUIRED_META)}")
  if meta["kind"] not in KINDS:
    raise ValueError(f"metadata kind {meta['kind']!r} is not one of {KINDS}")
  if meta["num_params"] is not None and not isinstance(meta["num_params"], (int, np.integer)):
    raise ValueError(f"metadata num_params must be an int or None, got {meta['num_params']!r}")


def _subject_ids(subject_id) -> np.ndarray:
  ids = np.asarray(subject_id)
  if ids.ndim != 1 or ids.size == 0:
    raise ValueError(f"subject_id must be a non-empty 1-D array, got shape {ids.shape}")
  if not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"subject_id must be integers, got dtype {ids.dtype}")
  ids = ids.astype(np.int64)
  if np.unique(ids).size != ids.size:
    raise ValueError(f"subject_id has {ids.size - np.unique(ids).size} duplicate(s)")
  return ids


def _column(name: str, x, n: int) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.shape != (n,):
    raise ValueError(f"column {name} has shape {x.shape}, expected ({n},)")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"column {name} has {int(np.sum(~np.isfinite(x)))} non-finite value(s)")
  return x


def _write(path: str, table: pa.Table, meta: Mapping[str, Any]) -> str:
  table = table.replace_schema_metadata({META_KEY: json.dumps(dict(meta), default=_json_default)})
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  pq.write_table(table, tmp)
  os.replace(tmp, path)
  return path


def _json_default(x):
  if isinstance(x, np.generic):
    return x.item()
  raise TypeError(f"cannot store {type(x)} in predictions metadata")


def write_cost_predictions(workdir: str, model: str, subject_id, y_true, y_pred, *,
                           meta: Mapping[str, Any], y_pred_capped=None,
                           quantiles: Mapping[str, Any] | None = None) -> str:
  """Writes predictions/cost/MODEL.parquet under workdir; returns its path.

  meta needs kind, data_dir, split, num_params, description (model, task and num_members are
  filled in). quantiles maps "p10"/"p50"/"p90" to arrays of dollars.
  """
  _check_meta(meta)
  path = predictions_path(workdir, COST, model)
  ids = _subject_ids(subject_id)
  n = ids.size
  cols = {"subject_id": pa.array(ids, pa.int64()),
          "y_true": pa.array(_column("y_true", y_true, n)),
          "y_pred": pa.array(_column("y_pred", y_pred, n))}
  if y_pred_capped is not None:
    cols["y_pred_capped"] = pa.array(_column("y_pred_capped", y_pred_capped, n))
  for q, values in (quantiles or {}).items():
    if q not in QUANTILES:
      raise ValueError(f"unknown quantile {q!r}; expected one of {QUANTILES}")
    cols[f"y_{q}"] = pa.array(_column(f"y_{q}", values, n))
  full = dict(meta, model=model, task=COST, num_members=n)
  return _write(path, pa.table(cols), full)


def write_chronic_predictions(workdir: str, model: str, subject_id, y_true, y_pred, y_prior, *,
                              meta: Mapping[str, Any],
                              condition_names: Sequence[str] = conditions.CONDITION_NAMES) -> str:
  """Writes predictions/chronic/MODEL.parquet; y_true, y_pred, y_prior are [N, C] arrays."""
  _check_meta(meta)
  conditions.index_of(condition_names)  # a clear error for an unknown condition
  path = predictions_path(workdir, CHRONIC, model)
  ids = _subject_ids(subject_id)
  n, c = ids.size, len(condition_names)
  y_true, y_prior = np.asarray(y_true), np.asarray(y_prior)
  y_pred = np.asarray(y_pred, np.float64)
  for name, x in (("y_true", y_true), ("y_pred", y_pred), ("y_prior", y_prior)):
    if x.shape != (n, c):
      raise ValueError(f"{name} has shape {x.shape}, expected ({n}, {c})")
  for name, x in (("y_true", y_true), ("y_prior", y_prior)):
    bad = ~np.isin(x, (0, 1))
    if bad.any():
      col = condition_names[int(np.argwhere(bad)[0][1])]
      raise ValueError(f"{name} must be 0/1; {int(bad.sum())} other value(s), first in {col}")
  bad = ~np.isfinite(y_pred) | (y_pred < 0) | (y_pred > 1)
  if bad.any():
    col = condition_names[int(np.argwhere(bad)[0][1])]
    raise ValueError(f"y_pred must be probabilities in [0, 1]; {int(bad.sum())} value(s) outside, "
                     f"first in {col}_pred")
  cols = {"subject_id": pa.array(ids, pa.int64())}
  for j, name in enumerate(condition_names):
    cols[f"{name}_true"] = pa.array(y_true[:, j].astype(np.uint8))
    cols[f"{name}_pred"] = pa.array(y_pred[:, j])
    cols[f"{name}_prior"] = pa.array(y_prior[:, j].astype(np.uint8))
  full = dict(meta, model=model, task=CHRONIC, num_members=n)
  return _write(path, pa.table(cols), full)


@dataclasses.dataclass
class CostPredictions:
  path: str
  meta: dict
  subject_id: np.ndarray        # int64[N]
  y_true: np.ndarray            # float64[N]
  y_pred: np.ndarray            # float64[N]
  y_pred_capped: np.ndarray | None
  quantiles: dict[str, np.ndarray]

  @property
  def model(self) -> str:
    return self.meta["model"]


@dataclasses.dataclass
class ChronicPredictions:
  path: str
  meta: dict
  subject_id: np.ndarray        # int64[N]
  conditions: tuple[str, ...]   # C names, in CONDITION_NAMES order
  y_true: np.ndarray            # uint8[N, C]
  y_pred: np.ndarray            # float64[N, C]
  y_prior: np.ndarray           # uint8[N, C]

  @property
  def model(self) -> str:
    return self.meta["model"]


def read_meta(path: str) -> dict:
  schema = pq.read_schema(path)
  raw = (schema.metadata or {}).get(META_KEY)
  if raw is None:
    raise ValueError(f"{path}: no `lmm_jax` metadata in the parquet schema; not a predictions "
                     "file written by lmm_jax.eval.predictions")
  meta = json.loads(raw)
  try:
    _check_meta(meta)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from e
  return meta


def _read_columns(path: str, required: Sequence[str]) -> pa.Table:
  table = pq.read_table(path)
  missing = [c for c in required if c not in table.column_names]
  if missing:
    raise ValueError(f"{path}: missing column(s) {missing}")
  for name in table.column_names:
    if table.column(name).null_count:
      raise ValueError(f"{path}: column {name} has {table.column(name).null_count} null(s)")
  return table


def read_cost_predictions(path: str) -> CostPredictions:
  meta = read_meta(path)
  table = _read_columns(path, ("subject_id", "y_true", "y_pred"))
  col = lambda name: table.column(name).to_numpy().astype(np.float64)
  capped = col("y_pred_capped") if "y_pred_capped" in table.column_names else None
  quantiles = {q: col(f"y_{q}") for q in QUANTILES if f"y_{q}" in table.column_names}
  return CostPredictions(path, meta, _subject_ids(table.column("subject_id").to_numpy()),
                         col("y_true"), col("y_pred"), capped, quantiles)


def read_chronic_predictions(path: str) -> ChronicPredictions:
  """Reads the conditions present in the file (in CONDITION_NAMES order)."""
  meta = read_meta(path)
  names = [c for c in conditions.CONDITION_NAMES if f"{c}_pred" in pq.read_schema(path).names]
  if not names:
    raise ValueError(f"{path}: no `{{condition}}_pred` columns of any known condition")
  required = ["subject_id"] + [f"{c}_{s}" for c in names for s in ("true", "pred", "prior")]
  table = _read_columns(path, required)
  stack = lambda suffix, dtype: np.stack(
      [table.column(f"{c}_{suffix}").to_numpy().astype(dtype) for c in names], axis=1)
  return ChronicPredictions(path, meta, _subject_ids(table.column("subject_id").to_numpy()),
                            tuple(names), stack("true", np.uint8), stack("pred", np.float64),
                            stack("prior", np.uint8))


def find_predictions(runs_dir: str) -> dict[str, list[str]]:
  """Sorted paths of every predictions/{cost,chronic}/*.parquet below runs_dir (recursively)."""
  if not os.path.isdir(runs_dir):
    raise FileNotFoundError(f"runs_dir {runs_dir!r} is not a directory")
  found = {}
  for task in TASKS:
    pattern = os.path.join(runs_dir, "**", "predictions", task, "*.parquet")
    found[task] = sorted(glob.glob(pattern, recursive=True))
  return found
