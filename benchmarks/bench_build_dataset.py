"""Throughput and peak memory of the MEDS -> records builder at two dataset sizes.

  python benchmarks/bench_build_dataset.py [--sizes=2000,8000] [--num_workers=2]

Each size is synthesized with `lmm_jax.synth.synthesize` (into --workdir, reused when present),
then built in a fresh child process so that its peak RSS is its own: the figure printed is the
larger of the builder process's and its largest worker's `ru_maxrss` (resource.getrusage, self and
children). Peak memory should stay flat as the dataset grows (it is bounded by one input shard per
worker), while rows/s measures the end-to-end build (both passes, writing records).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_SIZES = flags.DEFINE_list("sizes", ["2000", "8000"], "patients per synthesized dataset")
_WORKERS = flags.DEFINE_integer("num_workers", os.cpu_count() or 1, "builder worker processes")
_PER_SHARD = flags.DEFINE_integer("patients_per_shard", 1000, "synthesizer patients per shard")
_WORKDIR = flags.DEFINE_string("workdir", None, "where datasets go (default: a temp dir)")
_CHILD = flags.DEFINE_list("child", None, "internal: meds_dir,output_dir to build and measure")


def _child(meds_dir: str, output_dir: str) -> None:
  from lmm_jax.data import build  # pylint: disable=g-import-not-at-top
  config = build.default_config()
  config.num_workers = _WORKERS.value
  config.progress = False
  t0 = time.time()
  report = build.build_dataset(meds_dir, output_dir, config)
  seconds = time.time() - t0
  self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  print(json.dumps({"rows": report["input_rows"], "seconds": seconds, "self_mb": self_kb / 1024,
                    "worker_mb": child_kb / 1024, "shards": report["num_input_shards"],
                    "tokens": sum(report["tokens"].values())}))


def _make(meds_dir: str, patients: int) -> None:
  if os.path.exists(os.path.join(meds_dir, "metadata", "subject_splits.parquet")):
    return
  from lmm_jax.synth import synthesize  # pylint: disable=g-import-not-at-top
  synthesize(meds_dir, num_patients=patients, seed=0, patients_per_shard=_PER_SHARD.value,
             oracle_rollouts=1, progress=False)


def main(argv: list[str]) -> None:
  del argv
  if _CHILD.value:
    _child(*_CHILD.value)
    return
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="bench_build_")
  print(f"builder benchmark: {_WORKERS.value} workers, datasets under {workdir}")
  print(f"{'patients':>9} {'shards':>6} {'rows':>11} {'tokens':>11} {'seconds':>8} {'rows/s':>9}"
        f" {'peak RSS MB (builder / worker)':>31}")
  for size in (int(s) for s in _SIZES.value):
    meds_dir = os.path.join(workdir, f"meds_{size}")
    _make(meds_dir, size)
    out = subprocess.run([sys.executable, os.path.abspath(__file__),
                          f"--child={meds_dir},{os.path.join(workdir, f'out_{size}')}",
                          f"--num_workers={_WORKERS.value}"], capture_output=True, text=True,
                         check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{size:>9,} {r['shards']:>6} {r['rows']:>11,} {r['tokens']:>11,} {r['seconds']:>8.1f}"
          f" {r['rows'] / r['seconds']:>9,.0f} {r['self_mb']:>15,.0f} / {r['worker_mb']:>,.0f}")


if __name__ == "__main__":
  app.run(main)
