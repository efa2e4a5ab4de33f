"""Per-claim cost reconstruction error of the cost tokens: quantile bins (old) vs log bins (new).

  python benchmarks/bench_cost_bins.py [--num_patients=8000] [--workdir=/tmp/lmm_bench]

Synthesizes the demo world (`lmm_jax.synth.synthesize`, seed 0; reused when present), sums each
claim's COST//ALLOWED rows as the builder does, fits each scheme's edges and bin values (the mean
train cost of the claims in a bin, `tokenizer.finalize`) on train claims and reports, on held-out
claims, the mean absolute error and the mean relative error |bin value - cost| / cost of the bin
value against the true claim cost, over all claims and over claims above $10k, plus the largest
used bin's value and the error of the total dollars.
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lmm_jax import conventions  # pylint: disable=wrong-import-position
from lmm_jax.data import tokenizer as tok_lib  # pylint: disable=wrong-import-position
from lmm_jax.synth import synthesize  # pylint: disable=wrong-import-position

_PATIENTS = flags.DEFINE_integer("num_patients", 8000, "synthetic patients (demo: 8000)")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/lmm_bench", "where the world is written")

SCHEMES = {"quantile, 20 bins (before)": ("quantile", 20),
           "log $1-$500k, 40 bins (after)": ("log", 40)}


def claim_costs(meds_dir: str, split: str) -> np.ndarray:
  """float64[claims]: each claim's summed allowed cost."""
  t = pq.read_table(os.path.join(meds_dir, "data", split),
                    columns=["subject_id", "time", "code", "numeric_value", "claim_id"])
  t = t.filter(pc.equal(t["code"], conventions.COST_ALLOWED_CODE))
  g = t.group_by(["subject_id", "time", "claim_id"]).aggregate([("numeric_value", "sum")])
  return np.asarray(g["numeric_value_sum"], np.float64)


def errors(edges: list[float], train: np.ndarray, test: np.ndarray) -> dict[str, float]:
  edges_E = np.asarray(edges, np.float64)
  nb = len(edges_E) + 1
  b_train = np.searchsorted(edges_E, train, side="right")
  sums = np.bincount(b_train, train, minlength=nb)
  counts = np.bincount(b_train, minlength=nb)
  value_B = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
  b_test = np.searchsorted(edges_E, test, side="right")
  rec = value_B[b_test]
  err = np.abs(rec - test)
  big = test > 10_000
  pos = test > 0
  return {"bins": nb, "mae": err.mean(), "rel": (err[pos] / test[pos]).mean(),
          "mae_10k": err[big].mean(), "rel_10k": (err[big] / test[big]).mean(),
          "top_bin_value": value_B[counts > 0][-1], "dollar_error": abs(rec.sum() - test.sum()) / test.sum()}


def main(argv):
  del argv
  meds = os.path.join(_WORKDIR.value, f"meds{_PATIENTS.value}")
  if not os.path.isdir(os.path.join(meds, "data")):
    synthesize(meds, _PATIENTS.value, 0, progress=False)
  train, test = claim_costs(meds, conventions.TRAIN), claim_costs(meds, conventions.HELD_OUT)
  print(f"{_PATIENTS.value} patients: {train.size} train claims, {test.size} held-out claims "
        f"({int((test > 10_000).sum())} above $10k)")
  print("| scheme | bins | MAE $ | mean rel. error | MAE $ (> $10k) | rel. error (> $10k) | "
        "top used bin value $ | total $ error |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|")
  for name, (spacing, nb) in SCHEMES.items():
    r = errors(tok_lib.cost_edges(spacing, nb, train), train, test)
    print(f"| {name} | {r['bins']} | {r['mae']:.0f} | {r['rel']:.1%} | {r['mae_10k']:.0f} | "
          f"{r['rel_10k']:.1%} | {r['top_bin_value']:.0f} | {r['dollar_error']:.2%} |")


if __name__ == "__main__":
  app.run(main)
