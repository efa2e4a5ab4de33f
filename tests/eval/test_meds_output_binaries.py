"""The binaries write the MEDS-layout outputs: the generation binary its sampled futures as MEDS
data with a prediction_time (one row per generated event), the cost fine-tuning binary its
held-out predictions in the label layout beside predictions/cost/."""

import os
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from lmm_jax.data import records
from lmm_jax.eval import predictions

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args: str) -> None:
  proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                        timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]


def _prediction_times(data_dir: str) -> dict[int, int]:
  return {int(r["subject_id"]): int(r["prediction_time"])
          for r in records.read_records(data_dir, records.TASK, "held_out")}


def test_generate_writes_every_sampled_future_as_meds_data(tiny_data_dir, pretrained, tmp_path):
  wd = str(tmp_path / "gen")
  _run("experiments.generate", "--config=experiments/configs/generate.py:tiny",
       f"--workdir={wd}", f"--config.init_from={pretrained}", f"--config.data_dir={tiny_data_dir}",
       "--config.mode=zero_shot", "--config.sampling.max_patients=6",
       "--config.futures_samples=4")
  files = sorted(os.listdir(os.path.join(wd, "futures", "held_out")))
  assert files == [f"{k}.parquet" for k in range(4)]
  cost = predictions.read_cost_predictions(
      predictions.predictions_path(wd, "cost", "lmm_zero_shot"))
  times = _prediction_times(tiny_data_dir)
  spent = np.zeros(cost.subject_id.size)
  for name in files:
    f = pl.read_parquet(os.path.join(wd, "futures", "held_out", name))
    assert set(f.columns) == {"subject_id", "time", "code", "numeric_value", "prediction_time"}
    assert f.height > 0 and set(f["subject_id"].to_list()) <= set(cost.subject_id.tolist())
    pt = f["prediction_time"].cast(pl.Int64).to_list()
    assert pt == [times[s] for s in f["subject_id"].to_list()]
    assert (f["time"] >= f["prediction_time"]).all()
    # One row per generated event: the cost tokens of each future sum to its sampled cost,
    # whose mean over the 4 futures is the zero-shot cost prediction.
    by = dict(f.filter(pl.col("code").str.starts_with("COST//")).group_by("subject_id").agg(
        pl.col("numeric_value").cast(pl.Float64).sum()).iter_rows())
    spent += [by.get(int(s), 0.0) for s in cost.subject_id]
  np.testing.assert_allclose(spent / 4, cost.y_pred, rtol=1e-4)


def test_cost_finetune_writes_meds_layout_predictions(tiny_data_dir, pretrained, tmp_path):
  wd = str(tmp_path / "cost")
  _run("experiments.finetune", "--config=experiments/configs/cost.py:tiny", f"--workdir={wd}",
       f"--config.data_dir={tiny_data_dir}", f"--config.init_from={pretrained}",
       "--config.num_train_steps=2", "--config.checkpoint_every_steps=2",
       "--config.progress=False")
  ours = predictions.read_cost_predictions(
      predictions.predictions_path(wd, "cost", "lmm_finetuned"))
  meds = pl.read_parquet(os.path.join(wd, "predictions", "meds_cost", "lmm_finetuned.parquet"))
  assert meds.columns[:4] == ["subject_id", "prediction_time", "float_value",
                              "predicted_float_value"]
  assert {"predicted_float_value_p10", "predicted_float_value_p90"} <= set(meds.columns)
  assert meds["subject_id"].to_list() == ours.subject_id.tolist()
  times = _prediction_times(tiny_data_dir)
  assert meds["prediction_time"].cast(pl.Int64).to_list() == [
      times[int(s)] for s in ours.subject_id]
  np.testing.assert_allclose(meds["predicted_float_value"].to_numpy(), ours.y_pred)
  np.testing.assert_allclose(meds["float_value"].to_numpy(), ours.y_true)
