"""Label tasks on hand-made MEDS data: label files in the MEDS LabelSchema, one record per
(subject, prediction time), histories cut at the prediction time to the microsecond, clear
errors for malformed or degenerate labels."""

import datetime as dt
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmm_jax.data import build
from lmm_jax.data import meds_tasks
from lmm_jax.data import records
from lmm_jax.data.vocab import Vocabulary
from tests.data import meds_factory as mf

T0 = dt.datetime(2150, 3, 1, 8, 0)


def _rows(sid: int) -> list[dict]:
  """A patient born 2100 with labs at T0, T0 + 2h and T0 + 1 day, and a death at T0 + 3 days."""
  return [{"subject_id": sid, "time": None, "code": "GENDER//F"},
          {"subject_id": sid, "time": dt.datetime(2100, 1, 1), "code": "MEDS_BIRTH"},
          {"subject_id": sid, "time": T0, "code": "LAB//GLUCOSE", "numeric_value": 5.0},
          {"subject_id": sid, "time": T0 + dt.timedelta(hours=2), "code": "LAB//SODIUM"},
          {"subject_id": sid, "time": T0 + dt.timedelta(days=1), "code": "LAB//POTASSIUM"},
          {"subject_id": sid, "time": T0 + dt.timedelta(days=3), "code": "MEDS_DEATH"}]


def _world(tmp_path, n=6):
  rows = [r for sid in range(1, n + 1) for r in _rows(sid)]
  return mf.write_meds(str(tmp_path / "meds"), rows,
                       splits={s: ("train", "tuning", "held_out")[s % 3] for s in range(1, n + 1)})


def _labels(tmp_path, table: pa.Table, name="labels") -> str:
  d = tmp_path / name
  os.makedirs(d, exist_ok=True)
  pq.write_table(table, str(d / "part-0.parquet"))
  return str(d)


def _label_table(times, values, n=6):
  sid = [s for s in range(1, n + 1) for _ in times]
  return pa.table({"subject_id": pa.array(sid, pa.int64()),
                   "prediction_time": pa.array([t for _ in range(n) for t in times],
                                               pa.timestamp("us")),
                   "boolean_value": pa.array([bool(v ^ (s % 2)) for s in range(1, n + 1)
                                              for v in values], pa.bool_())})


def _build(tmp_path, labels_dir, **kw):
  cfg = mf.build_config(min_code_count=1, task="labels", task_labels_dir=labels_dir, **kw)
  out = str(tmp_path / "out")
  return build.build_dataset(_world(tmp_path), out, cfg), out


def test_one_record_per_label_row_with_history_through_the_prediction_time(tmp_path):
  # Prediction at T0 + 1h: the glucose row (T0) is history, sodium (T0 + 2h) is not; at T0 + 2h
  # the sodium row is included (at or before), potassium (next day) is not.
  times = [T0 + dt.timedelta(hours=1), T0 + dt.timedelta(hours=2)]
  report, out = _build(tmp_path, _labels(tmp_path, _label_table(times, [True, False])))
  assert report["task_examples"] == {"train": 4, "tuning": 4, "held_out": 4}
  assert report["task_positives"] == {"train": 2, "tuning": 2, "held_out": 2}
  vocab = Vocabulary.load(os.path.join(out, records.VOCAB_FILE))
  name = lambda ids: [vocab.tokens[i] for i in ids]
  recs = list(records.read_records(out, records.TASK, "train"))
  by_time = {int(r["prediction_time"]): r for r in recs if int(r["subject_id"]) == 3}
  early, late = (by_time[int(t.timestamp() * 1e6)] for t in times)
  assert "LAB//GLUCOSE" in name(early["tokens"]) and "LAB//SODIUM" not in name(early["tokens"])
  assert "LAB//SODIUM" in name(late["tokens"]) and "LAB//POTASSIUM" not in name(late["tokens"])
  assert "DEATH" not in name(late["tokens"]) and "[EOS]" not in name(late["tokens"])
  assert early["boolean_value"] == 0 and late["boolean_value"] == 1  # subject 3: flipped
  assert early["index_day"] == (T0 - dt.datetime(1970, 1, 1)).days


@pytest.mark.parametrize("table,match", [
    (pa.table({"subject_id": [1]}), "required column 'prediction_time'"),
    (pa.table({"subject_id": [1], "prediction_time": ["2150-01-01"]}), "must be a timestamp"),
    (pa.table({"subject_id": pa.array([1]), "prediction_time": pa.array([None],
                                                                        pa.timestamp("us"))}),
     "1 null"),
    (pa.table({"subject_id": [1], "prediction_time": pa.array([T0], pa.timestamp("us")),
               "boolean_value": [7]}), "holds 7"),
])
def test_malformed_label_files_are_named(tmp_path, table, match):
  d = _labels(tmp_path, table)
  with pytest.raises(meds_tasks.TaskDefinitionError, match=match) as e:
    meds_tasks.read_labels(d)
  assert "part-0.parquet" in str(e.value)


