r"""Fit-and-predict time of every baseline, and peak memory, against the number of train members.

  python benchmarks/bench_baselines.py [--data_dir=OUT] [--num_patients=6000] [--sizes=250,500,1000]

Without --data_dir a synthetic world of --num_patients is synthesized and built in a temporary
directory first. Each size runs in a fresh process (so its peak RSS is its own) on the first n
train members; tuning and held-out stay whole. Prints one row per size.
"""

import os
import resource
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
from lmm_jax import conventions
from lmm_jax import workers
from lmm_jax.baselines import features
from lmm_jax.baselines import runner
# pylint: enable=wrong-import-position

_DATA_DIR = flags.DEFINE_string("data_dir", None, "A built dataset (default: synthesize one).")
_NUM_PATIENTS = flags.DEFINE_integer("num_patients", 6000, "Patients to synthesize.")
_SIZES = flags.DEFINE_list("sizes", ["250", "500", "1000", "2000"], "Train members per run "
                           "(capped at the train split's size).")
_THREADS = flags.DEFINE_integer("num_threads", 1, "LightGBM / BLAS threads.")


def _one(job: tuple[str, int, int]) -> tuple:
  data_dir, n, num_threads = job
  data = {s: features.load_split(data_dir, s, progress=False) for s in conventions.SPLITS}
  data[conventions.TRAIN] = data[conventions.TRAIN].subset(n)
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    summary = runner.run_baselines(data_dir, workdir, data=data, num_threads=num_threads,
                                   progress=False)
    total = time.perf_counter() - start
  peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return (len(data[conventions.TRAIN]), summary["members"][conventions.HELD_OUT], total,
          peak_mib, summary["seconds"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  tmp = None
  data_dir = _DATA_DIR.value
  if data_dir is None:
    # Imported here, not at the top: each size's spawned process re-imports this module, and the
    # synthesizer's imports would count in the baselines' peak memory.
    from data_prep.configs import build_dataset as build_config  # pylint: disable=g-import-not-at-top
    from lmm_jax.data import build  # pylint: disable=g-import-not-at-top
    from lmm_jax.synth import synthesize  # pylint: disable=g-import-not-at-top
    tmp = tempfile.TemporaryDirectory()
    start = time.perf_counter()
    synthesize(os.path.join(tmp.name, "meds"), num_patients=_NUM_PATIENTS.value, seed=0,
               progress=False)
    config = build_config.get_config()
    config.progress = False
    data_dir = os.path.join(tmp.name, "data")
    build.build_dataset(os.path.join(tmp.name, "meds"), data_dir, config)
    print(f"synthesized and built {_NUM_PATIENTS.value} patients in "
          f"{time.perf_counter() - start:.1f} s")
  header = None
  for n in sorted({int(s) for s in _SIZES.value}):
    # A fresh process per size; its error or death (out of memory) ends the benchmark.
    with workers.ProcessPool(1) as pool:
      n_train, n_test, total, peak, seconds = list(pool.imap(
          _one, [(data_dir, n, _THREADS.value)], lambda job: f"fitting on {job[1]} members"))[0]
    if header is None:
      header = list(seconds)
      print(f"{'train':>6} {'held_out':>8} {'total_s':>8} {'peak_MiB':>9} " +
            " ".join(f"{k:>{max(9, len(k))}}" for k in header))
    print(f"{n_train:>6} {n_test:>8} {total:>8.2f} {peak:>9.0f} " +
          " ".join(f"{seconds.get(k, 0.0):>{max(9, len(k))}.2f}" for k in header))
    if n_train < n:
      break  # the train split holds no more members
  if tmp is not None:
    tmp.cleanup()


if __name__ == "__main__":
  app.run(main)
