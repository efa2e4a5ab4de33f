r"""Fits the cost and chronic-condition baselines and writes their held-out predictions.

  python -m experiments.baselines --data_dir=OUT --workdir=W

OUT is a dataset built by `python -m experiments.build_dataset` (vocab.json, report.json, task/
shards). Writes W/predictions/{cost,chronic}/MODEL.parquet for: mean, prior_cost, age_sex,
cms_hcc_v28, lightgbm_cost, lightgbm_median; copy_forward, prevalence_age_sex, logistic,
lightgbm_chronic; and the oracle (and oracle_median, from its median_cost column) when the MEDS
dataset has ground_truth/oracle.parquet. A baseline that cannot be fitted on degenerate data (e.g.
all-zero costs) is skipped with its one-line reason in the printed "refused". Then build the
tables with
`python -m experiments.paper_tables --runs_dir=W --output_dir=...`. See docs/evaluation.md.
"""

import json

from absl import flags
from absl import logging

from experiments import cli
from lmm_jax import conventions
from lmm_jax.baselines import runner

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Built dataset directory.", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where predictions/ is written.", required=True)
_SPLIT = flags.DEFINE_enum("split", conventions.HELD_OUT, list(conventions.SPLITS),
                           "Split to predict.")
_MODELS = flags.DEFINE_list("models", None, "Subset of baselines (default: all, plus oracle). "
                            f"Known: {', '.join(runner.COST_MODELS + runner.CHRONIC_MODELS)}, "
                            f"{runner.ORACLE}.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the LightGBM and logistic models.")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 512, "Frequent codes used as count features.")
_THREADS = flags.DEFINE_integer("num_threads", 1, "LightGBM threads (0: all cores; one is "
                                "fastest below ~100k members, and on a busy machine).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show progress bars.")


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  summary = runner.run_baselines(_DATA_DIR.value, _WORKDIR.value, split=_SPLIT.value,
                                 models=_MODELS.value, seed=_SEED.value,
                                 max_tokens=_MAX_TOKENS.value, num_threads=_THREADS.value,
                                 progress=_PROGRESS.value)
  print(json.dumps({k: summary[k] for k in ("members", "headline", "seconds", "notes", "refused")},
                   indent=1))


if __name__ == "__main__":
  cli.run(main)
