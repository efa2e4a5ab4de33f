"""The world's dynamics and label rule, measured on the simulator's own output (numpy only)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from lmm_jax import conditions as cond_lib
from lmm_jax.synth import codes as code_lib
from lmm_jax.synth import model as world
from lmm_jax.synth import sim
from lmm_jax.synth import writer

FIRST_YEAR, YEARS = 2016, 4


def _run(n: int, seed: int, years: int = YEARS):
  """Simulates n people for `years` years; returns the final state, the sink and the MEDS rows."""
  cal = sim.Calendar(FIRST_YEAR, 12 * years)
  st = world.new_population(n, FIRST_YEAR, np.random.default_rng(seed))
  rng = np.random.default_rng(seed + 1)
  sink = sim.Sink(n, years, 0, rng, emit=True)
  members = sim.MemberEvents()
  for t in range(12 * years):
    sim.step(st, t, cal, rng, sink, members)
  table = writer._rows_table(np.arange(n, dtype=np.int64), st, sink, members)
  return st, sink, table, cal


@pytest.fixture(scope="module")
def small_world():
  return _run(3000, 5)


def test_sink_case_bits_are_the_label_rule_on_the_written_claims(small_world):
  """The oracle counts cases with the Sink; the labels apply conditions.case_flags to the MEDS
  rows. Both must agree exactly, person by person and year by year."""
  _, sink, table, cal = small_world
  sid = table.column("subject_id").to_numpy()
  code = np.array(table.column("code").to_pylist(), object)
  t = table.column("time").cast(pa.int64()).to_numpy(zero_copy_only=False)
  claim = table.column("claim_id").fill_null(-1).to_numpy()
  is_dx = np.array([c.startswith("ICD10CM//") for c in code])
  ctype_of = {}
  for c, cl in zip(code, claim):
    if c.startswith("CLAIM//"):
      ctype_of[cl] = c[len("CLAIM//"):]
  flags = np.array([cond_lib.condition_flags([c[9:]]) for c in code[is_dx]])
  day = (t[is_dx] // (86_400 * 10**6)).astype(np.int64)
  dsid, dclaim = sid[is_dx], claim[is_dx]
  ctypes = np.array([ctype_of.get(c, "") for c in dclaim], object)
  year_start = cal.start[::12]
  checked = 0
  for y in range(YEARS):
    in_y = (day >= year_start[y]) & (day < (year_start[y + 1] if y + 1 < YEARS else 10**9))
    for p in np.unique(dsid[in_y])[:400]:
      rows = in_y & (dsid == p)
      want = cond_lib.case_flags(flags[rows], ctypes[rows], day[rows])
      got = (sink.case[y, p] >> np.arange(cond_lib.NUM_CONDITIONS)) & 1
      np.testing.assert_array_equal(got, want, err_msg=f"person {p} year {y}")
      checked += int(want.sum())
  assert checked > 500


def test_rule_out_codes_alone_rarely_make_a_case(small_world):
  """Any-code flags exceed case flags, most for the conditions rule-outs are coded for."""
  st, sink, _, _ = small_world
  y = YEARS - 1
  anyc = (sink.bits[y][:, None] >> np.arange(cond_lib.NUM_CONDITIONS)) & 1
  case = (sink.case[y][:, None] >> np.arange(cond_lib.NUM_CONDITIONS)) & 1
  assert np.all(case <= anyc)
  absent = ~st.present[:, :cond_lib.NUM_CONDITIONS]
  # Without the disease, a condition's code is a rule-out; alone, it rarely makes a case.
  assert anyc[absent].sum() > 20 and anyc[absent].sum() > 4 * case[absent].sum()
