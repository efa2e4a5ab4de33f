"""Predictions in the layouts the MEDS ecosystem reads.

  WORKDIR/predictions/meds/MODEL.parquet   (binary tasks)
    meds-evaluation's PredictionSchema: subject_id int64, prediction_time timestamp[us],
    boolean_value bool (the label), predicted_boolean_value bool (probability >= threshold),
    predicted_boolean_probability float32. `meds-evaluation-cli predictions_path=...` reads it.

  WORKDIR/predictions/meds_cost/MODEL.parquet   (cost; our regression extension of the schema)
    subject_id, prediction_time, float_value float64 (the observed next-12-month cost),
    predicted_float_value float64 (dollars), and when the model has them
    predicted_float_value_capped, predicted_float_value_p10 / _p50 / _p90.
    `cost_to_meds` converts a predictions/cost/MODEL.parquet file (lmm_jax.eval.predictions).

  DIR/{split}/{sample}.parquet   (generated futures, the trajectory layout of MEDS-EIC-AR)
    MEDS data, one file per sample index: subject_id, prediction_time, time (prediction time +
    the generated clock), code (the token), numeric_value (a cost bin's mean dollars, a time
    gap's days, else null), sorted by subject, prediction time and time; one row per generated
    token at or after the prediction time. `write_futures` writes them from
    `lmm_jax.sampling.decode.Futures`; `FuturesWriter` collects them batch by batch (the
    generation binary: WORKDIR/futures/, `config.futures_samples` sample indices).

Rows are in the order of the split's task records (one per subject and prediction time); the
prediction times come from those records. Per-patient files live only under a run's workdir.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

from meds_evaluation.schema import PredictionSchema
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lmm_jax.data import records

MEDS_DIR = "meds"
MEDS_COST_DIR = "meds_cost"
FUTURES_DIR = "futures"
META_KEY = b"lmm_jax"
_FUTURES_SORT = [("subject_id", "ascending"), ("prediction_time", "ascending"),
                 ("time", "ascending")]


def predictions_path(workdir: str, model: str) -> str:
  return os.path.join(workdir, "predictions", MEDS_DIR, f"{model}.parquet")


def cost_predictions_path(workdir: str, model: str) -> str:
  return os.path.join(workdir, "predictions", MEDS_COST_DIR, f"{model}.parquet")


def prediction_times(data_dir: str, split: str, subject_id: np.ndarray) -> np.ndarray:
  """int64[N] prediction times (us) of the split's task records, checked against the order of
  the predicted subject ids (an ordered pass reads the records in this order). With one record
  per subject (the claims task) any order of the split's subjects is matched by id (several
  processes interleave their batches)."""
  sid, t = [], []
  for rec in records.read_records(data_dir, records.TASK, split):
    sid.append(int(rec["subject_id"]))
    t.append(int(rec["prediction_time"]))
  sid_R, t_R = np.asarray(sid, np.int64), np.asarray(t, np.int64)
  want = np.asarray(subject_id, np.int64)
  if np.array_equal(sid_R, want):
    return t_R
  order = np.argsort(sid_R, kind="stable")
  if (sid_R.size == want.size and np.unique(sid_R).size == sid_R.size
      and np.array_equal(sid_R[order], np.sort(want))):
    return t_R[order][np.searchsorted(sid_R[order], want)]
  raise ValueError(f"{data_dir}/task/{split}: the predicted rows ({len(subject_id)}) are not the "
                   f"split's {len(sid)} task records in order; predict the whole split")


def binary_table(subject_id: np.ndarray, time_us: np.ndarray, label: np.ndarray,
                 probability: np.ndarray, threshold: float = 0.5) -> pa.Table:
  """The PredictionSchema table of binary predictions (validated by meds-evaluation's schema)."""
  p = np.asarray(probability, np.float32)
  table = pa.table({
      "subject_id": pa.array(np.asarray(subject_id, np.int64)),
      "prediction_time": pa.array(np.asarray(time_us, np.int64), pa.int64()).cast(
          pa.timestamp("us")),
      "boolean_value": pa.array(np.asarray(label) == 1),
      "predicted_boolean_value": pa.array(p >= threshold),
      "predicted_boolean_probability": pa.array(p, pa.float32()),
  })
  return PredictionSchema.align(table)


def write_binary_predictions(workdir: str, model: str, data_dir: str, split: str,
                             subject_id: np.ndarray, label: np.ndarray, probability: np.ndarray,
                             meta: Mapping[str, Any]) -> str:
  """Writes predictions/meds/MODEL.parquet (atomically); returns its path."""
  table = binary_table(subject_id, prediction_times(data_dir, split, subject_id), label,
                       probability)
  table = table.replace_schema_metadata({META_KEY: (
      json.dumps(dict(meta), default=str).encode())})
  path = predictions_path(workdir, model)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  pq.write_table(table, tmp)
  os.replace(tmp, path)
  return path


def cost_table(subject_id: np.ndarray, time_us: np.ndarray, y_true: np.ndarray,
               y_pred: np.ndarray, extra: Mapping[str, np.ndarray]) -> pa.Table:
  """Cost predictions in the label layout: float_value / predicted_float_value (+ extra)."""
  cols = {"subject_id": pa.array(np.asarray(subject_id, np.int64)),
          "prediction_time": pa.array(np.asarray(time_us, np.int64), pa.int64()).cast(
              pa.timestamp("us")),
          "float_value": pa.array(np.asarray(y_true, np.float64)),
          "predicted_float_value": pa.array(np.asarray(y_pred, np.float64))}
  for name, x in extra.items():
    cols[f"predicted_float_value_{name}"] = pa.array(np.asarray(x, np.float64))
  return pa.table(cols)


def cost_to_meds(predictions_file: str, data_dir: str, out_file: str) -> str:
  """Writes the cost predictions file (predictions/cost/MODEL.parquet, split named in its
  metadata) in the MEDS label layout, with each row's prediction time; returns out_file."""
  table = pq.read_table(predictions_file)
  meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
  split = meta.get("split")
  if not split:
    raise ValueError(f"{predictions_file}: no split in its lmm_jax metadata")
  columns = {"capped": "y_pred_capped", "p10": "y_p10", "p50": "y_p50", "p90": "y_p90"}
  extra = {name: table.column(col).to_numpy() for name, col in columns.items()
           if col in table.column_names}
  return write_cost_table(out_file, data_dir, split, table.column("subject_id").to_numpy(),
                          table.column("y_true").to_numpy(), table.column("y_pred").to_numpy(),
                          extra, meta)


def write_cost_table(out_file: str, data_dir: str, split: str, subject_id: np.ndarray,
                     y_true: np.ndarray, y_pred: np.ndarray, extra: Mapping[str, np.ndarray],
                     meta: Mapping[str, Any]) -> str:
  """Writes cost (or float_value) predictions of the split's task records in the MEDS label
  layout (atomically), also with several records per subject; returns out_file."""
  out = cost_table(subject_id, prediction_times(data_dir, split, subject_id), y_true, y_pred,
                   extra)
  out = out.replace_schema_metadata({META_KEY: json.dumps(dict(meta), default=str).encode()})
  os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
  tmp = f"{out_file}.tmp-{os.getpid()}"
  pq.write_table(out, tmp)
  os.replace(tmp, out_file)
  return out_file


def futures_tables(tokens_RxT: np.ndarray, clock_RxT: np.ndarray, num_tokens_R: np.ndarray,
                   num_samples: int, subject_id_P: np.ndarray, time_us_P: np.ndarray,
                   vocab: Any, start_R: Optional[np.ndarray] = None,
                   max_samples: Optional[int] = None) -> list[pa.Table]:
  """One MEDS data table per sample index from sampled futures (row = patient * num_samples +
  sample, as `Futures`).

  start_R: days after the clock origin (the history's last token) where each row's prediction
  time is: the times are prediction time + (clock - start) and tokens before it are left out;
  None: the clock is in days after the prediction time. max_samples: the first sample indices
  only (all when None).
  """
  tokens_RxT, clock_RxT = np.asarray(tokens_RxT), np.asarray(clock_RxT, np.float64)
  num_tokens_R = np.asarray(num_tokens_R)
  if tokens_RxT.shape[0] != len(subject_id_P) * num_samples:
    raise ValueError(f"{tokens_RxT.shape[0]} future rows for {len(subject_id_P)} patients x "
                     f"{num_samples} samples")
  if start_R is not None:
    clock_RxT = clock_RxT - np.asarray(start_R, np.float64)[:, None]
  names = np.asarray(vocab.tokens, object)
  value_V = np.where(vocab.cost_value > 0, vocab.cost_value,
                     np.where(vocab.time_gap_days > 0, vocab.time_gap_days, np.nan))
  out = []
  for k in range(num_samples if max_samples is None else min(max_samples, num_samples)):
    rows = np.arange(len(subject_id_P)) * num_samples + k
    keep_RxT = np.arange(tokens_RxT.shape[1])[None, :] < num_tokens_R[rows][:, None]
    if start_R is not None:
      keep_RxT &= clock_RxT[rows] >= 0
    p_idx, t_idx = np.nonzero(keep_RxT)
    tok = tokens_RxT[rows][p_idx, t_idx]
    base = np.asarray(time_us_P, np.int64)[p_idx]
    time = base + np.round(clock_RxT[rows][p_idx, t_idx] * 86_400_000_000).astype(np.int64)
    value = value_V[tok].astype(np.float64)
    table = pa.table({
        "subject_id": pa.array(np.asarray(subject_id_P, np.int64)[p_idx]),
        "prediction_time": pa.array(base, pa.int64()).cast(pa.timestamp("us")),
        "time": pa.array(time, pa.int64()).cast(pa.timestamp("us")),
        "code": pa.array(names[tok].tolist(), pa.string()),
        "numeric_value": pa.array(value, pa.float32(), mask=np.isnan(value)),
    })
    out.append(table.sort_by(_FUTURES_SORT))
  return out


def write_futures(out_dir: str, split: str, futures: Any, subject_id_P: np.ndarray,
                  time_us_P: np.ndarray, vocab: Any) -> list[str]:
  """Writes OUT_DIR/{split}/{sample}.parquet (one per sample index); returns the paths."""
  tables = futures_tables(futures.tokens, futures.clock, futures.num_tokens, futures.num_samples,
                          subject_id_P, time_us_P, vocab)
  return _write_futures(out_dir, split, tables)


def _write_futures(out_dir: str, split: str, tables: list[pa.Table]) -> list[str]:
  os.makedirs(os.path.join(out_dir, split), exist_ok=True)
  paths = []
  for k, table in enumerate(tables):
    path = os.path.join(out_dir, split, f"{k}.parquet")
    tmp = f"{path}.tmp-{os.getpid()}"
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    paths.append(path)
  return paths


class FuturesWriter:
  """Collects the sampled futures of task records batch by batch (`zero_shot.simulate`'s
  on_futures) and writes OUT_DIR/{split}/{k}.parquet for the first `num_samples` sample indices
  on close(): the generated tokens at or after each record's prediction time, sorted by subject,
  prediction time and time. Holds the kept rows in memory (patients x new tokens x samples)."""

  def __init__(self, out_dir: str, split: str, vocab: Any, num_samples: int):
    if num_samples < 1:
      raise ValueError(f"futures_samples={num_samples}: write at least one sample index (or "
                       "none: do not make a FuturesWriter)")
    self.out_dir, self.split, self.vocab, self.num_samples = out_dir, split, vocab, num_samples
    self._tables: list[list[pa.Table]] = []

  def __call__(self, task_records: Any, futures: Any, start_R: np.ndarray) -> None:
    sid = np.array([int(r["subject_id"]) for r in task_records], np.int64)
    time_us = np.array([int(r["prediction_time"]) for r in task_records], np.int64)
    self._tables.append(futures_tables(
        futures.tokens, futures.clock, futures.num_tokens, futures.num_samples, sid, time_us,
        self.vocab, start_R=start_R, max_samples=self.num_samples))

  def close(self) -> dict[str, Any]:
    """Writes the files; returns {"dir", "files", "rows"} (rows per sample index)."""
    per_k = list(zip(*self._tables)) if self._tables else []
    tables = [pa.concat_tables(ts).sort_by(_FUTURES_SORT) for ts in per_k]
    paths = _write_futures(self.out_dir, self.split, tables)
    self._tables = []
    return {"dir": os.path.join(self.out_dir, self.split), "files": paths,
            "rows": [t.num_rows for t in tables]}
