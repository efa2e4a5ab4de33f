r"""Fine-tuning for a binary MEDS task: the `boolean_value` of each (subject, prediction time)
label of a dataset built with a label or ACES task (docs/data.md "Tasks"), e.g. MEDS-DEV's 30-day
readmission on the MIMIC-IV demo:

  python -m data_prep.build_dataset --meds_dir=../shared/data/mimic-iv-demo-meds \
      --output_dir=/tmp/lmm/mimic --config.task=aces \
      --config.task_aces_config=experiments/configs/aces/readmission_30d.yaml \
      --config.split_source=hash --min_code_count=1
  python -m experiments.pretrain --config=experiments/configs/pretrain.py:tiny \
      --workdir=/tmp/lmm/mimic_pretrain --config.data_dir=/tmp/lmm/mimic
  python -m experiments.finetune --config=experiments/configs/binary.py:tiny \
      --workdir=/tmp/lmm/mimic_binary --config.data_dir=/tmp/lmm/mimic \
      --config.init_from=/tmp/lmm/mimic_pretrain

Writes WORKDIR/predictions/meds/MODEL_NAME.parquet (held-out, meds-evaluation's
PredictionSchema) and eval metrics on the tuning split: eval_auroc, eval_auprc, eval_brier.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common

BINARY = "experiments.finetune"
SWEEP_METRIC = ("eval_auroc", "max")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.finetune_config(common.preset_name(arg), "binary")
  c.lock()
  return c
