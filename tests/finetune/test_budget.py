"""Length buckets in the trainer (one compile per bucket, same outputs) and early stopping."""

import math


import numpy as np
import pytest

from experiments.configs import cost as cost_config
from lmm_jax import tasks
from lmm_jax.data import pipeline
from lmm_jax.eval import predictions
from lmm_jax.train import checkpoint as ckpt_lib
from lmm_jax.train import early_stopping as es_lib
from lmm_jax.train import predict
from lmm_jax.train import trainer as trainer_lib


def _config(data_dir, **overrides):
  config = cost_config.get_config("tiny")
  config.update_from_flattened_dict({
      "data_dir": data_dir, "num_train_steps": 2, "checkpoint_every_steps": 2,
      "log_every_steps": 1, "progress": False, **overrides})
  return config


def _trim(batch, width):
  return {k: (v[:, :width] if k in pipeline.SEQUENCE_OUTPUTS else v) for k, v in batch.items()}


def test_a_bucket_trimmed_batch_gives_the_padded_outputs_and_compiles_once_per_shape(
    tiny_data_dir):
  config = _config(tiny_data_dir)
  task = tasks.make_task(config)
  tr = trainer_lib.Trainer(config, task)
  state = tr.init_state(0)
  batch = next(iter(task.split_batches("tuning", batch_size=8, shard_index=0, shard_count=1)))
  width = pipeline.bucket_length(int(batch["length"].max()), (8, 16, 32, config.seq_len))
  padded = tr.eval_outputs(state["params"], _trim(batch, config.seq_len))
  trimmed = tr.eval_outputs(state["params"], _trim(batch, width))
  for k in padded:
    np.testing.assert_allclose(np.asarray(padded[k]), np.asarray(trimmed[k]), rtol=2e-5,
                               atol=2e-5, err_msg=k)
  short = _trim(batch, 16)
  short["length"] = np.minimum(short["length"], 16)
  short["segment_ids"] = (np.arange(16)[None] < short["length"][:, None]).astype(np.int32)
  for b in (batch, short, batch):
    state, _ = tr.train_step(state, tr.device_batch(b))
  assert len(tr._compiled) == 2   # pylint: disable=protected-access
  assert int(state["step"]) == 3


def test_tiny_finetune_runs_on_bucketed_batches(tiny_data_dir, tmp_path):
  config = _config(tiny_data_dir, bucket_lengths=(16, 32), num_train_steps=3,
                   checkpoint_every_steps=3)
  final = predict.train_and_predict(config, str(tmp_path / "cost"))
  assert final["step"] == 3 and math.isfinite(final["eval_nmae"])
  preds = predictions.read_cost_predictions(final["predictions"])
  assert len(set(preds.subject_id.tolist())) == len(preds.subject_id)


def test_early_stopping_counts_patience_min_delta_and_mode():
  es = es_lib.EarlyStopping(patience=2, min_delta=0.1)
  assert es.update(1, {"eval_loss": 1.0})
  assert not es.update(2, {"eval_loss": 0.95})     # not better by more than min_delta
  assert es.update(3, {"eval_loss": 0.8}) and es.bad_evals == 0 and es.best_step == 3
  es.update(4, {"eval_loss": 0.9})
  assert not es.stopped
  es.update(5, {"eval_loss": 0.85})
  assert es.stopped and es.best_step == 3 and es.best_value == 0.8
  up = es_lib.EarlyStopping(metric="eval_macro_auroc", mode="max", patience=1)
  up.update(1, {"eval_macro_auroc": 0.7})
  assert up.update(2, {"eval_macro_auroc": 0.8}) and not up.update(3, {"eval_macro_auroc": 0.75})
  assert up.stopped
  with pytest.raises(KeyError, match="eval_nmae"):
    es_lib.EarlyStopping(metric="eval_nmae").update(1, {"eval_loss": 1.0})
  with pytest.raises(ValueError, match="mode='best'"):
    es_lib.EarlyStopping(mode="best")
  resumed = es_lib.EarlyStopping(patience=3)
  resumed.resume(20, {"eval_loss": 0.5}, es_lib.eval_steps(100, 10), 50)
  assert (resumed.best_step, resumed.best_value, resumed.bad_evals) == (20, 0.5, 3)
  assert resumed.stopped
  assert es_lib.eval_steps(25, 10) == [10, 20, 25]


def test_early_stopping_needs_evaluations(tiny_data_dir):
  config = _config(tiny_data_dir, eval_every_steps=0, **{"early_stopping.patience": 2})
  with pytest.raises(ValueError, match="eval_every_steps > 0"):
    es_lib.EarlyStopping.from_config(config)


def test_early_stop_keeps_the_best_checkpoint_predicts_from_it_and_stays_stopped(
    tiny_data_dir, tmp_path):
  workdir = str(tmp_path / "cost")
  # min_delta so large that no evaluation after the first counts as an improvement.
  config = _config(tiny_data_dir, num_train_steps=8, eval_every_steps=1,
                   checkpoint_every_steps=100, keep_checkpoints=1,
                   **{"early_stopping.patience": 2, "early_stopping.min_delta": 1e9})
  final = predict.train_and_predict(config, workdir)
  assert final["stopped_early"] == 1.0 and final["step"] == 3 and final["best_step"] == 1
  assert ckpt_lib.best_step(workdir, "eval_loss", "min") == 1
  reader = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), read_only=True)
  try:
    assert sorted(reader.manager.all_steps()) == [1, 3]   # the best and the latest
  finally:
    reader.close()
  preds = predictions.read_cost_predictions(final["predictions"])
  assert preds.meta["step"] == 1
  # A restart does not train past the stop.
  again = trainer_lib.train_and_evaluate(config, workdir, tasks.make_task(config))
  assert again["step"] == 3 and again["stopped_early"] == 1.0
  # Without min_delta the same run improves and trains to the end.
  config2 = _config(tiny_data_dir, num_train_steps=3, eval_every_steps=1,
                    **{"early_stopping.patience": 5})
  final2 = trainer_lib.train_and_evaluate(config2, str(tmp_path / "full"), tasks.make_task(config2))
  assert final2["step"] == 3 and final2["stopped_early"] == 0.0

