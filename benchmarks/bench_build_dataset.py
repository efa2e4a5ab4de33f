"""Throughput and peak memory of the MEDS -> records builder, by dataset size and file layout.

  python benchmarks/bench_build_dataset.py [--sizes=1000,20000] [--layouts=many,one]
      [--num_workers=2] [--memory_budget_mb=512] [--engine=local,beam]

Each size is synthesized with `lmm_jax.synth.synthesize` (into --workdir, reused when present) in
the synthesizer's layout, `--patients_per_shard` patients per file ('many'), and rewritten as one
parquet file sorted by subject ('one'). Each build runs in a fresh child process so that its peak RSS is its own:
the figures printed are the builder process's and its largest worker's `ru_maxrss`
(resource.getrusage, self and children). Peak memory should stay flat as the dataset and its files
grow (a worker holds one chunk of memory_budget_mb / workers), while rows/s measures the
end-to-end build (both passes, writing records). The last column says whether the build equals
the first build of the same size: accounting (report.json) and records' token counts; the
vocabulary too unless the cost sample is capped (see docs/data.md). --engine=beam builds with
`lmm_jax.data.build_beam` on Beam's DirectRunner, --num_workers worker processes
(multi_processing); its worker column is the largest Beam worker's. CPU seconds are the child's
own and its workers' (user + system), beside wall seconds (inflated on a loaded machine).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep.configs import build_dataset as build_config
from lmm_jax.data import build  # pylint: disable=g-import-not-at-top,wrong-import-position
from lmm_jax.data import meds_io  # pylint: disable=g-import-not-at-top,wrong-import-position
from lmm_jax.synth import synthesize  # pylint: disable=g-import-not-at-top,wrong-import-position

_SIZES = flags.DEFINE_list("sizes", ["1000", "20000"], "patients per synthesized dataset")
_LAYOUTS = flags.DEFINE_list("layouts", ["many", "one"],
                             "'many': the synthesizer's files; 'one': all rows in one file")
_WORKERS = flags.DEFINE_integer("num_workers", os.cpu_count() or 1, "builder worker processes")
_BUDGET = flags.DEFINE_float("memory_budget_mb", build_config.get_config().memory_budget_mb,
                             "the builder's memory_budget_mb")
_PER_SHARD = flags.DEFINE_integer("patients_per_shard", 1000, "synthesizer patients per shard")
_WORKDIR = flags.DEFINE_string("workdir", None, "where datasets go (default: a temp dir)")
_ENGINES = flags.DEFINE_list("engine", ["local"], "builders to measure: local, beam")
_CHILD = flags.DEFINE_list("child", None, "internal: meds_dir,output_dir to build and measure")

# Report entries that depend on the layout, not on the data.
_LAYOUT_KEYS = ("meds_dir", "output_dir", "num_input_shards", "elapsed_s", "config")


def _child(meds_dir: str, output_dir: str, engine: str) -> None:
  config = build_config.get_config()
  config.num_workers = _WORKERS.value
  config.memory_budget_mb = _BUDGET.value
  config.progress = False
  t0 = time.time()
  if engine == "beam":
    from lmm_jax.data import build_beam  # pylint: disable=g-import-not-at-top (optional)
    report = build_beam.build_dataset(meds_dir, output_dir, config, [
        "--runner=DirectRunner", f"--direct_num_workers={_WORKERS.value}",
        "--direct_running_mode=multi_processing"])
  elif engine == "local":
    report = build.build_dataset(meds_dir, output_dir, config)
  else:
    raise ValueError(f"engine {engine!r}: expected 'local' or 'beam'")
  seconds = time.time() - t0
  me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  print(json.dumps({"rows": report["input_rows"], "seconds": seconds,
                    "cpu_s": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
                    "self_mb": me.ru_maxrss / 1024, "worker_mb": kids.ru_maxrss / 1024,
                    "shards": report["num_input_shards"],
                    "tokens": sum(report["tokens"].values())}))


def _make(meds_dir: str, patients: int) -> None:
  if os.path.exists(os.path.join(meds_dir, "metadata", "subject_splits.parquet")):
    return
  synthesize(meds_dir, num_patients=patients, seed=0, patients_per_shard=_PER_SHARD.value,
             oracle_rollouts=1, progress=False)


def _one_file(meds_dir: str, one_dir: str) -> None:
  """meds_dir's data as one file sorted by subject_id (as MEDS asks; the sort is stable, so each
  subject's rows keep their time order)."""
  path = os.path.join(one_dir, "data", "all.parquet")
  if os.path.exists(path):
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  shutil.copytree(os.path.join(meds_dir, "metadata"), os.path.join(one_dir, "metadata"),
                  dirs_exist_ok=True)
  table = pa.concat_tables([pq.read_table(f) for f in meds_io.data_files(meds_dir)])
  pq.write_table(table.take(pc.sort_indices(table, [("subject_id", "ascending")])),
                 path + ".tmp")
  os.replace(path + ".tmp", path)


