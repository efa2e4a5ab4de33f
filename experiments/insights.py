r"""Writes the insights report of a fine-tuned model: WORKDIR/insights.md with PNG plots.

  python -m experiments.insights --workdir=/tmp/lmm/insights --init_from=/tmp/lmm/chronic \
      [--data_dir=/tmp/lmm/records] [--chronic_dir=/tmp/lmm/chronic] [--num_members=5]

--init_from is a fine-tuning workdir (experiments.finetune: cost, chronic or binary): its predictions are
explained member by member. The relationship section needs a chronic run: --init_from itself when
it is one, else --chronic_dir. Members appear only as anonymous ranks; all output stays under
--workdir.

--pretrain_dir (a pretraining workdir) adds the intervention effects: sampled futures of edited
histories, on the synthetic world against the simulator's true effects (--intervention_* sizes).
"""

from absl import app
from absl import flags

from experiments import cli
from lmm_jax.insights import interventions
from lmm_jax.insights import report

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory of the report.", required=True)
_INIT_FROM = flags.DEFINE_string("init_from", None, "Fine-tuning workdir (cost or chronic).",
                                 required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Records (default: the run's data_dir).")
_CHRONIC_DIR = flags.DEFINE_string("chronic_dir", None,
                                   "Chronic fine-tuning workdir for the relationships.")
_SPLIT = flags.DEFINE_string("split", "held_out", "Split of the members examined.")
_NUM_MEMBERS = flags.DEFINE_integer("num_members", 5, "Members explained.")
_MAX_MEMBERS = flags.DEFINE_integer("max_members", 256, "Members read from the split.")
_IG_STEPS = flags.DEFINE_integer("ig_steps", 32, "Integrated-gradients steps.")
_MAP = flags.DEFINE_enum("embedding_method", "pca", ["pca", "tsne"], "2-D map projection.")
_THRESHOLD = flags.DEFINE_float("lift_threshold", 1.2, "Lift counted as a recovered link.")
_BOOTSTRAP = flags.DEFINE_integer("num_bootstrap", 200, "Member resamples of every interval.")
_EDIT = flags.DEFINE_enum("edit", "case", ["case", "claim"],
                          "How the counterfactual edit codes a condition (docs/insights.md).")
_REFERENCE = flags.DEFINE_enum("lift_reference", "placebo", ["placebo", "none"],
                               "Denominator of the model lift (docs/insights.md).")
_RISK_MEMBERS = flags.DEFINE_integer("risk_members", 128,
                                     "Members the risk factors are measured on.")
_RISK_PER_KIND = flags.DEFINE_integer("risk_tokens_per_kind", 6,
                                      "Candidate risk-factor tokens of each kind.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the bootstrap resamples.")
_COMPARE = flags.DEFINE_string("compare_to", None, "Another insights workdir (another training "
                               "seed) to compare the risk factors and lifts with.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show progress bars.")
# Intervention effects (lmm_jax.insights.interventions): only with --pretrain_dir.
_PRETRAIN_DIR = flags.DEFINE_string(
    "pretrain_dir", None, "Pretraining workdir: adds the intervention-effects section.")
_IV_MEMBERS = flags.DEFINE_integer("intervention_members", interventions.Sizes.members,
                                   "Members per intervention (seeded sample of the eligible).")
_IV_FUTURES = flags.DEFINE_integer("intervention_futures", interventions.Sizes.futures,
                                   "Sampled futures per member and arm.")
_IV_ROLLOUTS = flags.DEFINE_integer("intervention_rollouts", interventions.Sizes.rollouts,
                                    "Simulator roll-outs per member and arm (the true effect).")
_IV_NAIVE = flags.DEFINE_integer("intervention_naive_members", interventions.Sizes.naive_members,
                                 "Train members of the naive observational contrast.")
_IV_TOKENS = flags.DEFINE_integer("intervention_max_new_tokens", 512,
                                  "Token budget of a sampled 12-month future.")
_IV_SEED = flags.DEFINE_integer("intervention_seed", interventions.Sizes.seed,
                                "Seed of the member sample, the futures and the roll-outs.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  path = report.write_insights_report(
      _WORKDIR.value, _INIT_FROM.value, _DATA_DIR.value, chronic_workdir=_CHRONIC_DIR.value,
      split=_SPLIT.value, num_members=_NUM_MEMBERS.value, max_members=_MAX_MEMBERS.value,
      ig_steps=_IG_STEPS.value, embedding_method=_MAP.value, lift_threshold=_THRESHOLD.value,
      num_bootstrap=_BOOTSTRAP.value, edit=_EDIT.value, lift_reference=_REFERENCE.value,
      risk_members=_RISK_MEMBERS.value,
      risk_tokens_per_kind=_RISK_PER_KIND.value, seed=_SEED.value, compare_to=_COMPARE.value,
      progress=_PROGRESS.value, pretrain_workdir=_PRETRAIN_DIR.value,
      intervention_sizes=interventions.Sizes(
          members=_IV_MEMBERS.value, futures=_IV_FUTURES.value, rollouts=_IV_ROLLOUTS.value,
          naive_members=_IV_NAIVE.value, seed=_IV_SEED.value),
      intervention_max_new_tokens=_IV_TOKENS.value)
  print("insights report:", path)


if __name__ == "__main__":
  cli.run(main)
