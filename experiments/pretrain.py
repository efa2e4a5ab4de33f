r"""Pretrains the lmm_jax GPT on patient timelines.

  python -m experiments.pretrain --config=experiments/configs/pretrain.py:demo \
      --workdir=/tmp/lmm/pretrain --config.data_dir=/tmp/lmm/records --config.num_train_steps=200

Restarting with the same --workdir resumes from its latest checkpoint.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import cli
from lmm_jax import tasks
from lmm_jax.train import trainer

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/pretrain.py:demo", "Training config (file:preset).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics).",
                               required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  metrics = trainer.train_and_evaluate(config, _WORKDIR.value, tasks.make_task(config))
  summary = {k: v for k, v in metrics.items()
             if "/" not in k and (k.startswith("eval_") or k in ("step", "train_loss"))}
  print("final:", ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in sorted(summary.items())))


if __name__ == "__main__":
  cli.run(main)
