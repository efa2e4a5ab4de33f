r"""Fine-tunes the pretrained lmm_jax transformer for next-year cost or chronic conditions.

  python -m experiments.finetune --config=experiments/configs/cost.py:demo \
      --workdir=/tmp/lmm/cost --config.data_dir=/tmp/lmm/records \
      --config.init_from=/tmp/lmm/pretrain
  python -m experiments.finetune --config=experiments/configs/chronic.py:demo \
      --workdir=/tmp/lmm/chronic --config.data_dir=/tmp/lmm/records \
      --config.init_from=/tmp/lmm/pretrain

Without --config.init_from the transformer trains from scratch (the "no pretraining" comparison:
add --config.model_name=transformer_scratch). Restarting with the same --workdir resumes. At the
end the held-out predictions go to WORKDIR/predictions/{cost,chronic}/MODEL_NAME.parquet.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import cli
from lmm_jax.train import predict

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Fine-tuning config (file:preset), e.g. experiments/configs/cost.py:demo.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, "
                               "predictions).", required=True)
flags.mark_flag_as_required("config")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  metrics = predict.train_and_predict(_CONFIG.value, _WORKDIR.value)
  summary = {k: v for k, v in metrics.items()
             if k.startswith("eval_") and "/" not in k or k in ("step", "train_loss")}
  print("final:", ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in sorted(summary.items())))
  print("predictions:", metrics["predictions"])


if __name__ == "__main__":
  cli.run(main)
