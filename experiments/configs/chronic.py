r"""Fine-tuning for chronic conditions: which of the 22 conditions (lmm_jax.conditions) are coded
in the 12 months after the index date, multi-label with binary cross-entropy.

Launch (PRESET in tiny, demo, small, base, large; model shapes match the pretraining preset of the
same name, so its checkpoint loads):

  python -m experiments.finetune --config=experiments/configs/chronic.py:demo \
      --workdir=/tmp/lmm/chronic --config.data_dir=/tmp/lmm/records \
      --config.init_from=/tmp/lmm/pretrain

Without --config.init_from the same transformer trains from scratch; name it apart:
  --config.init_from='' --config.model_name=transformer_scratch
Options: --config.optimizer.freeze_backbone=True, --config.optimizer.backbone_lr_multiplier=0.1,
--config.head.pooling=mean.

Writes WORKDIR/predictions/chronic/MODEL_NAME.parquet (held-out members) and eval metrics on the
tuning split: eval_macro_auroc (all members), eval_macro_auroc_new_onset (members without the
condition before the index date), eval_brier, per-condition AUROCs.

Sweep: python -m experiments.sweep --config=experiments/configs/chronic.py:demo --workdir=DIR \
    -- --config.data_dir=... --config.init_from=...
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common

BINARY = "experiments.finetune"
SWEEP_METRIC = ("eval_macro_auroc", "max")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.finetune_config(common.preset_name(arg), "chronic")
  c.lock()
  return c


def sweep(arg: str | None = None):
  """Learning rate x frozen backbone (tiny: 2 x 2 for tests)."""
  rates = (1e-3, 3e-3) if arg == "tiny" else (3e-4, 1e-3, 3e-3)
  for lr in rates:
    for freeze in (False, True):
      yield {"optimizer.learning_rate": lr, "optimizer.freeze_backbone": freeze}
