r"""Writes the synthetic claims world: a MEDS dataset with oracle ground truth.

  python -m data_prep.synthesize --output_dir=/tmp/meds --num_patients=100000 --seed=0

See docs/synthetic_world.md for what is modeled and lmm_jax/synth for the library.
"""

import json

from absl import flags

from experiments import cli
from lmm_jax.synth import synthesize

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the MEDS dataset is written.",
                                  required=True)
_NUM_PATIENTS = flags.DEFINE_integer("num_patients", 100_000, "Number of simulated people.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed; the same seed gives identical data.")
_FIRST_YEAR = flags.DEFINE_integer("first_year", 2016, "First service year.")
_LAST_YEAR = flags.DEFINE_integer("last_year", 2022, "Last service year (the target year).")
_PATIENTS_PER_SHARD = flags.DEFINE_integer(
    "patients_per_shard", 10_000, "People per chunk and parquet shard (part of the seed's meaning).")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", None, "Worker processes (default: all cores).")
_ORACLE_ROLLOUTS = flags.DEFINE_integer(
    "oracle_rollouts", 256, "Simulated target years per held-out member for the oracle.")
_ORACLE_ROLLOUTS_OTHER = flags.DEFINE_integer(
    "oracle_rollouts_other", 16, "Simulated target years per train/tuning member.")
_SPLIT_FRACTIONS = flags.DEFINE_list(
    "split_fractions", ["0.8", "0.1", "0.1"], "Train, tuning and held-out shares of the people.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")


def main(argv):
  del argv
  summary = synthesize(_OUTPUT_DIR.value, _NUM_PATIENTS.value, _SEED.value,
                       first_year=_FIRST_YEAR.value, last_year=_LAST_YEAR.value,
                       patients_per_shard=_PATIENTS_PER_SHARD.value,
                       num_workers=_NUM_WORKERS.value, oracle_rollouts=_ORACLE_ROLLOUTS.value,
                       oracle_rollouts_other=_ORACLE_ROLLOUTS_OTHER.value,
                       split_fractions=tuple(float(f) for f in _SPLIT_FRACTIONS.value),
                       progress=_PROGRESS.value)
  keys = ("patients", "rows", "shards", "seconds", "mean_cost", "top5_share", "bottom50_share")
  print(json.dumps({k: summary.get(k) for k in keys}, indent=2))


if __name__ == "__main__":
  cli.run(main)
