"""The training loop: exact resume after kill -9, NaN abort, init_from + frozen backbone, config."""

import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from lmm_jax.train import checkpoint as ckpt_lib
from lmm_jax.train import metrics as metrics_lib
from lmm_jax.train import trainer
from tests.train import helpers
from tests.train.resume_worker import RESUME_OVERRIDES

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _losses(workdir: str) -> dict[int, float]:
  """step -> train_loss; a resumed run's rows override the killed run's."""
  return {r["step"]: r["train_loss"] for r in metrics_lib.read_metrics(workdir)
          if "train_loss" in r}


def test_exact_resume_after_kill(tmp_path):
  straight = str(tmp_path / "straight")
  config = helpers.tiny_config(**RESUME_OVERRIDES)
  trainer.train_and_evaluate(config, straight, helpers.RandomPretrainTask(config))

  killed = str(tmp_path / "killed")
  proc = subprocess.run([sys.executable, "-m", "tests.train.resume_worker", killed, "9", "8"],
                        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  assert ckpt_lib.Checkpointer(os.path.join(killed, "checkpoints")).latest_step() == 8
  # Restart in a fresh trainer with the same workdir: resumes at step 8 automatically.
  out = trainer.train_and_evaluate(config, killed, helpers.RandomPretrainTask(config))
  assert out["step"] == 12

  a, b = _losses(straight), _losses(killed)
  assert sorted(a) == list(range(1, 13)) and sorted(b) == list(range(1, 13))
  assert a == b  # bitwise-equal loss curve
  pa, _ = ckpt_lib.load_params(straight)
  pb, step = ckpt_lib.load_params(killed)
  assert step == 12
  for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
    np.testing.assert_array_equal(x, y)


def test_sigterm_saves_and_exits_cleanly(tmp_path):
  workdir = str(tmp_path / "preempted")
  worker = [sys.executable, "-m", "tests.train.resume_worker"]
  proc = subprocess.run(worker + [workdir, "5", "4", "15"], cwd=REPO, capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # The signal arrived while fetching batch 5 (step 6): that step ran, then a save and exit.
  assert "stopped at step 6" in proc.stdout
  assert ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints")).latest_step() == 6


class _NaNBatches(helpers.RandomBatches):

  def __next__(self):
    batch = super().__next__()
    if self.index > 6:
      batch["days"] = np.full_like(batch["days"], np.nan)
    return batch


class _NaNTask(helpers.RandomPretrainTask):

  def train_dataset(self, *, batch_size, shard_index, shard_count):
    return _NaNBatches(self.config.seed, batch_size, self.config.seq_len, self.vocab.size)


def test_nan_loss_aborts_and_keeps_last_good_checkpoint(tmp_path):
  # NaN elapsed days (read by the 'age_and_days' time embedding) poison the loss from step 7.
  config = helpers.tiny_config(num_train_steps=12, checkpoint_every_steps=4, eval_batches=0,
                               mesh_shape=(2, 2, 2), **{"model.time_embedding": "age_and_days"})
  workdir = str(tmp_path / "nan")
  with pytest.raises(FloatingPointError, match="non-finite loss nan.* at step 7"):
    trainer.train_and_evaluate(config, workdir, _NaNTask(config))
  params, step = ckpt_lib.load_params(workdir)
  assert step == 4
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


def test_init_from_loads_backbone_and_freezes_it(tmp_path):
  pre_dir = str(tmp_path / "pre")
  config = helpers.tiny_config(num_train_steps=12, checkpoint_every_steps=4, eval_batches=0,
                               mesh_shape=(2, 2, 2))
  trainer.train_and_evaluate(config, pre_dir, helpers.RandomPretrainTask(config))
  pretrained, _ = ckpt_lib.load_params(pre_dir)

  ft_dir = str(tmp_path / "ft")
  ft_config = helpers.tiny_config(num_train_steps=3, checkpoint_every_steps=3, init_from=pre_dir,
                                  eval_batches=0, mesh_shape=(2, 2, 2),
                                  **{"optimizer.freeze_backbone": True})
  out = trainer.train_and_evaluate(ft_config, ft_dir, helpers.RegressionTask(ft_config))
  assert out["step"] == 3 and np.isfinite(out["train_loss"])
  tuned, _ = ckpt_lib.load_params(ft_dir)
  assert set(tuned) == {"backbone", "head"}
  for x, y in zip(jax.tree.leaves(pretrained), jax.tree.leaves(tuned["backbone"])):
    np.testing.assert_array_equal(x, y)  # loaded, then frozen


def test_config_is_locked_and_has_required_keys():
  config = helpers.tiny_config()
  for key in ("data_dir", "num_train_steps", "seed", "checkpoint_every_steps"):
    assert key in config
  with pytest.raises(AttributeError):
    config.model.d_modle = 3
  with pytest.raises(KeyError):
    helpers.tiny_config(**{"modle.d_model": 3})
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.pretrain",
       "--config=experiments/configs/pretrain.py:tiny", "--workdir=/tmp/unused",
       "--config.modle.d_model=1"],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode != 0 and "modle" in proc.stderr
