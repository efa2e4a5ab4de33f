"""The world's dynamics and label rule, measured on the simulator's own output (numpy only)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
import pytest

from lmm_jax import conditions as cond_lib
from lmm_jax.synth import calibration
from lmm_jax.synth import codes as code_lib
from lmm_jax.synth import model as world
from lmm_jax.synth import sim
from lmm_jax.synth import writer
from tests.synth.test_synthesize import _member_years, _read_all

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
  # Absent at the end of the year, of a condition that does not remit (so never present in it).
  absent = ~st.present[:, :cond_lib.NUM_CONDITIONS] & (world.REMISSION[:cond_lib.NUM_CONDITIONS] == 0)
  # Without the disease, a condition's code is a rule-out; alone, it rarely makes a case.
  assert anyc[absent].sum() > 20 and anyc[absent].sum() > 4 * case[absent].sum()


def _stays(sink):
  return tuple(np.concatenate(x) for x in zip(*sink.stays))


def test_readmissions_cluster_in_the_30_days_after_discharge(small_world):
  _, sink, _, cal = small_world
  pidx, admit, discharge, age, _ = _stays(sink)
  order = np.lexsort((admit, pidx))
  p, a, d = pidx[order], admit[order], discharge[order]
  same = p[1:] == p[:-1]
  gap = (a[1:] - d[:-1])[same]
  early, late = np.sum((gap >= 0) & (gap < 30)), np.sum((gap >= 150) & (gap < 180))
  assert early > 4 * max(late, 1), (early, late)
  parts = calibration.chunk_parts(sink, small_world[0], np.full((YEARS, len(sink.cost[0])), 12,
                                                                np.int8), cal, YEARS - 1)
  rate = parts["readmit_30_65"] / parts["stays_65"]
  assert parts["stays_65"] > 100 and 0.1 < rate < 0.32, (parts["stays_65"], rate)


def test_top_decile_persistence_is_below_one_half_but_well_above_chance(small_world):
  _, sink, _, _ = small_world
  pairs = np.stack([sink.cost[YEARS - 2], sink.cost[YEARS - 1]], 1)
  pairs = pairs[(pairs > 0).all(1)]   # alive and in claims both years
  share = calibration.persistence(pairs)
  assert 0.2 < share < 0.5, share


def test_spending_ramps_up_before_death(small_world):
  st, sink, _, _ = small_world
  pidx, day, _, _, cost, _, _ = (np.concatenate(x) for x in zip(*sink.parts))
  dead = ~st.alive
  before = (st.death_day[pidx] - day)[dead[pidx]]
  c = cost[dead[pidx]]
  last3 = c[(before >= 0) & (before < 91)].sum()
  months10_12 = c[(before >= 273) & (before < 365)].sum()
  assert dead.sum() > 50 and last3 > 2.5 * months10_12, (dead.sum(), last3, months10_12)


def _forced(n: int, condition: str, seed: int) -> world.State:
  """People aged 60-80 who all have `condition` (for hazard tests with enough events)."""
  rng = np.random.default_rng(seed)
  st = world.new_population(n, FIRST_YEAR, rng)
  st.birth_mi = -(12 * rng.integers(60, 80, n)).astype(np.int32)
  k = world.LATENT_INDEX[condition]
  st.present[:, k] = True
  st.onset[:, k] = -(rng.integers(0, 20 * 12, n)).astype(np.int32)
  st.alive[:] = True
  st.enrolled[:] = True
  st.join_mi[:] = 0
  return st


def test_refill_gaps_precede_heart_failure_exacerbations():
  n, months = 4000, 24
  st = _forced(n, "heart_failure", 3)
  st.hf_sev[:] = 2
  cal = sim.Calendar(FIRST_YEAR, months)
  rng = np.random.default_rng(4)
  sink = sim.Sink(n, 2, 0, rng, emit=True)
  gap_months, exac = [], []
  hf = world.GAP_CONDITIONS.index("heart_failure")
  for t in range(months):
    gap = st.rx_gap[:, hf].copy()
    alive = st.alive.copy()
    sink.stays.clear()
    sim.step(st, t, cal, rng, sink, None)
    got = np.zeros(n, bool)
    if sink.stays:
      p, _, _, _, principal = _stays(sink)
      got[p[np.isin(principal, code_lib.HF_ACUTE)]] = True
    gap_months.append(gap[alive])
    exac.append(got[alive])
  gap_months, exac = np.concatenate(gap_months), np.concatenate(exac)
  with_gap, without = exac[gap_months >= 0.9].mean(), exac[gap_months == 0].mean()
  assert exac.sum() > 200 and with_gap > 1.3 * without, (exac.sum(), with_gap, without)


def test_diabetes_complications_rise_with_duration():
  n = 8000
  st = _forced(n, "diabetes_t2", 5)
  st.dm_sev[:] = 1
  st.ckd_stage[:] = 0
  years = -st.onset[:, world.LATENT_INDEX["diabetes_t2"]] / 12.0
  before = st.dm_sev.copy()
  world.progress(st, 1.0, np.random.default_rng(6), 0)
  up = st.dm_sev > before
  short, long = up[years < 3].mean(), up[years > 12].mean()
  assert long > 2.0 * short, (short, long)


def test_codes_are_diverse_and_long_tailed(small_world):
  _, _, table, _ = small_world
  code = table.column("code")
  icd = np.array([c for c in code.unique().to_pylist() if c.startswith("ICD10CM//")])
  counts = np.array(table.filter(pa.compute.starts_with(code, "ICD10CM//")).column(
      "code").value_counts().field("counts").to_pylist())
  assert len(icd) > 1000, len(icd)
  counts = np.sort(counts)[::-1]
  # Long tail: the top 10% of codes hold most rows, and many codes are rare.
  assert counts[:len(counts) // 10].sum() > 0.6 * counts.sum() and np.mean(counts <= 3) > 0.2
  for pool in range(world.NUM_LATENT):
    ids = code_lib.ALT_POOLS.pool(pool)
    assert len(ids) >= 1 and len(set(ids.tolist())) == len(ids)
    if pool < cond_lib.NUM_CONDITIONS:
      for i in ids:
        assert cond_lib.conditions_of(code_lib.CODES[i][9:]) == (pool,), code_lib.CODES[i]


def test_winter_peak_of_copd_exacerbations():
  n, months = 3000, 24
  st = _forced(n, "copd", 7)
  cal = sim.Calendar(FIRST_YEAR, months)
  rng = np.random.default_rng(8)
  sink = sim.Sink(n, 2, 0, rng, emit=True)
  for t in range(months):
    sim.step(st, t, cal, rng, sink, None)
  _, admit, _, _, principal = _stays(sink)
  month = np.array(admit.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64) % 12)
  by_month = np.bincount(month[principal == code_lib.COPD_EXAC], minlength=12)
  winter, summer = by_month[[11, 0, 1]].sum(), by_month[[5, 6, 7]].sum()
  assert summer > 20 and winter > 1.4 * summer, by_month


def test_oracle_columns_standard_errors_and_label_probabilities(tiny_meds_dir):
  """The oracle's p_* estimate the CCW-rule label: over members covered all of the target year
  their sum matches the realized labels; held-out rows have the precise (256 roll-out) oracle."""
  oracle = pq.read_table(f"{tiny_meds_dir}/ground_truth/oracle.parquet")
  splits = pq.read_table(f"{tiny_meds_dir}/metadata/subject_splits.parquet")
  split = dict(zip(splits.column("subject_id").to_pylist(), splits.column("split").to_pylist()))
  sid = oracle.column("subject_id").to_numpy()
  r = oracle.column("oracle_rollouts").to_numpy()
  held = np.array([split[s] == "held_out" for s in sid])
  assert held.any() and np.all(r[held] == 256) and np.all(r[~held] == 16)
  cost, se = oracle.column("expected_cost").to_numpy(), oracle.column("expected_cost_se").to_numpy()
  assert np.all(se >= 0) and np.median(se[held] / np.maximum(cost[held], 1)) < 0.15
  med = oracle.column("median_cost").to_numpy()
  assert np.all(oracle.column("median_cost_se").to_numpy() >= 0) and np.median(med - cost) < 0
  # Rao-Blackwellized probabilities: their SE is the roll-outs' SD / sqrt(R), at most that of a
  # Bernoulli count (0.5 / sqrt(R - 1)), and below the count's binomial SE on average.
  for c in cond_lib.CONDITION_NAMES:
    p, p_se = oracle.column(f"p_{c}").to_numpy(), oracle.column(f"p_{c}_se").to_numpy()
    assert np.all((p >= 0) & (p <= 1)) and np.all(p_se <= 0.5 / np.sqrt(r - 1) + 1e-6)
    assert p_se.mean() <= np.sqrt(p * (1 - p) / r).mean() + 1e-6, c
  # Realized labels of the target year, by the rule, against the oracle's expectation.
  subjects, _, _, _, covered = _member_years(tiny_meds_dir, 2022)
  table = _read_all(tiny_meds_dir)
  code = np.array(table.column("code").to_pylist(), object)
  day = table.column("time").cast(pa.int64()).fill_null(0).to_numpy() // (86_400 * 10**6)
  claim = table.column("claim_id").fill_null(-1).to_numpy()
  rows_sid = table.column("subject_id").to_numpy()
  y0 = (np.datetime64("2022-01-01") - np.datetime64("1970-01-01")).astype(int)
  ctype = {cl: c[7:] for c, cl in zip(code, claim) if c.startswith("CLAIM//")}
  keep = (day >= y0) & (day < y0 + 365) & np.array([c.startswith("ICD10CM//") for c in code])
  by_subject: dict[int, list[int]] = {}
  for i in np.flatnonzero(keep):
    by_subject.setdefault(int(rows_sid[i]), []).append(i)
  pos = {int(s): k for k, s in enumerate(sid)}
  expected = observed = 0.0
  for s in subjects[covered]:
    if int(s) not in pos:
      continue
    rows = by_subject.get(int(s), [])
    flags = np.array([cond_lib.condition_flags([code[i][9:]]) for i in rows]).reshape(
        len(rows), cond_lib.NUM_CONDITIONS)
    observed += cond_lib.case_flags(flags, [ctype.get(claim[i], "") for i in rows],
                                    day[rows]).sum()
    expected += sum(float(oracle.column(f"p_{c}")[pos[int(s)]].as_py())
                    for c in cond_lib.CONDITION_NAMES)
  assert observed > 100 and abs(expected - observed) < 0.15 * observed, (expected, observed)
