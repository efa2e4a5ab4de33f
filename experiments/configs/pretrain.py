r"""GPT pretraining on patient timelines (next-token prediction).

Launch (PRESET in tiny, demo, small, base, large; see experiments/configs/common.py):

  python -m experiments.pretrain --config=experiments/configs/pretrain.py:demo \
      --workdir=/tmp/lmm/pretrain --config.data_dir=/tmp/lmm/records \
      --config.num_train_steps=200 --config.seed=0

  demo  4 layers, d 128, 1.9M parameters, 1,000 steps of 8 x 512 packed tokens: two passes over
        about 2.0M train tokens (the main job: 780 steps over its first 5,000 train timelines), the
        tuning loss every 100 steps, early stopping after three without improvement

The config is locked: a misspelled override (`--config.modle.d_model=1`) is an error.

Sweep (learning rate x time embedding, ranked by the tuning loss):

  python -m experiments.sweep --config=experiments/configs/pretrain.py:demo --workdir=DIR \
      -- --config.data_dir=/tmp/lmm/records
"""

from __future__ import annotations

from typing import Any

import ml_collections

from experiments.configs import common

BINARY = "experiments.pretrain"
SWEEP_METRIC = ("eval_loss", "min")

SCHEDULES: dict[str, dict[str, Any]] = {
    "tiny": {"num_train_steps": 20, "batch_size": 8, "eval_batch_size": 8,
             "checkpoint_every_steps": 10, "log_every_steps": 5, "eval_every_steps": 0,
             "eval_batches": 2, "optimizer.warmup_steps": 5},
    "demo": {"num_train_steps": 1000, "batch_size": 8, "eval_batch_size": 16,
             "checkpoint_every_steps": 100, "log_every_steps": 10, "eval_every_steps": 100,
             "eval_batches": 16, "optimizer.learning_rate": 3e-3, "optimizer.warmup_steps": 50,
             # Stops once three evaluations in a row (300 steps) do not lower the tuning loss.
             "early_stopping.patience": 3},
    "small": {"num_train_steps": 20_000, "batch_size": 64, "checkpoint_every_steps": 1000,
              "eval_every_steps": 1000, "eval_batches": 50, "optimizer.learning_rate": 1e-3,
              "optimizer.warmup_steps": 1000},
    "base": {"num_train_steps": 100_000, "batch_size": 256, "checkpoint_every_steps": 2000,
             "eval_every_steps": 2000, "eval_batches": 100, "optimizer.learning_rate": 6e-4,
             "optimizer.warmup_steps": 2000},
    "large": {"num_train_steps": 200_000, "batch_size": 512, "checkpoint_every_steps": 1000,
              "eval_every_steps": 5000, "eval_batches": 100, "optimizer.learning_rate": 3e-4,
              "optimizer.warmup_steps": 2000},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = common.preset_name(arg)
  c = common.model_config(preset)
  c.task = "pretrain"
  # Share of training timelines given a prediction-time anchor at a random day (redrawn every
  # epoch; lmm_jax.data.anchors), so zero-shot sampling from a task history's anchor continues a
  # pattern seen in training. Half keep their natural form; tiny keeps none (golden losses).
  c.anchor_rate = 0.0 if preset == "tiny" else 0.5
  # Sequence positions per chunk of the loss fused with the output projection (the [B,L,V] logits
  # are never materialized; lmm_jax/tasks/losses.py): 64 was fastest at demo size on the 2-core
  # CPU (32: +2%, 128: +18%, 256: x2; docs/training.md, "Speed").
  c.loss_chunk = 64
  common.apply(c, SCHEDULES, preset)
  c.lock()
  return c


def sweep(arg: str | None = None):
  """Learning rate x time embedding (the age/elapsed-time choice of docs/training.md)."""
  rates = (1e-3, 3e-3) if arg == "tiny" else (3e-4, 1e-3, 3e-3)
  for lr in rates:
    for time_embedding in ("none", "age", "age_and_days"):
      yield {"optimizer.learning_rate": lr, "model.time_embedding": time_embedding}
