r"""The scaling curve: model size x number of training patients (experiments/scaling.py).

  python -m experiments.scaling --config=experiments/configs/scaling.py:demo \
      --workdir=runs/scaling --config.data_dir=runs/default/records

Every point pretrains a model of one size on the first N train timelines (`train_examples`) for
`passes` passes over their tokens, fine-tunes the cost and chronic heads on the train task members
among them (the first N x task share task records) for `finetune_passes` passes, and predicts the
held-out split. The table (WORKDIR/scaling.{md,csv}) and plot (scaling.png) give the pretraining
tuning loss, held-out cost NMAE (of the mean and of the P50 output) and chronic macro AUROC per
point, and with references_dir the same figures of baselines on the same members. Held-out figures are only
reported, never used to choose anything. Presets:
  tiny  tests: 1 size x 2 patient counts, a few steps each
  demo  the 2-core CPU: sizes xs (2 layers, d 64) and s (the demo model), N = 800 and 3,200
  gpu   sizes s, m (the small preset) and l (the base preset's shape, float32) x N up to 50,000
The config is locked: a misspelled override is an error.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from experiments.configs import common

# Model sizes: overrides of the demo model (experiments/configs/common.py MODEL_PRESETS).
_SHAPE = ("model.num_layers", "model.d_model", "model.mlp_dim", "model.num_heads",
          "model.num_kv_heads", "model.head_dim")
MODEL_SIZES: dict[str, dict[str, Any]] = {
    "xxs": dict(zip(_SHAPE, (1, 32, 96, 2, 2, 16))),
    "xs": dict(zip(_SHAPE, (2, 64, 192, 4, 4, 16))),
    "s": dict(zip(_SHAPE, (4, 128, 384, 4, 4, 32))),
    "m": dict(zip(_SHAPE, (8, 384, 1024, 6, 6, 64))),
    "l": dict(zip(_SHAPE, (12, 768, 2048, 12, 12, 64))),
}

PRESET_OVERRIDES: dict[str, dict[str, Any]] = {
    "tiny": {"sizes": ("xxs",), "train_patients": (20, 40), "passes": 1.0,
             "finetune_passes": 1.0, "seq_len": 64, "batch_size": 8, "min_steps": 4,
             "max_steps": 6, "progress": False},
    "demo": {"sizes": ("xs", "s"), "train_patients": (800, 3200)},
    "gpu": {"sizes": ("s", "m", "l"), "train_patients": (3_200, 12_800, 50_000),
            "batch_size": 32, "max_steps": 50_000},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.preset = arg or "demo"
  if c.preset not in PRESET_OVERRIDES:
    raise ValueError(f"unknown scaling preset {c.preset!r}: expected one of "
                     f"{list(PRESET_OVERRIDES)}")
  c.data_dir = ""                    # the dataset builder's output
  c.sizes = ("xs", "s")              # names in MODEL_SIZES
  c.train_patients = (800, 3200)     # N: the first N train timelines
  c.passes = 2.0                     # pretraining passes over the N timelines' tokens
  c.finetune_passes = 2.0            # fine-tuning passes over their task members
  c.seq_len = 512
  c.batch_size = 8                   # pretraining rows (packed); fine-tuning uses 2x
  c.min_steps = 50                   # per training run, whatever the passes give
  c.max_steps = 1500
  c.seed = 0
  c.progress = True
  # A baselines run on the same dataset (the main job's WORKDIR/baselines): the held-out figures
  # of these models are printed beside the points and drawn as dashed lines. "": none.
  c.references_dir = ""
  c.reference_models = ml_collections.ConfigDict(
      {"cost": ("lightgbm_median", "cms_hcc_v28"), "chronic": ("lightgbm_chronic", "copy_forward")})
  common.apply(c, PRESET_OVERRIDES, c.preset)
  c.lock()
  return c