def test_degenerate_label_tasks_are_refused(tmp_path):
  with pytest.raises(meds_tasks.TaskDefinitionError, match="no label files"):
    meds_tasks.read_labels(str(tmp_path))
  # All negative: no positives in any split.
  table = _label_table([T0 + dt.timedelta(hours=1)], [False])
  table = table.set_column(2, "boolean_value", pa.array([False] * table.num_rows))
  with pytest.raises(meds_tasks.TaskDefinitionError, match="no positive labels in split train"):
    _build(tmp_path, _labels(tmp_path, table, "neg"))
  # Labels of subjects the data lacks: no examples.
  other = table.set_column(0, "subject_id", pa.array([99] * table.num_rows, pa.int64()))
  with pytest.raises(meds_tasks.TaskDefinitionError, match=r"no examples in split train.* 6 "
                     "label rows of subjects not in the data"):
    _build(tmp_path, _labels(tmp_path, other, "other"))
  # Prediction times before any event: histories empty.
  early = _label_table([dt.datetime(2120, 1, 1)], [True])
  with pytest.raises(meds_tasks.TaskDefinitionError, match="6 of 6 examples .* no event"):
    _build(tmp_path, _labels(tmp_path, early, "early"))
  with pytest.raises(ValueError, match="needs --config.task_labels_dir"):
    _build(tmp_path, "")


def _float_table(times, n=6, **extra):
  sid = [s for s in range(1, n + 1) for _ in times]
  cols = {"subject_id": pa.array(sid, pa.int64()),
          "prediction_time": pa.array([t for _ in range(n) for t in times], pa.timestamp("us")),
          "float_value": pa.array([10.0 * s + i for s in range(1, n + 1)
                                   for i in range(len(times))], pa.float64())}
  return pa.table({**cols, **extra})


def test_float_value_labels_become_the_records_float_value(tmp_path):
  times = [T0 + dt.timedelta(hours=1), T0 + dt.timedelta(hours=2)]
  # The MEDS LabelSchema's other columns may be present, all null.
  nulls = {"boolean_value": pa.nulls(12, pa.bool_()), "integer_value": pa.nulls(12, pa.int64()),
           "categorical_value": pa.nulls(12, pa.string())}
  report, out = _build(tmp_path, _labels(tmp_path, _float_table(times, **nulls)))
  assert report["task_label_value"] == "float_value" and "task_positives" not in report
  recs = list(records.read_records(out, records.TASK, "train"))
  assert sorted((int(r["subject_id"]), float(r["float_value"])) for r in recs) == [
      (3, 30.0), (3, 31.0), (6, 60.0), (6, 61.0)]
  assert all(r["boolean_value"] == meds_tasks.NO_BOOLEAN for r in recs)
  # A boolean task's records have no float_value.
  _, out2 = _build(tmp_path / "b", _labels(tmp_path, _label_table(times, [True, False]), "bool"))
  assert all(r["float_value"] == meds_tasks.NO_FLOAT
             for r in records.read_records(out2, records.TASK, "train"))


@pytest.mark.parametrize("extra,match", [
    ({"integer_value": pa.array([1] + [None] * 5, pa.int64())},
     r"1 label\(s\) in column 'integer_value', which no head fine-tunes; label files may carry "
     r"boolean_value \(the binary head\) or float_value"),
    ({"categorical_value": pa.array(["a"] * 6)}, "6 label.* 'categorical_value'"),
    ({"boolean_value": pa.array([True] * 6)}, "both boolean_value and float_value labels"),
])
def test_other_label_value_types_are_refused_saying_what_is_supported(tmp_path, extra, match):
  d = _labels(tmp_path, _float_table([T0], **extra))
  with pytest.raises(meds_tasks.TaskDefinitionError, match=match) as e:
    meds_tasks.read_labels(d)
  assert "\n" not in str(e.value)


def test_float_labels_missing_on_some_rows_are_refused(tmp_path):
  table = _float_table([T0])
  table = table.set_column(2, "float_value", pa.array([1.0, None, 3.0, 4.0, 5.0, 6.0]))
  with pytest.raises(meds_tasks.TaskDefinitionError, match="1 of 6 label rows have no float"):
    meds_tasks.read_labels(_labels(tmp_path, table))
  table = table.set_column(2, "float_value", pa.array(["x"] * 6))
  with pytest.raises(meds_tasks.TaskDefinitionError, match="'float_value' must be a number"):
    meds_tasks.read_labels(_labels(tmp_path, table, "s"))
