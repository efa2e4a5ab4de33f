"""Predictions in the MEDS ecosystem's layouts: binary in meds-evaluation's PredictionSchema
(evaluated by meds-evaluation), cost in the same layout with float_value columns."""

import os

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from lmm_jax.data import meds_tasks
from lmm_jax.data import records
from lmm_jax.data.vocab import Vocabulary
from lmm_jax.eval import meds_outputs
from lmm_jax.eval import predictions
from lmm_jax.sampling import decode
from meds_evaluation.evaluate import evaluate_binary_classification
from meds_evaluation.schema import PredictionSchema


def test_binary_table_is_a_prediction_schema_table_meds_evaluation_scores():
  rng = np.random.default_rng(0)
  n = 40
  y = (np.arange(n) % 3 == 0).astype(np.int8)
  p = np.clip(0.6 * y + rng.uniform(0, 0.5, n), 0, 1)
  t = meds_outputs.binary_table(np.arange(n) // 2, 10**15 + np.arange(n) * 10**9, y, p)
  PredictionSchema.validate(t)
  assert t.column("predicted_boolean_value").to_pylist() == (p >= 0.5).tolist()
  result = evaluate_binary_classification(pl.from_arrow(t), samples_per_subject=1,
                                          resampling_seed=0)
  assert result


def test_cost_predictions_in_the_label_layout(tiny_data_dir, tmp_path):
  held = list(records.read_records(tiny_data_dir, records.TASK, "held_out"))
  sid = np.asarray([int(r["subject_id"]) for r in held], np.int64)
  y = np.asarray([float(r["cost_next"]) for r in held])
  path = predictions.write_cost_predictions(
      str(tmp_path), "m", sid, y, y * 0.9, y_pred_capped=np.minimum(y, 250_000.0),
      quantiles={"p10": y * 0.1, "p50": y * 0.5, "p90": y * 2}, meta={
          "kind": "finetuned", "data_dir": tiny_data_dir, "split": "held_out",
          "num_params": 1, "description": "test"})
  out = meds_outputs.cost_to_meds(path, tiny_data_dir, str(tmp_path / "meds_cost.parquet"))
  t = pq.read_table(out)
  assert t.column_names == ["subject_id", "prediction_time", "float_value",
                            "predicted_float_value", "predicted_float_value_capped",
                            "predicted_float_value_p10", "predicted_float_value_p50",
                            "predicted_float_value_p90"]
  np.testing.assert_allclose(t.column("float_value").to_numpy(), y)
  days = t.column("prediction_time").cast("int64").to_numpy() // meds_tasks.US_PER_DAY
  assert (days == np.asarray([int(r["index_day"]) for r in held])).all()
  # One record per subject: another order (processes interleaving batches) is matched by id;
  # a part of the split is not.
  times = meds_outputs.prediction_times(tiny_data_dir, "held_out", sid)
  np.testing.assert_array_equal(
      meds_outputs.prediction_times(tiny_data_dir, "held_out", sid[::-1].copy()), times[::-1])
  with pytest.raises(ValueError, match="not the split's"):
    meds_outputs.prediction_times(tiny_data_dir, "held_out", sid[1:].copy())
  assert os.path.exists(out)


def test_generated_futures_are_meds_data_with_a_prediction_time(tmp_path):
  entries = [{"token": t, "kind": k, "system": "X", "count": 1, "value": v}
             for t, k, v in (("[PAD]", "special", 0), ("[BOS]", "special", 0),
                             ("[EOS]", "special", 0), ("LAB//A", "other", 0),
                             ("TIME//7-30d", "time", 12.0), ("COST//BIN01", "cost", 250.0))]
  vocab = Vocabulary(entries)
  # 2 patients x 2 samples; row = patient * 2 + sample; 0 after each future's end.
  tokens = np.array([[3, 4, 3, 2], [5, 2, 0, 0], [3, 2, 0, 0], [4, 5, 3, 2]], np.int32)
  clock = np.array([[0, 12, 12, 12], [0.5, 0.5, 0, 0], [1, 1, 0, 0], [12, 12, 12.25, 12.25]])
  futures = decode.Futures(tokens, clock.astype(np.float32), np.array([4, 2, 2, 4]),
                           np.zeros(4, np.int8), num_samples=2)
  t0 = np.array([10**15, 2 * 10**15], np.int64)
  paths = meds_outputs.write_futures(str(tmp_path), "held_out", futures, np.array([7, 3]), t0,
                                     vocab)
  assert [os.path.basename(p) for p in paths] == ["0.parquet", "1.parquet"]
  s1 = pl.read_parquet(paths[1])
  assert s1.columns == ["subject_id", "prediction_time", "time", "code", "numeric_value"]
  assert s1["subject_id"].to_list() == [3, 3, 3, 3, 7, 7]   # sorted by subject
  assert s1.filter(pl.col("subject_id") == 3)["code"].to_list() == [
      "TIME//7-30d", "COST//BIN01", "LAB//A", "[EOS]"]
  assert s1.filter(pl.col("subject_id") == 7)["numeric_value"].to_list() == [250.0, None]
  first = s1.filter(pl.col("subject_id") == 3)
  assert (first["time"] - first["prediction_time"]).dt.total_hours().to_list() == [
      288, 288, 294, 294]


def test_futures_writer_keeps_tokens_from_the_prediction_time_and_the_first_samples(tmp_path):
  entries = [{"token": t, "kind": k, "system": "X", "count": 1, "value": v}
             for t, k, v in (("[PAD]", "special", 0), ("[BOS]", "special", 0),
                             ("[EOS]", "special", 0), ("LAB//A", "other", 0),
                             ("COST//BIN01", "cost", 250.0))]
  vocab = Vocabulary(entries)
  # Two batches of one patient x 3 samples; the clock is days after the last history token.
  tokens = np.array([[3, 4, 2], [4, 2, 0], [3, 3, 2]], np.int32)
  clock = np.array([[1, 3, 3], [2.5, 2.5, 0], [0, 0, 0]], np.float32)
  futures = decode.Futures(tokens, clock, np.array([3, 2, 3]), np.zeros(3, np.int8), 3)
  writer = meds_outputs.FuturesWriter(str(tmp_path / "futures"), "held_out", vocab, 2)
  day_us = 86_400_000_000
  # Patient 9's prediction time is 2 days after its last history token: the LAB//A at day 1
  # is before it and left out; patient 4's is at its last token.
  writer([{"subject_id": 9, "prediction_time": 100 * day_us}], futures,
         np.full(3, 2.0, np.float32))
  writer([{"subject_id": 4, "prediction_time": 50 * day_us}], futures, np.zeros(3, np.float32))
  out = writer.close()
  assert [os.path.basename(p) for p in out["files"]] == ["0.parquet", "1.parquet"]
  s0 = pl.read_parquet(out["files"][0])
  assert set(s0.columns) == {"subject_id", "time", "code", "numeric_value", "prediction_time"}
  assert s0["subject_id"].to_list() == [4, 4, 4, 9, 9]
  assert s0["code"].to_list() == ["LAB//A", "COST//BIN01", "[EOS]", "COST//BIN01", "[EOS]"]
  assert ((s0["time"] - s0["prediction_time"]).dt.total_hours().to_list()
          == [24, 72, 72, 24, 24])
  assert out["rows"] == [5, 4]   # sample 1: [4, 2] twice, patient 9's at +0.5 days
  with pytest.raises(ValueError, match="futures_samples=0"):
    meds_outputs.FuturesWriter(str(tmp_path), "held_out", vocab, 0)
