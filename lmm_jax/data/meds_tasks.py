"""Task definitions: where a subject's prediction times come from, MEDS style.

A task record is one subject at one prediction time. `config.task` (the builder's config) names
its source, looked up in TASK_SOURCES:

  claims  the claims convention (default): one calendar index date for everyone, enrollment-based
          eligibility (`labels.exclusion`), next-12-month cost and chronic targets.
  labels  MEDS label files: `config.task_labels_dir/**/*.parquet` in the MEDS LabelSchema
          (`subject_id`, `prediction_time`, `boolean_value` / `integer_value` / `float_value` /
          `categorical_value`); one record per label row.
  aces    an ACES task config (`config.task_aces_config`, the MEDS-DEV format), extracted on the
          input data with the `es-aces` package into label files (`OUT/labels/`), then as `labels`.
  none    no task records: timelines only (pretraining, MEDS-DEV's unsupervised stage).

For a label row the history is every event at or before its `prediction_time` (per-event times,
not days), and the claims targets (`labels.compute`) are computed at the prediction day as well, so
the cost and chronic heads work on any task. The label's own values are the fields of the label
`meds_label` registered here: `prediction_time`, `boolean_value` (-1 when the row has none; the
binary head's target) and `float_value` (-inf when none, not NaN, so records compare equal;
the cost head regresses on it instead of the claims cost when the train records have it); claims
records carry the index date's midnight, -1 and -inf. A label directory holds one kind of value:
`integer_value` and `categorical_value` labels are refused (SUPPORTED_VALUES).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lmm_jax.data import events as events_lib
from lmm_jax.data import labels
from lmm_jax.data.fields import Field, FieldKind

CLAIMS, LABELS, ACES, NONE = "claims", "labels", "aces", "none"
US_PER_DAY = 86_400_000_000
LABELS_DIR = "labels"   # OUT/labels/: the label files an `aces` build extracted
NO_BOOLEAN = -1
NO_FLOAT = float("-inf")   # a record's float_value without a label (a label is finite)
BOOLEAN, FLOAT = "boolean_value", "float_value"
UNSUPPORTED_VALUES = ("integer_value", "categorical_value")
SUPPORTED_VALUES = (f"{BOOLEAN} (the binary head) or {FLOAT} (the cost head, a non-negative "
                    "amount)")


class TaskDefinitionError(ValueError):
  """A task's labels are missing, malformed or unusable (one line naming the file or the split)."""


@dataclasses.dataclass(frozen=True)
class PredictionWindow(labels.Window):
  """The window of one label row: the claims targets at its day plus the label's own values."""
  time_us: int = 0
  boolean_value: int = NO_BOOLEAN
  float_value: float = NO_FLOAT


@labels.register(
    Field("prediction_time", FieldKind.COVARIATE, "int64",
          doc="prediction time, microseconds since 1970-01-01 (claims: the index date's midnight)"),
    Field("boolean_value", FieldKind.TARGET, "int8",
          doc="the MEDS label's boolean_value: 0 / 1, -1 when the row has none (claims tasks)",
          batch_dtype="int32", batch_pad=NO_BOOLEAN),
    Field("float_value", FieldKind.TARGET, "float32",
          doc="the MEDS label's float_value, -inf when the row has none (claims tasks)",
          batch_dtype="float32", batch_pad=0.0))
def meds_label(ev: events_lib.SubjectEvents, w: labels.Window) -> dict[str, Any]:
  del ev
  if isinstance(w, PredictionWindow):
    return {"prediction_time": w.time_us, "boolean_value": w.boolean_value,
            "float_value": w.float_value}
  return {"prediction_time": w.index * US_PER_DAY, "boolean_value": NO_BOOLEAN,
          "float_value": NO_FLOAT}


# ---------------------------------------------------------------------------------------------
# Label files.


