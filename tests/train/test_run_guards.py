"""Guards of the training loop: metrics.jsonl trimmed on resume, the non-finite abort names what
blew up (and catches a parameter-norm blow-up before saving), absurd optimizer settings refused."""

import os
import shutil

import jax
import numpy as np
import pytest

from lmm_jax.train import checkpoint as ckpt_lib
from lmm_jax.train import metrics as metrics_lib
from lmm_jax.train import optimizer as opt_lib
from lmm_jax.train import trainer
from tests.train import helpers


def test_trim_after_drops_rows_past_the_resume_step_and_a_torn_line(tmp_path):
  w = str(tmp_path)
  writer = metrics_lib.MetricWriter(w, enabled=True)
  for step in range(1, 8):
    writer.write(step, {"train_loss": float(step)})
  writer.close()
  with open(os.path.join(w, metrics_lib.METRICS_FILE), "a") as f:
    f.write('{"step": 8, "train_lo')  # killed mid-write
  writer = metrics_lib.MetricWriter(w, enabled=True)
  assert writer.trim_after(4) == 4
  writer.write(5, {"train_loss": 50.0})
  writer.close()
  rows = metrics_lib.read_metrics(w)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and rows[-1]["train_loss"] == 50.0
  assert metrics_lib.MetricWriter(w, enabled=False).trim_after(0) == 0  # other processes


def test_resume_does_not_repeat_steps_in_metrics(tmp_path):
  config = helpers.tiny_config(num_train_steps=6, checkpoint_every_steps=3, log_every_steps=1,
                               eval_batches=0, mesh_shape=(2, 2, 2))
  w = str(tmp_path / "run")
  trainer.train_and_evaluate(config, w, helpers.RandomPretrainTask(config))
  # As if killed after logging step 6 but before its checkpoint: the restart resumes at 3.
  shutil.rmtree(os.path.join(w, "checkpoints", "6"))
  out = trainer.train_and_evaluate(config, w, helpers.RandomPretrainTask(config))
  assert out["step"] == 6
  steps = [r["step"] for r in metrics_lib.read_metrics(w) if "train_loss" in r]
  assert steps == [1, 2, 3, 4, 5, 6]


def test_parameter_norm_blow_up_aborts_before_saving(tmp_path):
  # A learning rate of 1e38 makes the first update overflow the parameters' norm while that
  # step's loss and gradient norm (computed on the initial parameters) are finite.
  config = helpers.tiny_config(num_train_steps=4, checkpoint_every_steps=1, eval_batches=0,
                               mesh_shape=(2, 2, 2), **{"optimizer.learning_rate": 1e38,
                                                        "optimizer.warmup_steps": 0,
                                                        "optimizer.grad_clip": 0.0})
  w = str(tmp_path / "blowup")
  with pytest.raises(FloatingPointError) as e:
    trainer.train_and_evaluate(config, w, helpers.RandomPretrainTask(config))
  msg = str(e.value)
  assert msg.startswith("non-finite parameter norm inf at step 1"), msg
  assert "stopping without saving" in msg
  assert ckpt_lib.Checkpointer(os.path.join(w, "checkpoints")).latest_step() is None


@pytest.mark.parametrize("key,value,match", [
    ("learning_rate", -1e-3, r"config.optimizer.learning_rate=-0.001: must be a finite number > 0"),
    ("learning_rate", 0.0, "learning_rate=0.0"),
    ("learning_rate", float("nan"), "learning_rate=nan"),
    ("warmup_steps", -5, "warmup_steps=-5: must be an integer >= 0"),
    ("b2", 1.0, r"b2=1.0: must be in \[0, 1\)"),
    ("weight_decay", -0.1, "weight_decay=-0.1"),
    ("min_lr_ratio", 2.0, "min_lr_ratio=2.0"),
    ("eps", 0.0, "eps=0.0"),
])
def test_absurd_optimizer_settings_are_refused_in_one_line(key, value, match):
  config = helpers.tiny_config(**{f"optimizer.{key}": value})
  labels = {"w": "backbone"}
  with pytest.raises(ValueError, match=match) as e:
    opt_lib.make_optimizer(config.optimizer, 10, labels)
  assert "\n" not in str(e.value)


def test_valid_presets_pass_and_short_runs_keep_the_cut_warmup():
  config = helpers.tiny_config()
  opt_lib.validate(config.optimizer, config.num_train_steps)
  schedule = opt_lib.make_schedule(config.optimizer, 3)  # warmup 5 > 3 steps: cut, not refused
  assert float(schedule(2)) == pytest.approx(config.optimizer.learning_rate)
  params = {"w": np.ones((2, 2), np.float32)}
  tx, _ = opt_lib.make_optimizer(config.optimizer, 3, {"w": "backbone"})
  assert jax.tree.leaves(tx.init(params))
