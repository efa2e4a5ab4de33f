"""The oracle's Rao-Blackwellized condition probabilities (sim.Sink rao_blackwell): unbiased for
the plain 0/1 case outcome of the same roll-outs, with a much smaller standard error; and the
oracle's own random stream leaves the MEDS data untouched."""

from __future__ import annotations

import glob
import hashlib
import os

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from lmm_jax import conditions as cond_lib
from lmm_jax.synth import codes as code_lib
from lmm_jax.synth import model as world
from lmm_jax.synth import sim
from lmm_jax.synth import synthesize

_C = cond_lib.NUM_CONDITIONS


@pytest.fixture(scope="module")
def rollouts():
  """300 people simulated for two years, then 120 roll-outs of the third from the same state."""
  n, reps, years = 300, 120, 2
  cal = sim.Calendar(2016, 12 * (years + 1))
  st = world.new_population(n, 2016, np.random.default_rng(21))
  rng = np.random.default_rng(22)
  hist = sim.Sink(n, years, 0, rng, emit=False)
  for t in range(12 * years):
    sim.step(st, t, cal, rng, hist, sim.MemberEvents())
  base = st.take(np.flatnonzero(st.alive))
  m = len(base.female)
  t0 = 12 * years
  ind, prob = [], []
  for _ in range(reps // 60):
    rep = base.take(np.tile(np.arange(m), 60))
    rep.enrolled[:] = True
    sink = sim.Sink(m * 60, 1, t0, rng, emit=False, rao_blackwell=True)
    for t in range(t0, t0 + 12):
      sim.step(rep, t, cal, rng, sink, None)
    ind.append(((sink.case[0][:, None] >> np.arange(_C)) & 1).reshape(60, m, _C))
    prob.append(sink.case_probability().reshape(60, m, _C))
  return np.concatenate(ind).astype(np.float64), np.concatenate(prob)


def test_codes_gated_by_coding_draws_carry_no_condition():
  """The minor diagnoses written where no condition was coded depend on the coding draws, so the
  estimator's exactness needs them to count for no condition."""
  for ids in (code_lib.MINOR_POOLS.ids, code_lib.ACUTE_MINOR):
    assert not code_lib.CONDITION_BITS[ids].any()


def test_rao_blackwellized_probability_is_unbiased_for_the_case_outcome(rollouts):
  ind, prob = rollouts   # [R, m, C]
  # Pathwise: a case has positive conditional probability, and a zero probability never fires.
  assert np.all(prob[ind == 1] > 0)
  assert np.all((prob >= 0) & (prob <= 1))
  # E[indicator - probability] = 0: the expected number of cases per condition, paired by roll-out.
  # Given the non-coding draws the indicator is Bernoulli(probability), independent over members,
  # so Var(sum of differences) = E[sum p (1 - p)]: an exact SE that rare rule-out cases (which a
  # sample SD of 120 roll-outs misses) cannot make too small.
  d = (ind - prob).sum(1)                                        # [R, C]
  reps = len(d)
  se = np.sqrt((prob * (1 - prob)).sum(1).mean(0) / reps)
  z = d.mean(0) / se
  assert np.all(np.abs(z) < 4), dict(zip(cond_lib.CONDITION_NAMES, z.round(2)))
  total = d.sum(1)
  assert abs(total.mean()) < 4 * np.sqrt((prob * (1 - prob)).sum((1, 2)).mean() / reps)


def test_rao_blackwellized_probability_has_a_smaller_standard_error(rollouts):
  ind, prob = rollouts
  var_ind, var_rb = ind.var(0), prob.var(0)                      # per member and condition
  # Rao-Blackwell: never larger in expectation. Summed over pairs about half (measured 0.54); per
  # pair with a case, median 0.77: the onsets and visits that stay sampled carry the rest.
  assert var_rb.sum() < 0.7 * var_ind.sum(), (var_rb.sum(), var_ind.sum())
  some = var_ind > 0
  assert np.median(var_rb[some] / var_ind[some]) < 0.9
  # Pairs with no case in any roll-out (the plain estimate is 0) still get a positive probability.
  none = ind.sum(0) == 0
  assert np.mean(prob.mean(0)[none] > 0) > 0.3


def _data_digests(root: str) -> dict[str, str]:
  """sha256 of each MEDS data file's rows as CSV: the content, not the parquet bytes (those carry
  the writing pyarrow's version)."""
  out = {}
  for path in sorted(glob.glob(os.path.join(root, "data", "**", "*.parquet"), recursive=True)):
    csv = pl.from_arrow(pq.read_table(path)).write_csv()
    out[os.path.relpath(path, root)] = hashlib.sha256(csv.encode()).hexdigest()
  return out


# Content digests of the MEDS data files of this world written by main's code before the
# Rao-Blackwellized oracle (commit 38f42dd, with 8 / 2 roll-outs): the oracle draws from its own
# stream, so they must not change.
_MAIN_DIGESTS = {
    "data/held_out/0.parquet": "a777b200e08db8208e5df9b156a831beede17cb4a13cc82c328e43e0d9a26f33",
    "data/held_out/1.parquet": "ca4d1dbe58c541198c46957bbb4fb50c8f1c25a66397b84ab34b4f90bc1a6efb",
    "data/train/0.parquet": "177203f36bea1ef96dc7954301751c6c5b8627af75fca947c98595a501ac15be",
    "data/train/1.parquet": "b6e977e71450a40be2ee72ff62ad75f6005dde5e5d529c0ba3532c8735f10d83",
    "data/tuning/0.parquet": "e17454cc425d4b61caca90eb48a059104a279b2a2cd298146c0d891d5c46341a",
    "data/tuning/1.parquet": "41bb9fd07235c089688206599547915899f80dd38cb545dcc78353b2206b755c",
}


def test_meds_data_do_not_depend_on_the_oracle(tmp_path):
  # main's digests were written with 8 / 2 roll-outs: other oracle settings, the same data.
  synthesize(str(tmp_path), num_patients=400, seed=3, patients_per_shard=200, num_workers=1,
             oracle_rollouts=2, oracle_rollouts_other=1, progress=False)
  assert _data_digests(str(tmp_path)) == _MAIN_DIGESTS
