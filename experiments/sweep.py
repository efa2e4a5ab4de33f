r"""Runs the sweep declared beside an experiment config and ranks its points.

  python -m experiments.sweep --config=experiments/configs/cost.py:demo --workdir=runs/sweep_cost \
      --parallel=2 -- --config.data_dir=runs/default/records

Flags after `--` are passed to every point's binary. Restarting skips finished points. Writes
WORKDIR/sweep_results.md and .json (points ranked by the config's SWEEP_METRIC on the tuning split,
with the best point's overrides).
"""

from absl import flags

from experiments import cli
from experiments import sweeps

_CONFIG = flags.DEFINE_string("config", None, "Config file with preset, e.g. "
                              "experiments/configs/cost.py:demo.", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the sweep.", required=True)
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Points run at once.")


def main(argv):
  results = sweeps.run_sweep(_CONFIG.value, _WORKDIR.value, parallel=_PARALLEL.value,
                             extra_flags=argv[1:])
  print(open(f"{_WORKDIR.value}/sweep_results.md").read())
  del results


if __name__ == "__main__":
  cli.run(main)