def _summary(output_dir: str) -> dict:
  with open(os.path.join(output_dir, "report.json")) as f:
    report = {k: v for k, v in json.load(f).items() if k not in _LAYOUT_KEYS}
  with open(os.path.join(output_dir, "vocab.json")) as f:
    report["vocab"] = f.read()
  return report


def _accounting(summary: dict) -> dict:
  return {k: v for k, v in summary.items() if k not in ("vocab", "vocab_size")}


def main(argv: list[str]) -> None:
  del argv
  if _CHILD.value:
    _child(*_CHILD.value)
    return
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="bench_build_")
  print(f"builder benchmark: {_WORKERS.value} workers, memory_budget_mb={_BUDGET.value:g}, "
        f"datasets under {workdir}")
  print(f"{'patients':>9} {'layout':>6} {'engine':>6} {'files':>5} {'rows':>11} {'tokens':>11}"
        f" {'seconds':>8} {'CPU s':>7} {'rows/s':>9} {'peak RSS MB (builder / worker)':>31}"
        "  same as first build")
  for size in (int(s) for s in _SIZES.value):
    meds_dir = os.path.join(workdir, f"meds_{size}")
    _make(meds_dir, size)
    first = None
    for layout in _LAYOUTS.value:
      src = meds_dir
      if layout == "one":
        src = os.path.join(workdir, f"meds_{size}_one")
        _one_file(meds_dir, src)
      elif layout != "many":
        raise ValueError(f"layout {layout!r}: expected 'many' or 'one'")
      for engine in _ENGINES.value:
        out_dir = os.path.join(workdir, f"out_{size}_{layout}_{engine}")
        out = subprocess.run([sys.executable, os.path.abspath(__file__),
                              f"--child={src},{out_dir},{engine}",
                              f"--num_workers={_WORKERS.value}",
                              f"--memory_budget_mb={_BUDGET.value}"], capture_output=True,
                             text=True, check=False)
        if out.returncode:
          raise RuntimeError(f"the {engine} build of {src} failed:\n{out.stderr[-3000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        summary = _summary(out_dir)
        if first is None:
          first, same = summary, "-"
        else:
          same = (f"accounting {'yes' if _accounting(summary) == _accounting(first) else 'NO'}, "
                  f"vocabulary {'yes' if summary['vocab'] == first['vocab'] else 'no'}")
        worker = f"{r['worker_mb']:,.0f}" if r["worker_mb"] else "-"   # 1 worker: in-process
        print(f"{size:>9,} {layout:>6} {engine:>6} {r['shards']:>5} {r['rows']:>11,}"
              f" {r['tokens']:>11,} {r['seconds']:>8.1f} {r['cpu_s']:>7.1f}"
              f" {r['rows'] / r['seconds']:>9,.0f} {r['self_mb']:>15,.0f} / {worker}  {same}",
              flush=True)


if __name__ == "__main__":
  app.run(main)