@dataclasses.dataclass
class TaskLabels:
  """Every label row, sorted by (subject, prediction time): what the builder's workers look up."""
  subject_id: np.ndarray     # int64[N]
  time_us: np.ndarray        # int64[N]
  boolean: np.ndarray        # int8[N] (NO_BOOLEAN where absent)
  source: str                # the labels directory (for messages)
  float_value: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))  # float64[N]

  def rows_of(self, subject_id: int) -> range:
    a = int(np.searchsorted(self.subject_id, subject_id, "left"))
    b = int(np.searchsorted(self.subject_id, subject_id, "right"))
    return range(a, b)

  def window(self, i: int) -> PredictionWindow:
    t = int(self.time_us[i])
    f = float(self.float_value[i]) if self.float_value.size else NO_FLOAT
    f = f if np.isfinite(f) else NO_FLOAT
    return PredictionWindow(t // US_PER_DAY, t, int(self.boolean[i]), f)

  @property
  def is_boolean(self) -> bool:
    return bool(np.any(self.boolean != NO_BOOLEAN))

  @property
  def is_float(self) -> bool:
    return bool(self.float_value.size and np.any(np.isfinite(self.float_value)))

  @property
  def value_kind(self) -> str | None:
    """The label value these rows carry (BOOLEAN / FLOAT), None when neither."""
    return BOOLEAN if self.is_boolean else FLOAT if self.is_float else None


def _boolean_column(table: pa.Table, path: str) -> np.ndarray:
  """int8[N] boolean_value: 0 / 1, NO_BOOLEAN where null or absent."""
  if "boolean_value" not in table.column_names:
    return np.full(table.num_rows, NO_BOOLEAN, np.int8)
  col = table.column("boolean_value")
  try:
    ints = pc.cast(col, pa.int8())
  except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
    raise TaskDefinitionError(f"{path}: column 'boolean_value' of type {col.type} is not a "
                              f"boolean ({e})") from e
  out = pc.fill_null(ints, NO_BOOLEAN).to_numpy(zero_copy_only=False).astype(np.int8)
  bad = (out != NO_BOOLEAN) & (out != 0) & (out != 1)
  if bad.any():
    raise TaskDefinitionError(f"{path}: column 'boolean_value' holds {int(out[bad][0])}; "
                              "expected true / false (or 0 / 1)")
  return out


def _float_column(table: pa.Table, path: str) -> np.ndarray:
  """float64[N] float_value, NaN where null or absent; an error for another type or inf."""
  if FLOAT not in table.column_names:
    return np.full(table.num_rows, np.nan)
  col = table.column(FLOAT)
  if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or
          pa.types.is_null(col.type) or pa.types.is_decimal(col.type)):
    raise TaskDefinitionError(f"{path}: column 'float_value' must be a number, got {col.type}")
  out = pc.cast(col, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
  if np.isinf(out).any():
    raise TaskDefinitionError(f"{path}: column 'float_value' holds an infinite value")
  return out.astype(np.float64)


def _refuse_unsupported_values(table: pa.Table, path: str) -> None:
  for col in UNSUPPORTED_VALUES:
    if col in table.column_names and table.column(col).null_count < table.num_rows:
      n = table.num_rows - table.column(col).null_count
      raise TaskDefinitionError(f"{path}: {n} label(s) in column {col!r}, which no head "
                                f"fine-tunes; label files may carry {SUPPORTED_VALUES}")


def read_labels(labels_dir: str) -> TaskLabels:
  """The label rows of `labels_dir/**/*.parquet` (MEDS LabelSchema); an error naming the file and
  column for a missing or mistyped column, or a null prediction_time."""
  paths = sorted(glob.glob(os.path.join(labels_dir, "**", "*.parquet"), recursive=True))
  if not paths:
    raise TaskDefinitionError(f"no label files (*.parquet) under {labels_dir}")
  sids, times, bools, floats = [], [], [], []
  for path in paths:
    try:
      table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
      raise TaskDefinitionError(f"{path}: unreadable parquet file: {e}") from e
    for col in ("subject_id", "prediction_time"):
      if col not in table.column_names:
        raise TaskDefinitionError(f"{path}: required column {col!r} of the MEDS LabelSchema is "
                                  "missing")
    if not pa.types.is_integer(table.schema.field("subject_id").type):
      raise TaskDefinitionError(f"{path}: column 'subject_id' must be integers, got "
                                f"{table.schema.field('subject_id').type}")
    pt = table.column("prediction_time")
    if not pa.types.is_timestamp(pt.type):
      raise TaskDefinitionError(f"{path}: column 'prediction_time' must be a timestamp, got "
                                f"{pt.type}")
    if pt.null_count:
      raise TaskDefinitionError(f"{path}: column 'prediction_time' has {pt.null_count} null "
                                "value(s); every label row needs a prediction time")
    sids.append(table.column("subject_id").to_numpy().astype(np.int64))
    times.append(pc.cast(pc.cast(pt, pa.timestamp("us", pt.type.tz)), pa.int64()).to_numpy())
    _refuse_unsupported_values(table, path)
    bools.append(_boolean_column(table, path))
    floats.append(_float_column(table, path))
  sid, t = np.concatenate(sids), np.concatenate(times)
  order = np.lexsort((t, sid))
  out = TaskLabels(sid[order], t[order], np.concatenate(bools)[order], labels_dir,
                   np.concatenate(floats)[order])
  if out.is_boolean and out.is_float:
    raise TaskDefinitionError(f"{labels_dir}: both boolean_value and float_value labels; a task "
                              "has one kind of label value (one label directory per task)")
  missing = int(np.isnan(out.float_value).sum())
  if out.is_float and missing:
    raise TaskDefinitionError(f"{labels_dir}: {missing} of {out.float_value.size} label rows have "
                              "no float_value; a regression task needs a value on every row")
  return out


# ---------------------------------------------------------------------------------------------
# Refusing degenerate tasks (after pass 2, from the report's counts).


def check_task(report: Mapping[str, Any], config: Mapping[str, Any]) -> None:
  """Fails a label task no model could learn or be evaluated on, in one sentence saying why and
  what to do: a required split without examples or (boolean labels) without positives or
  negatives, or histories nearly all empty at their prediction times."""
  name = report.get("task_name", config["task"])
  required = tuple(config["required_splits"])
  ex, pos = report["task_examples"], report.get("task_positives")
  for s in required:
    if not ex[s]:
      raise TaskDefinitionError(
          f"task {name} has no examples in split {s} ({report['patients'][s]} patients, "
          f"{report.get('task_label_rows_without_subject', 0)} label rows of subjects not in the "
          "data): check the label files' subject_ids, or set required_splits")
    if pos is not None:
      if not pos[s] or pos[s] == ex[s]:
        kind = "positive" if not pos[s] else "negative"
        raise TaskDefinitionError(
            f"task {name} has no {kind} labels in split {s} ({pos[s]} positives of {ex[s]} "
            "examples), so it cannot be trained or evaluated there: choose a task with both "
            "classes in every split, another split assignment (split_source='hash'), or set "
            "required_splits")
  total = sum(ex.values())
  empty = sum(report["task_empty_histories"].values())
  cap = float(config["max_share_empty_histories"])
  if total and empty / total > cap:
    raise TaskDefinitionError(
        f"task {name}: {empty} of {total} examples ({empty / total:.0%}) have no event before "
        f"their prediction time, above max_share_empty_histories={cap}: the labels' "
        "prediction_time values likely precede the data (another date shift or time zone?)")


def check_cost_target(data_dir: str, cost_next_N: np.ndarray) -> None:
  """The cost task needs cost: refuses a build whose data has no cost rows, or whose train cost
  targets are all zero, naming the cost code (from report.json) and what to do."""
  report_path = os.path.join(data_dir, "report.json")
  report: dict[str, Any] = {}
  if os.path.exists(report_path):  # hand-made record directories (tests) have none
    with open(report_path, encoding="utf-8") as f:
      report = json.load(f)
  code = report.get("config", {}).get("cost_code", "COST//ALLOWED")
  if "rows_by_system" in report and not report["rows_by_system"].get("COST", 0):
    raise TaskDefinitionError(
        f"no cost events (`{code}`) in {report.get('meds_dir', data_dir)}: the cost task's "
        f"target is zero for every record of {data_dir}; fine-tune a task the data has labels "
        "for (binary, with a MEDS label or ACES task), or build from data with cost rows")
  if not np.any(np.asarray(cost_next_N) > 0):
    raise TaskDefinitionError(
        f"all {len(cost_next_N)} train cost targets of {data_dir} are zero (no `{code}` row "
        "after any prediction time): check the index date or the task's prediction times")


def check_float_target(data_dir: str, float_value_N: np.ndarray) -> None:
  """The cost head on float_value labels: every train record labelled, none negative (its losses
  model non-negative amounts), not all zero."""
  y = np.asarray(float_value_N, np.float64)
  if not np.isfinite(y).all():
    raise TaskDefinitionError(f"{data_dir}: {int((~np.isfinite(y)).sum())} of {y.size} train "
                              "records have no float_value label; rebuild from label files with a "
                              "float_value on every row")
  if (y < 0).any():
    raise TaskDefinitionError(
        f"{data_dir}: {int((y < 0).sum())} of {y.size} train float_value labels are negative "
        f"(min {y.min():.4g}); the cost head regresses non-negative amounts (Tweedie, Poisson, "
        "log1p losses): shift or transform the labels")
  if not (y > 0).any():
    raise TaskDefinitionError(f"{data_dir}: all {y.size} train float_value labels are zero; "
                              "nothing to regress")
