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
    # demo: a world of 50,000 people split (0.5, 0.1, 0.4), so that >= 10,000 held-out task
    # members are evaluated (measured 2026-12-02, seed 0: 45,000 people gave 9,521 of 17,663
    # held-out people, 0.54; docs/synthetic_world.md). The
    # LMM trains on a fixed subset of the train split (the first 6,400 timelines and 3,500 task
    # members) with the step counts below, sized so the whole job fits about 30 minutes of the
    # 2-core CPU; that is less than the presets' passes (docs/results.md says what this budget
    # reaches). Arithmetic (idle 2-core CPU; per-step times are the shared machine's measurements
    # scaled to idle as in docs/training.md, "Speed"): pretraining 300 x ~1.25 s (8 x 512 packed)
    # = ~6 min; fine-tuning, four runs (cost, chronic, and both from scratch) x 220 steps (one
    # pass of 3,500 members at batch 16) x ~1.25 s per length-bucketed step (padded to 512 it was
    # ~2.5 s; `python -m benchmarks.bench_train --presets=demo --finetune_buckets`, 2026-12-02:
    # 7.8 s padded vs 3.9 s bucketed under load, x2.0) = ~18 min, the same time the former 120
    # padded steps took. Each fine-tuning run evaluates the tuning split at 110 and 220 steps and
    # predicts from the better of the two (early stopping, docs/finetuning.md).
    # Measured end to end on 2026-12-02 on the idle 2-core CPU (docs/results/stage_times.json):
    # 2,012 s = 33.5 min: synthesize 124 s, build 36, pretrain 227, the four fine-tuning runs
    # 238-258 s each with their held-out predictions, baselines 22, generate 420, insights 147,
    # tables 51; over the 30 minutes asked for, and pretraining has not plateaued (issue 12).
    # Zero-shot samples 16 futures for a seeded subsample of 200 held-out members (its rows are
    # paired with the others on those members). Every other row covers every held-out member.
    "demo": {"num_patients": 50_000, "split_fractions": (0.5, 0.1, 0.4),
             "pretrain_examples": 6_400, "finetune_examples": 3_500, "pretrain_steps": 300,
             "finetune_steps": 220, "zero_shot_patients": 200, "zero_shot_samples": 16},
    "small": {"num_patients": 200_000},
    "base": {"num_patients": 1_000_000},
    "large": {"num_patients": 5_000_000},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.preset = common.preset_name(arg)
  c.seed = 0
  c.num_patients = 0             # synthetic patients
  c.split_fractions = (0.8, 0.1, 0.1)  # the world's train / tuning / held-out shares of people
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
