"""Predictions in the MEDS ecosystem's layouts: binary in meds-evaluation's PredictionSchema
(evaluated by meds-evaluation), cost in the same layout with float_value columns."""

import os

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from lmm_jax.data import records
from lmm_jax.data import meds_tasks
from lmm_jax.eval import meds_outputs
from lmm_jax.eval import predictions
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
  with pytest.raises(ValueError, match="not the split's"):
    meds_outputs.prediction_times(tiny_data_dir, "held_out", sid[::-1].copy())
  assert os.path.exists(out)
