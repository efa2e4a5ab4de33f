r"""Throughput and peak memory of the three importers (claims extract, FHIR, Synthea) at two sizes.

  python benchmarks/bench_importers.py [--sizes=300,3000] [--importers=claims,fhir,synthea] \
      [--shard_input_mb=2]

The same seeded members (tests/importers/worlds.py) are written in each importer's input format;
each import runs in a fresh child process, so its peak RSS (VmHWM) is its own. Flat memory
means the peak does not grow with the input: with `shard_input_mb` fixed, a larger input only
means more spill buckets. Records are input records (CSV rows, FHIR resources).
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

from data_prep.configs import claims_mapping  # pylint: disable=g-import-not-at-top,wrong-import-position
from lmm_jax.importers import claims  # pylint: disable=g-import-not-at-top,wrong-import-position
from lmm_jax.importers import fhir  # pylint: disable=g-import-not-at-top,wrong-import-position
from lmm_jax.importers import synthea  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests.importers import worlds  # pylint: disable=g-import-not-at-top,wrong-import-position

_SIZES = flags.DEFINE_list("sizes", ["300", "3000"], "members per input")
_IMPORTERS = flags.DEFINE_list("importers", ["claims", "fhir", "synthea"], "which importers")
_SHARD_MB = flags.DEFINE_float("shard_input_mb", 2.0, "the importers' shard_input_mb")
_WORKDIR = flags.DEFINE_string("workdir", None, "where inputs and outputs go (default: temp)")
_CHILD = flags.DEFINE_list("child", None, "internal: importer,input_dir,output_dir")

WRITERS = {"claims": worlds.write_extract, "fhir": worlds.write_fhir,
           "synthea": worlds.write_synthea}
IMPORTS = {
    "claims": lambda i, o, mb: claims.import_claims(i, o, claims_mapping.get_config(),
                                                    shard_input_mb=mb),
    "fhir": lambda i, o, mb: fhir.import_fhir(i, o, shard_input_mb=mb),
    "synthea": lambda i, o, mb: synthea.import_synthea(i, o, shard_input_mb=mb),
}


def _peak_rss_mb() -> float:
  """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited from the parent at exec)."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(name: str, input_dir: str, output_dir: str) -> None:
  t0 = time.time()
  report = IMPORTS[name](input_dir, output_dir, _SHARD_MB.value)
  print(json.dumps({"records": report["records"], "rows": report["rows_written"],
                    "shards": report["shards"], "seconds": time.time() - t0,
                    "peak_mb": _peak_rss_mb()}))


def _input_mb(path: str) -> float:
  return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) / 2**20


def main(argv: list[str]) -> None:
  del argv
  if _CHILD.value:
    _child(*_CHILD.value)
    return
  work = _WORKDIR.value or tempfile.mkdtemp(prefix="bench_importers_")
  print(f"{'importer':>8} {'members':>8} {'input MB':>9} {'records':>9} {'MEDS rows':>10} "
        f"{'shards':>6} {'seconds':>8} {'records/s':>10} {'peak RSS MB':>12}")
  for size in (int(s) for s in _SIZES.value):
    people = worlds.members(size, seed=0)
    for name in _IMPORTERS.value:
      src = os.path.join(work, f"{name}-{size}-in")
      WRITERS[name](src, people)
      out = os.path.join(work, f"{name}-{size}-meds")
      res = subprocess.run([sys.executable, os.path.abspath(__file__),
                            f"--child={name},{src},{out}",
                            f"--shard_input_mb={_SHARD_MB.value}"],
                           check=True, capture_output=True, text=True)
      r = json.loads(res.stdout.strip().splitlines()[-1])
      print(f"{name:>8} {size:>8,} {_input_mb(src):>9.1f} {r['records']:>9,} {r['rows']:>10,} "
            f"{r['shards']:>6} {r['seconds']:>8.1f} {r['records'] / r['seconds']:>10,.0f} "
            f"{r['peak_mb']:>12.0f}", flush=True)


if __name__ == "__main__":
  app.run(main)
