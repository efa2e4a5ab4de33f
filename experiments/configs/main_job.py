r"""The README main job's sizes: the synthetic world, and the preset every stage runs at.

  python -m experiments.reproduce --workdir=runs/default              # demo: a 2-core laptop CPU
  python -m experiments.reproduce --workdir=/big/run --size=small     # the same chain on a GPU

A size names the preset of every stage's own config (pretrain.py, cost.py, chronic.py,
generate.py), so `--size=P` means the model of preset P everywhere. The fields below say what the
main job changes on top of those presets: the number of synthetic patients and, where the stage
presets are sized for standalone use, steps and zero-shot effort (0 or -1: keep the preset's own).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from experiments.configs import common

PRESET_OVERRIDES: dict[str, dict[str, Any]] = {
    "tiny": {"num_patients": 400, "pretrain_steps": 20, "finetune_steps": 10},
    # demo samples 20 futures for every held-out member, so the zero-shot rows cover the same
    # members as the other rows of the tables; its accuracy-vs-N curve then stops at N=20 (the
    # generate preset alone goes to 50 on 40 members).
    "demo": {"num_patients": 8_000, "zero_shot_patients": 0, "zero_shot_samples": 20},
    "small": {"num_patients": 200_000},
    "base": {"num_patients": 1_000_000},
    "large": {"num_patients": 5_000_000},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.preset = common.preset_name(arg)
  c.seed = 0
  c.num_patients = 0             # synthetic patients
  c.pretrain_steps = 0           # 0: the pretrain preset's own
  c.finetune_steps = 0           # 0: the cost/chronic presets' own
  c.zero_shot_patients = -1      # -1: the generate preset's own; 0: every held-out member
  c.zero_shot_samples = 0        # futures per member; 0: the generate preset's own
  c.progress = True
  common.apply(c, PRESET_OVERRIDES, c.preset)
  c.lock()
  return c
