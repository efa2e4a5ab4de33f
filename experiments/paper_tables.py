r"""Builds the paper tables from every predictions file below a runs directory.

  python -m experiments.paper_tables --runs_dir=DIR --output_dir=OUT2

Writes cost_table.md/.csv, chronic_table.md/.csv, predictive_ratios.csv and PNG plots to OUT2 and
prints both tables. See docs/evaluation.md.
"""

from absl import flags
from absl import logging

from experiments import cli
from lmm_jax.eval import metrics
from lmm_jax.report import tables

_RUNS_DIR = flags.DEFINE_string("runs_dir", None, "Directory scanned for predictions/.",
                                required=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the tables and plots go.",
                                  required=True)
_SAMPLES = flags.DEFINE_integer("bootstrap_samples", metrics.DEFAULT_BOOTSTRAP_SAMPLES,
                                "Bootstrap resamples for the intervals.")
_SEED = flags.DEFINE_integer("seed", 0, "Bootstrap seed.")
_MIN_POSITIVES = flags.DEFINE_integer(
    "min_positives", metrics.MIN_NEW_ONSET_POSITIVES,
    "The new-onset macro AUROC averages the conditions with at least this many new onsets.")
_PLOTS = flags.DEFINE_bool("plots", True, "Write PNG plots.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show progress bars.")


def main(argv):
  del argv
  out = tables.build_report(_RUNS_DIR.value, _OUTPUT_DIR.value, num_samples=_SAMPLES.value,
                            seed=_SEED.value, plots=_PLOTS.value, progress=_PROGRESS.value,
                            min_positives=_MIN_POSITIVES.value)
  logging.info("wrote %s to %s", ", ".join(out["files"]), _OUTPUT_DIR.value)
  for key in ("cost", "chronic"):
    if out[key]:
      print(out[key])


if __name__ == "__main__":
  cli.run(main)
