r"""Zero-shot predictions from sampled futures, and synthetic MEDS patients with their audit.

  python -m experiments.generate --config=experiments/configs/generate.py:demo \
      --workdir=/tmp/lmm/generate --config.init_from=/tmp/lmm/pretrain \
      --config.data_dir=/tmp/lmm/records [--config.mode=zero_shot|synthesize|all]

Exits with status 1 when the memorization audit of the synthetic patients fails.
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import cli
from lmm_jax.sampling import run

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/generate.py:demo", "Generation config (file:preset).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  result = run.generate_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if not result["passed"]:
    print("memorization audit failed: " + "; ".join(result["audit"]["failures"]), file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main)
