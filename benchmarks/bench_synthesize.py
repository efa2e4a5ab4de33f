r"""Throughput and memory of the synthetic claims world, and its calibration figures.

  python benchmarks/bench_synthesize.py --sizes=10000,100000 --num_workers=2 --seed=0

Prints, per size: wall seconds, CPU seconds (this process and its workers), patients/s, MEDS
rows/s, peak RSS of the parent and of the largest worker process, and the calibration figures
that synthesize() computed from the generated data beside their published references (lmm_jax.synth.calibration.REFERENCES): top-decile persistence,
30-day readmissions, end-of-life spending share, winter/summer admissions, cost concentration,
CCW-rule prevalence among members 65-74, distinct codes, the oracle versus simple predictors and
the oracle's condition probabilities (zero share and mean SE, Rao-Blackwellized against the plain
count of roll-outs). --split_fractions=0.5,0.1,0.4 is the demo main job's world.
"""

import json
import resource
import shutil
import tempfile
import time

from absl import app
from absl import flags

from lmm_jax.synth import calibration
from lmm_jax.synth import synthesize

_SIZES = flags.DEFINE_list("sizes", ["10000", "100000"], "Numbers of patients to generate.")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", 2, "Worker processes.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_ROLLOUTS = flags.DEFINE_integer("oracle_rollouts", 256, "Oracle roll-outs per held-out member.")
_ROLLOUTS_OTHER = flags.DEFINE_integer("oracle_rollouts_other", 16,
                                       "Oracle roll-outs per train/tuning member.")
_SPLIT = flags.DEFINE_list("split_fractions", ["0.8", "0.1", "0.1"],
                           "Train, tuning and held-out shares of the people.")
_KEEP = flags.DEFINE_string("keep_dir", None, "Write here (kept) instead of a temporary folder.")


def _peak_mib(who: int) -> float:
  return resource.getrusage(who).ru_maxrss / 1024.0   # Linux reports KiB


def _cpu_seconds() -> float:
  return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                resource.getrusage(resource.RUSAGE_CHILDREN)))


def main(argv):
  del argv
  for size in (int(s) for s in _SIZES.value):
    out = _KEEP.value or tempfile.mkdtemp(prefix="bench_synth_")
    start, cpu_start = time.time(), _cpu_seconds()
    summary = synthesize(out, size, _SEED.value, num_workers=_NUM_WORKERS.value,
                         oracle_rollouts=_ROLLOUTS.value,
                         oracle_rollouts_other=_ROLLOUTS_OTHER.value,
                         split_fractions=tuple(float(f) for f in _SPLIT.value), progress=False)
    seconds = time.time() - start
    cpu_seconds = _cpu_seconds() - cpu_start
    prev = summary["coded_prevalence_by_age"].get("65-74", {})
    report = {
        "patients": size, "workers": _NUM_WORKERS.value, "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1), "split_fractions": _SPLIT.value,
        "patients_per_s": round(size / seconds, 1), "rows": summary["rows"],
        "rows_per_s": round(summary["rows"] / seconds),
        "peak_rss_parent_mib": round(_peak_mib(resource.RUSAGE_SELF)),
        "peak_rss_largest_worker_mib": round(_peak_mib(resource.RUSAGE_CHILDREN)),
        "calibration": {k: summary.get(k) for k in (
            "calibration_year", "calibration_members", "mean_cost", "median_cost",
            "zero_cost_share", "top1_share", "top5_share", "top10_share", "bottom50_share")},
        "coded_prevalence_65_74": {k: round(v, 3) for k, v in prev.items()},
        "distinct_codes_by_system": summary.get("distinct_codes_by_system"),
        "against_references": {
            k: {"world": (summary["dynamics"] | summary).get(k), "published": ref[0],
                "source": ref[1]} for k, ref in calibration.REFERENCES.items()},
        "dynamics": summary.get("dynamics"),
        "held_out_cost_prediction": summary.get("held_out_cost_prediction"),
        "held_out_condition_probabilities": summary.get("held_out_condition_probabilities"),
    }
    print(json.dumps(report, indent=2), flush=True)
    if not _KEEP.value:
      shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
