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
    # demo: a world large enough for >= 10,000 held-out task members once the world's split is
    # (0.6, 0.1, 0.3) (about 0.54 of patients are task members); the LMM trains on a fixed subset
    # of it (the first 6,400 train timelines and 3,500 train task members, the training set of the
    # former 8,000-patient world) so that the presets' two passes fit the CPU; zero-shot samples
    # 20 futures for a seeded subsample of 500 held-out members (its accuracy-vs-N curve stops at
    # N=20). Every other row of the tables covers every held-out member.
    "demo": {"num_patients": 64_000, "pretrain_examples": 6_400, "finetune_examples": 3_500,
             "zero_shot_patients": 500, "zero_shot_samples": 20},
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
  c.pretrain_examples = 0        # > 0: pretrain on the first N train timelines only
  c.finetune_examples = 0        # > 0: fine-tune (and train from scratch) on the first N train
                                 # task members only
  c.zero_shot_patients = -1      # -1: the generate preset's own; 0: every held-out member
  c.zero_shot_samples = 0        # futures per member; 0: the generate preset's own
  c.progress = True
  common.apply(c, PRESET_OVERRIDES, c.preset)
  c.lock()
  return c
