r"""Generative simulation: zero-shot predictions from sampled futures, synthetic patients + audit.

Launch (PRESET in tiny, demo, small, base, large: the pretraining preset of the model; MODE in
zero_shot, synthesize, all):

  python -m experiments.generate --config=experiments/configs/generate.py:demo \
      --workdir=/tmp/lmm/generate --config.init_from=/tmp/lmm/pretrain \
      --config.data_dir=/tmp/lmm/records --config.mode=all

Writes W/predictions/{cost,chronic}/lmm_zero_shot.parquet (kind 'zero-shot'; they join the paper
tables), W/zero_shot_vs_n.{csv,md,png}, W/zero_shot_summary.json, the first futures_samples
sampled futures of each member as MEDS data (W/futures/<split>/<k>.parquet) and, for synthesize/all,
W/synthetic_meds/ (a MEDS dataset) with W/memorization_audit.{json,md}. The run exits with status 1
when the audit fails (thresholds below). Presets:
  tiny   unit tests: 4 futures, 48 new tokens, a few members
  demo   the README main job (2-core CPU): 50 futures (curve N = 1, 5, 20, 50), a 512-token cap
         (0.6% of the 8,000-patient world's real target years are longer; 160 cut 10.8%:
         benchmarks/bench_history_coverage.py), 256 history tokens (the anchor last), a seeded
         subsample of 40 held-out members; 32 synthetic patients
  small, base, large   GPUs: every held-out member, 50 futures, 512 new tokens; 1000 synthetic
         patients
The config is locked: a misspelled override is an error.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from experiments.configs import common
from lmm_jax import sharding

MODES = ("zero_shot", "synthesize", "all")

_GPU = {"sampling.max_new_tokens": 512, "sampling.batch_patients": 64,
        "sampling.max_patients": 0, "synth.num_patients": 1000, "synth.max_new_tokens": 1024,
        "audit.reference_patients": 20_000}
PRESET_OVERRIDES: dict[str, dict[str, Any]] = {
    "tiny": {"sampling.num_samples": 4, "sampling.curve_ns": (1, 2, 4),
             "sampling.max_new_tokens": 48, "sampling.batch_patients": 8,
             "sampling.max_patients": 16, "synth.num_patients": 8, "synth.max_new_tokens": 48,
             "audit.ngram": 12, "audit.reference_patients": 200, "progress": False},
    "demo": {"sampling.max_new_tokens": 512, "sampling.batch_patients": 20,
             "sampling.max_patients": 40, "synth.num_patients": 32},
    "small": _GPU, "base": _GPU, "large": _GPU,
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.preset = common.preset_name(arg)
  c.mode = "all"
  c.init_from = ""                 # the pretraining workdir (config.json + checkpoints/)
  c.data_dir = ""                  # the dataset builder output the model was trained on
  c.split = "held_out"             # task records predicted zero-shot
  c.seed = 0
  c.model_name = "lmm_zero_shot"   # predictions/{cost,chronic}/<model_name>.parquet
  c.futures_samples = 1            # zero-shot futures per member written as MEDS data
                                   # (W/futures/<split>/<k>.parquet, with prediction_time); 0: none
  c.progress = True

  c.sampling = ml_collections.ConfigDict()
  c.sampling.num_samples = 50            # futures per member used for the predictions (N max)
  c.sampling.curve_ns = (1, 5, 20, 50)   # accuracy vs N, on nested subsets of the N max futures
  c.sampling.max_new_tokens = 192        # token budget of a 12-month future
  c.sampling.temperature = 1.0
  c.sampling.top_k = 0                   # 0: off
  c.sampling.top_p = 1.0                 # 1.0: off (the vendor's API default is 0.95)
  c.sampling.context_len = 0             # history tokens kept; 0: the pretraining seq_len minus
                                         # max_new_tokens (at least half of seq_len)
  c.sampling.batch_patients = 16         # patients per jit call (x num_samples rows)
  c.sampling.max_patients = 64           # 0: every member of the split

  c.synth = ml_collections.ConfigDict()
  c.synth.num_patients = 64
  c.synth.max_new_tokens = 256           # tokens after the demographic prefix
  c.synth.horizon_days = 3 * 365         # stop a synthetic timeline after this many days
  c.synth.temperature = 1.0
  c.synth.top_k = 0
  c.synth.top_p = 1.0
  c.synth.start_date = "2020-01-01"      # first event day (+ a seeded jitter of up to a year)
  c.synth.split = "train"                # MEDS split the synthetic subjects are listed under
  c.synth.first_subject_id = 900_000_000  # synthetic subject ids count up from here

  c.audit = ml_collections.ConfigDict()
  c.audit.ngram = 24                     # an exact shared run of this many event tokens
  c.audit.max_exact_share = 0.01         # fail above: share reproducing a train timeline exactly
  c.audit.max_ngram_excess = 0.10        # fail above: n-gram share with train minus with held-out
  c.audit.max_closer_to_train = 0.75     # fail above: share nearer (Jaccard) to train than held-out
  c.audit.reference_patients = 2000      # train and held-out references (equal sizes, seeded)
  c.audit.min_train_count = 0            # fail if a generated code occurs fewer times in train
                                         # (k; also never sampled); 0: the builder's min_code_count

  c.mesh_shape = (-1, 1, 1)              # rows shard over ('data', 'fsdp'): data parallel
  c.mesh_axes = sharding.MESH_AXES
  c.logical_rules = sharding.DEFAULT_RULES

  common.apply(c, PRESET_OVERRIDES, c.preset)
  c.lock()
  return c
