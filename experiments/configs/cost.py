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

from experiments.configs import common
from lmm_jax.tasks import cost

BINARY = "experiments.finetune"
SWEEP_METRIC = ("eval_nmae", "min")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.finetune_config(common.preset_name(arg), "cost")
  c.cost = ml_collections.ConfigDict()
  c.cost.loss = "tweedie"         # one of lmm_jax.tasks.cost.COST_LOSSES
  c.cost.tweedie_power = 1.5
  c.cost.huber_delta = 1.0        # on log1p(dollars)
  c.cost.scale = 0.0              # dollars dividing the target; 0: the train mean
  c.cost.capped_output = True     # a second output for the $250k-capped target
  c.cost.quantiles = True         # P10/P50/P90 outputs (pinball loss on log1p cost)
  c.cost.quantile_weight = 0.5
  c.cost.point_estimate = "mean"  # y_pred: 'mean' (unbiased totals) or 'p50' (lowest MAE)
  c.cost.calibration_examples = 2048  # train members for huber_log1p's smearing factor
  c.lock()
  return c


def sweep(arg: str | None = None):
  """Learning rate x loss (tiny: 2 x 2 for tests)."""
  if arg == "tiny":
    rates, losses = (1e-3, 3e-3), ("tweedie", "huber_log1p")
  else:
    rates, losses = (3e-4, 1e-3, 3e-3), cost.COST_LOSSES
  for lr in rates:
    for loss in losses:
      yield {"optimizer.learning_rate": lr, "cost.loss": loss}
