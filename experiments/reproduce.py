r"""The README's main job: the whole chain on the embedded synthetic claims world.

  python -m experiments.reproduce --workdir=runs/default             # demo size, 2-core CPU
  python -m experiments.reproduce --workdir=/big/run --size=small    # same chain on a GPU

Stages: synthesize, build_dataset, pretrain, finetune_cost, finetune_chronic, scratch_cost,
scratch_chronic (the from-scratch runs: not at demo, the size's `scratch` field in
experiments/configs/main_job.py), baselines, generate (zero-shot + synthetic cohort + memorization
audit), insights, paper_tables. Prints both paper tables at the end; tables and plots in WORKDIR/tables/.

Each finished stage leaves WORKDIR/stages/STAGE.json with a digest of its inputs (its config or
parameters: size, seed, patient count, build config; and its upstream markers). A rerun skips the
stages whose digest still matches and reruns the others and everything downstream of them, so
another --size, --seed or --num_patients over an existing workdir redoes what it changes.
--force=STAGE,... reruns those stages and, likewise, everything downstream. Rerunning a stage
first deletes its marker and its outputs: WORKDIR/meds (synthesize), WORKDIR/records
(build_dataset), WORKDIR/tables (paper_tables), else WORKDIR/STAGE (the whole run directory with
its checkpoints and metrics: a trainer never resumes an old run under a new config).
WORKDIR/stage_times.json is rewritten only when a stage ran.
"""

from absl import app
from absl import flags

from experiments import cli
from experiments import main_job

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the whole run.", required=True)
_SIZE = flags.DEFINE_enum("size", "demo", list(main_job.SIZES), "The preset of every stage (experiments/configs/main_job.py).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic world and of every stage.")
_NUM_PATIENTS = flags.DEFINE_integer("num_patients", None,
                                     "Synthetic patients (default: the size's own).")
_FORCE = flags.DEFINE_list("force", [], "Stages to redo even if up to date, with everything "
                           "downstream of them; a rerun stage's outputs are deleted first.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Progress bars.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  main_job.run(_WORKDIR.value, size=_SIZE.value, seed=_SEED.value,
               num_patients=_NUM_PATIENTS.value, force=tuple(_FORCE.value),
               progress=_PROGRESS.value)


if __name__ == "__main__":
  cli.run(main)
