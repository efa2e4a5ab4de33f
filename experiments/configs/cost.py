r"""Fine-tuning for next-year cost (total allowed dollars in the 12 months after the index date).

Launch (PRESET in tiny, demo, small, base, large; model shapes match the pretraining preset of the
same name, so its checkpoint loads):

  python -m experiments.finetune --config=experiments/configs/cost.py:demo \
      --workdir=/tmp/lmm/cost --config.data_dir=/tmp/lmm/records \
      --config.init_from=/tmp/lmm/pretrain

Without --config.init_from the same transformer trains from scratch; name it apart:
  --config.init_from='' --config.model_name=transformer_scratch
Options: --config.cost.loss=tweedie|poisson|huber_log1p|mse,
--config.optimizer.freeze_backbone=True, --config.optimizer.backbone_lr_multiplier=0.1,
--config.head.pooling=mean, --config.cost.point_estimate=p50.

Writes WORKDIR/predictions/cost/MODEL_NAME.parquet (held-out members, dollars) and eval metrics
(eval_nmae, eval_mae, eval_r2, eval_cpm, ..._capped) on the tuning split. See docs/finetuning.md
for the measured comparison of the losses.

Sweep: python -m experiments.sweep --config=experiments/configs/cost.py:demo --workdir=DIR \
    -- --config.data_dir=... --config.init_from=...
"""

from __future__ import annotations

import ml_collections

from experiments.configs import pretrain
from lmm_jax.tasks import finetune

BINARY = "experiments.finetune"
SWEEP_METRIC = ("eval_nmae", "min")


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
  c = finetune.finetune_config(pretrain.get_config(arg or "demo"), finetune.COST)
  c.lock()
  return c


def sweep(arg: str | None = None):
  """Learning rate x loss (tiny: 2 x 2 for tests)."""
  if arg == "tiny":
    rates, losses = (1e-3, 3e-3), ("tweedie", "huber_log1p")
  else:
    rates, losses = (3e-4, 1e-3, 3e-3), finetune.COST_LOSSES
  for lr in rates:
    for loss in losses:
      yield {"optimizer.learning_rate": lr, "cost.loss": loss}
