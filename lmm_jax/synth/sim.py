"""One month of the world: enrollment, disease dynamics, acute events, deaths and the claims.

`step` advances a `model.State` by one calendar month and hands every claim to a `Sink`, which
either keeps the claims for the MEDS writer (the observed history) or only totals the allowed cost
and the conditions coded per person (the oracle's roll-outs). Both paths run the same code.

A roll-out sink with `rao_blackwell=True` also accumulates, per person and target condition, the
probability that the year's claims meet the case rule given everything the roll-out drew except
the coding draws (which conditions a claim's diagnosis columns carry, the rule-out picks, whether a
claim is missing from the feed): those draws feed nothing but the claims' codes, so integrating
them out exactly leaves an unbiased, lower-variance estimate of the label probability
(docs/synthetic_world.md, "Oracle"). It draws no extra random numbers.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lmm_jax.synth import codes as code_lib
from lmm_jax.synth import model as world

NUM_LATENT = world.NUM_LATENT
LATENT_INDEX = world.LATENT_INDEX
_AR_K = np.arange(NUM_LATENT)
PRIO_START, PRIO_CLAIM, PRIO_DEATH, PRIO_END = 1, 2, 3, 4
_REMISSION_MONTH = (1 - (1 - world.REMISSION[world.REMITTING]) ** (1 / 12)).astype(np.float32)


@dataclasses.dataclass
class Calendar:
  """Month grid of the simulation: first day (days since 1970-01-01) and length of each month."""
  first_year: int
  num_months: int

  def __post_init__(self):
    months = np.arange(np.datetime64(f"{self.first_year}-01", "M"),
                       np.datetime64(f"{self.first_year}-01", "M") + self.num_months + 1)
    days = months.astype("datetime64[D]").astype(np.int64)
    self.start = days[:-1]
    self.length = np.diff(days)


_AR_C = np.arange(world.NUM_TARGET)
_C = world.NUM_TARGET


def _bit_matrix(bits: np.ndarray) -> np.ndarray:
  """float64 [..., C]: 1 where the condition bit is set."""
  return ((np.asarray(bits)[..., None] >> _AR_C) & 1).astype(np.float64)


def _pool_bit_p(pools: code_lib.Pools) -> np.ndarray:
  """float64 [pools, C]: probability that a draw of each pool (Pools.draw) counts for condition c:
  Pools.draw picks entry i of pool k when cdf_{i-1} <= u < cdf_i, so entry i has weight
  cdf_i - cdf_{i-1}."""
  out = np.zeros((len(pools.offset) - 1, _C))
  for k in range(len(out)):
    lo, hi = pools.offset[k], pools.offset[k + 1]
    w = np.diff(np.r_[0.0, pools.cdf[lo:hi] - k])
    out[k] = w @ _bit_matrix(code_lib.CONDITION_BITS[pools.ids[lo:hi]])
  return out


ALT_BIT_P = _pool_bit_p(code_lib.ALT_POOLS)                        # [NUM_LATENT, C]
RULE_OUT_BIT_P = code_lib.RULE_OUT_P @ _bit_matrix(code_lib.CONDITION_BITS[code_lib.RULE_OUT])
_F32_ULP = 2.0 ** -24   # Generator.random(dtype=float32) returns k / 2^24, k uniform in [0, 2^24)


def _p_below_f32(p: np.ndarray) -> np.ndarray:
  """P(u < p) exactly for a float32 uniform u (p float32): ceil(p 2^24) / 2^24."""
  return np.minimum(np.ceil(np.asarray(p, np.float64) / _F32_ULP) * _F32_ULP, 1.0)


class SoftCodes:
  """Coding probabilities of one claim column: rows, conditions and log P(not coded) per entry."""
  __slots__ = ("rows", "conds", "log_not")

  def __init__(self, rows: np.ndarray, conds: np.ndarray, log_not: np.ndarray):
    self.rows, self.conds, self.log_not = rows, conds, log_not


class Sink:
  """Receives claims; totals cost, the coded target conditions (`bits`) and the conditions that
  meet their CCW-style case rule (`case`, lmm_jax.conditions.CaseRule) per person and year."""

  def __init__(self, n: int, num_years: int, first_month: int, rng: np.random.Generator,
               emit: bool, rao_blackwell: bool = False):
    if rao_blackwell and (emit or num_years != 1):
      raise ValueError("rao_blackwell is for the oracle's roll-out sinks (emit=False, one year)")
    self.n = n
    self.rao_blackwell = rao_blackwell
    # Rao-Blackwellized case rule: log P(no single-type claim codes c) per (person, condition) and
    # the (key, day, log P(claim does not code c)) entries of the other claims.
    self.log_none_single = np.zeros(n * _C) if rao_blackwell else None
    self.soft_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    self.first_month = first_month
    self.rng = rng
    self.emit = emit
    self.cost = np.zeros((num_years, n), np.float64)
    self.bits = np.zeros((num_years, n), np.int32)
    self.case = np.zeros((num_years, n), np.int32)
    # Day of the first qualifying claim per (person, condition) and year (-1: none yet).
    self.first_day = np.full((num_years, n * world.NUM_TARGET), -1, np.int32)
    self.parts: list[tuple[np.ndarray, ...]] = []
    self.stays: list[tuple[np.ndarray, ...]] = []   # person, admit, discharge, age, principal
    self.dropped = 0

  def add(self, t: int, pidx: np.ndarray, day: np.ndarray, ctype: int, pos: int,
          cost: np.ndarray, codes_MxW: np.ndarray,
          soft: tuple[np.ndarray, list[SoftCodes]] | None = None) -> None:
    """A batch of claims of one claim type and place of service. soft (rao_blackwell sinks):
    the condition bits of the columns drawn without coding randomness and the coding
    probabilities of the others (_Month.emit)."""
    m = len(pidx)
    if m == 0:
      return
    if self.rao_blackwell:
      self._soft_add(pidx, day, ctype, *soft)
    keep = self.rng.random(m) >= world.P_MISSING_CLAIM   # claims missing from the data feed
    self.dropped += int(m - keep.sum())
    pidx, day, cost, codes_MxW = pidx[keep], day[keep], cost[keep], codes_MxW[keep]
    y = (t - self.first_month) // 12
    self.cost[y] += np.bincount(pidx, weights=cost, minlength=self.n)
    claim_bits = np.bitwise_or.reduce(code_lib.CONDITION_BITS[codes_MxW], axis=1)
    np.bitwise_or.at(self.bits[y], pidx, claim_bits)
    self._cases(y, pidx, day, claim_bits & code_lib.CASE_SINGLE_BITS[ctype], claim_bits)
    if self.emit:
      # A code is listed once per claim (a principal diagnosis may also be drawn as a secondary).
      order = np.argsort(codes_MxW, axis=1, kind="stable")
      srt = np.take_along_axis(codes_MxW, order, axis=1)
      dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
      if dup.any():
        codes_MxW = codes_MxW.copy()
        rows = np.nonzero(dup)[0]
        codes_MxW[rows, order[:, 1:][dup]] = -1
      valid = codes_MxW >= 0
      self.parts.append((pidx.astype(np.int32), day.astype(np.int64),
                         np.full(len(pidx), ctype, np.int32), np.full(len(pidx), pos, np.int32),
                         cost.astype(np.float32), valid.sum(1).astype(np.int32),
                         codes_MxW[valid].astype(np.int32)))

  def stay(self, pidx: np.ndarray, admit: np.ndarray, discharge: np.ndarray, age: np.ndarray,
           principal: np.ndarray) -> None:
    """Inpatient stays (kept only when emitting, for the calibration figures)."""
    if self.emit and len(pidx):
      self.stays.append((pidx.astype(np.int32), admit.astype(np.int64),
                         discharge.astype(np.int64), age.astype(np.float32),
                         principal.astype(np.int32)))

  def _soft_add(self, pidx: np.ndarray, day: np.ndarray, ctype: int, hard_bits: np.ndarray,
                soft: list[SoftCodes]) -> None:
    """Per claim and condition, P(the claim is in the feed and codes c) = (1 - P_missing) x
    (1 - prod over its columns of P(column does not code c)): the columns' coding draws are
    independent given the rest of the roll-out."""
    hr, hc = np.nonzero((hard_bits[:, None] >> _AR_C) & 1)
    rows = np.concatenate([hr] + [x.rows for x in soft])
    if not len(rows):
      return
    conds = np.concatenate([hc] + [x.conds for x in soft])
    log_not = np.concatenate([np.full(len(hr), -np.inf)] + [x.log_not for x in soft])
    key, inv = np.unique(rows.astype(np.int64) * _C + conds, return_inverse=True)
    log_not_claim = np.bincount(inv.ravel(), weights=log_not, minlength=len(key))
    q = (1.0 - world.P_MISSING_CLAIM) * -np.expm1(log_not_claim)
    r, c = key // _C, key % _C
    pkey = pidx[r].astype(np.int64) * _C + c
    with np.errstate(divide="ignore"):   # q = 1: log 0 = -inf, the claim surely codes c
      log_miss = np.log1p(-q)
    single = ((code_lib.CASE_SINGLE_BITS[ctype] >> c) & 1).astype(bool)
    np.add.at(self.log_none_single, pkey[single], log_miss[single])
    other = ~single
    self.soft_parts.append((pkey[other], day[r[other]].astype(np.int64), log_miss[other]))

  def case_probability(self) -> np.ndarray:
    """float64 [n, C]: P(the case rule is met in the year | the roll-out's non-coding draws).

    No case = no single-type claim codes c (prob exp(log_none_single)) and the other claims coding
    c fall on at most one day; with a_d = P(some claim of day d codes c), independent over days,
    P(<= 1 day) = P0 + P1 with P0 = prod(1 - a_d), P1 = sum_d a_d prod_{d' != d}(1 - a_d'),
    accumulated day by day."""
    p0 = np.ones(self.n * _C)
    p1 = np.zeros(self.n * _C)
    if self.soft_parts:
      key, day, log_not = (np.concatenate(x) for x in zip(*self.soft_parts))
      gkey, inv = np.unique(key * (np.int64(1) << 24) + (day - day.min()), return_inverse=True)
      log_day = np.bincount(inv.ravel(), weights=log_not, minlength=len(gkey))
      a = -np.expm1(log_day)
      gkey = gkey >> 24
      start = np.flatnonzero(np.r_[True, gkey[1:] != gkey[:-1]])
      rank = np.arange(len(gkey)) - np.repeat(start, np.diff(np.r_[start, len(gkey)]))
      order = np.argsort(rank, kind="stable")
      bounds = np.searchsorted(rank[order], np.arange(rank.max() + 2))
      for j in range(rank.max() + 1):   # each key appears at most once per rank
        sel = order[bounds[j]:bounds[j + 1]]
        k, a_j = gkey[sel], a[sel]
        p1[k] = p1[k] * (1 - a_j) + p0[k] * a_j
        p0[k] = p0[k] * (1 - a_j)
    p = 1.0 - np.exp(self.log_none_single) * (p0 + p1)
    return np.clip(p, 0.0, 1.0).reshape(self.n, _C)

  def _cases(self, y: int, pidx: np.ndarray, day: np.ndarray, single: np.ndarray,
             claim_bits: np.ndarray) -> None:
    """A claim of a single-claim type makes a case; else a second qualifying day does."""
    if single.any():
      np.bitwise_or.at(self.case[y], pidx, single)
    r, c = np.nonzero((claim_bits[:, None] >> _AR_C) & 1)
    if not len(r):
      return
    key = pidx[r].astype(np.int64) * world.NUM_TARGET + c
    d = day[r].astype(np.int32)
    order = np.lexsort((d, key))
    key, d = key[order], d[order]
    start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    ukey, dmin = key[start], d[start]
    dmax = np.maximum.reduceat(d, start)
    first = self.first_day[y]
    f = first[ukey]
    new = f < 0
    second = (dmax != dmin) | (~new & (dmin != f)) | (~new & (dmax != f))
    first[ukey[new]] = dmin[new]
    if second.any():
      k2 = ukey[second]
      np.bitwise_or.at(self.case[y], (k2 // world.NUM_TARGET).astype(np.int64),
                       (np.int32(1) << (k2 % world.NUM_TARGET)).astype(np.int32))


@dataclasses.dataclass
class MemberEvents:
  """Member-level rows (enrollment spans, deaths) as parallel lists of arrays."""
  pidx: list = dataclasses.field(default_factory=list)
  day: list = dataclasses.field(default_factory=list)
  code: list = dataclasses.field(default_factory=list)
  prio: list = dataclasses.field(default_factory=list)

  def add(self, pidx: np.ndarray, day, code, prio: int) -> None:
    if len(pidx) == 0:
      return
    self.pidx.append(pidx.astype(np.int32))
    self.day.append(np.broadcast_to(np.asarray(day, np.int64), pidx.shape).copy())
    self.code.append(np.broadcast_to(np.asarray(code, np.int32), pidx.shape).copy())
    self.prio.append(np.full(len(pidx), prio, np.int8))


def _lognorm(rng: np.random.Generator, m: int, sigma: float) -> np.ndarray:
  return np.exp(sigma * rng.standard_normal(m) - 0.5 * sigma * sigma)


def _col(values: np.ndarray | int, m: int) -> np.ndarray:
  return np.broadcast_to(np.asarray(values, np.int32), (m,)).reshape(m, 1)


class _Month:
  """The claims of one month for the people who are covered and alive at its start."""

  def __init__(self, st: world.State, t: int, cal: Calendar, rng: np.random.Generator, sink: Sink,
               age: np.ndarray, death_cap: np.ndarray):
    self.st, self.t, self.rng, self.sink, self.age = st, t, rng, sink, age
    self.month_start = cal.start[t]
    self.month_len = cal.length[t]
    self.death_cap = death_cap   # last day a claim may fall on (death day, or far future)
    # Rao-Blackwellized sinks: coding probabilities of the columns drawn this month, by id (the
    # entry holds the column, so its id is not reused while registered).
    self.soft: dict[int, tuple[np.ndarray, SoftCodes]] | None = (
        {} if sink.rao_blackwell else None)
    self.code_now, self.p_alt = world.current_codes(st, t)
    infl = (1 + world.INFLATION) ** (t / 12.0)
    self.price = world.LOB_PRICE[st.lob] * infl
    self.facility = world.LOB_FACILITY[st.lob] * infl
    self.rx_price = np.array([1.15, 1.0, 0.85])[st.lob] * infl

  def days(self, pidx: np.ndarray) -> np.ndarray:
    d = self.month_start + self.rng.integers(0, self.month_len, len(pidx))
    return np.minimum(d, self.death_cap[pidx])

  def dx(self, pidx: np.ndarray, p_code_K: np.ndarray) -> np.ndarray:
    """int32 [m, K]: the latent conditions coded on these claims (-1 where not coded)."""
    m = len(pidx)
    rng = self.rng
    p_code_K = np.broadcast_to(np.asarray(p_code_K, np.float32), (NUM_LATENT,))
    out = np.full((m, NUM_LATENT), -1, np.int32)
    # Work on the (claim, condition) pairs that are present only: most are not.
    r, c = np.nonzero(self.st.present[pidx] & (p_code_K > 0))
    if self.soft is not None:
      # P(pair codes condition j) = P(coded) [(1 - P(alt)) 1{primary counts for j} + P(alt) x
      # P(an alternative code of the pool counts for j)], with the float32 draws' exact odds.
      who = pidx[r]
      p_alt = _p_below_f32(self.p_alt[who, c])[:, None]
      q = _p_below_f32(p_code_K[c])[:, None] * (
          (1 - p_alt) * _bit_matrix(code_lib.CONDITION_BITS[self.code_now[who, c]])
          + p_alt * ALT_BIT_P[c])
      self._register(out, r, q)
    keep = rng.random(len(r), dtype=np.float32) < p_code_K[c]
    r, c = r[keep], c[keep]
    who = pidx[r]
    use_alt = rng.random(len(r), dtype=np.float32) < self.p_alt[who, c]
    alt = code_lib.ALT_POOLS.draw(c, rng.random(len(r)))
    out[r, c] = np.where(use_alt, alt, self.code_now[who, c])
    return out

  def _register(self, col: np.ndarray, rows: np.ndarray, q_RxC: np.ndarray) -> None:
    """Records P(column codes condition c) for rows (q_RxC [len(rows), C]) of a drawn column."""
    rr, cc = np.nonzero(q_RxC > 0)
    with np.errstate(divide="ignore"):
      log_not = np.log1p(-q_RxC[rr, cc])
    self.soft[id(col)] = (col, SoftCodes(rows[rr], cc, log_not))

  def maybe(self, codes: np.ndarray, p, m: int) -> np.ndarray:
    """A column holding codes (scalar or per-row) with probability p, else -1."""
    codes = np.broadcast_to(np.asarray(codes, np.int32), (m,))
    col = self._maybe(codes, p, m)
    if self.soft is not None:
      bits = _bit_matrix(code_lib.CONDITION_BITS[codes])
      if bits.any():
        self._register(col, np.arange(m), np.broadcast_to(np.asarray(p, np.float64),
                                                          (m,))[:, None] * bits)
    return col

  def _maybe(self, codes: np.ndarray, p, m: int) -> np.ndarray:
    return np.where(self.rng.random(m) < p, codes, -1).reshape(m, 1).astype(np.int32)

  def rule_out(self, m: int, p: float) -> np.ndarray:
    pick = code_lib.RULE_OUT[self.rng.choice(len(code_lib.RULE_OUT), size=m, p=code_lib.RULE_OUT_P)]
    col = self._maybe(pick, p, m)
    if self.soft is not None:   # the pick is a coding draw too: its distribution is RULE_OUT_P
      self._register(col, np.arange(m), np.broadcast_to(p * RULE_OUT_BIT_P, (m, _C)))
    return col

  def emit(self, pidx, ctype: str, pos: str, cols: list[np.ndarray], cost: np.ndarray,
           day: np.ndarray | None = None) -> np.ndarray:
    if len(pidx) == 0:
      return np.zeros(0, np.int64)
    day = self.days(pidx) if day is None else day
    soft = None
    if self.soft is not None:
      hard, soft_cols = np.zeros(len(pidx), np.int32), []
      for col in cols:
        entry = self.soft.pop(id(col), None)
        if entry is not None and entry[0] is col:
          soft_cols.append(entry[1])
        else:   # drawn without coding randomness given the roll-out (or carrying no condition)
          hard |= np.bitwise_or.reduce(code_lib.CONDITION_BITS[col], axis=1)
      soft = (hard, soft_cols)
    self.sink.add(self.t, pidx, day, code_lib.CLAIM_TYPE[ctype], code_lib.POS[pos], cost,
                  np.concatenate(cols, axis=1), soft)
    return day


def _pick(rng: np.random.Generator, table: np.ndarray, m: int) -> np.ndarray:
  return table[rng.integers(0, len(table), m)]


def _minor(rng: np.random.Generator, m: int) -> np.ndarray:
  """Diagnoses of visits not about a chronic condition (Zipf over acute minor codes)."""
  return code_lib.MINOR_POOLS.draw(code_lib.POOL_MINOR, rng.random(m))


def enrollment_step(st: world.State, t: int, cal: Calendar, age: np.ndarray,
                    rng: np.random.Generator, ev: MemberEvents) -> None:
  """Coverage changes at the start of month t: joins, churn out and back, aging into Medicare."""
  n = len(st.female)
  start = cal.start[t]
  prev_end = start - 1
  alive = st.alive
  u = rng.random((4, n))
  leave_p = np.array([0.008, 0.003, 0.014])[st.lob]
  leave = alive & st.enrolled & (u[0] < leave_p)
  if leave.any():
    idx = np.nonzero(leave)[0]
    ev.add(idx, prev_end, np.array(code_lib.ENROLL_END)[st.lob[idx]], PRIO_END)
    st.enrolled[leave] = False
    st.gone[leave] = u[1][leave] < 0.55
  join = alive & ~st.enrolled & ~st.gone & (
      (st.join_mi == t) | ((st.join_mi < t) & ~leave & (u[2] < 0.15)))
  if join.any():
    rejoin = join & (st.join_mi < t)
    st.lob[rejoin] = world.initial_lob(age[rejoin], rng)
    st.enrolled[join] = True
  medicare = alive & st.enrolled & ~join & (st.lob != world.MEDICARE) & (age >= 65)
  if medicare.any():
    idx = np.nonzero(medicare)[0]
    ev.add(idx, prev_end, np.array(code_lib.ENROLL_END)[st.lob[idx]], PRIO_END)
    st.lob[medicare] = world.MEDICARE
  start_now = join | medicare
  if start_now.any():
    idx = np.nonzero(start_now)[0]
    ev.add(idx, start, np.array(code_lib.ENROLL_START)[st.lob[idx]], PRIO_START)
  switch = alive & st.enrolled & ~start_now & (st.lob != world.MEDICARE) & (u[3] < 0.002)
  if switch.any():   # commercial <-> Medicaid, a day's gap free
    idx = np.nonzero(switch)[0]
    ev.add(idx, prev_end, np.array(code_lib.ENROLL_END)[st.lob[idx]], PRIO_END)
    st.lob[switch] = np.where(st.lob[switch] == world.COMMERCIAL, world.MEDICAID, world.COMMERCIAL)
    ev.add(idx, start, np.array(code_lib.ENROLL_START)[st.lob[idx]], PRIO_START)


def step(st: world.State, t: int, cal: Calendar, rng: np.random.Generator, sink: Sink,
         members: MemberEvents | None) -> None:
  """Advances the world by month t. members=None: coverage is held fixed (oracle roll-outs)."""
  n = len(st.female)
  age = ((t - st.birth_mi) / 12.0).astype(np.float32)
  if members is not None:
    enrollment_step(st, t, cal, age, rng, members)
  else:
    st.lob[st.alive & (age >= 65)] = world.MEDICARE
  alive = st.alive
  world.evolve_health(st, 1, rng)

  # --- disease dynamics -------------------------------------------------------------------------
  rate = world.onset_rates(st, age)
  # Monthly probability ~ rate / 12 (rates are capped at 0.6 a year, so the error is < 3%).
  new = alive[:, None] & ~st.present & (rng.random((n, NUM_LATENT), dtype=np.float32) * 12.0 < rate)
  t_row = np.full(n, t, np.int32)
  world.on_onset(st, new, t_row, rng)
  rem = world.REMITTING
  off = alive[:, None] & st.present[:, rem] & (rng.random((n, len(rem)), dtype=np.float32) <
                                               _REMISSION_MONTH)
  st.present[:, rem] &= ~off
  st.onset[:, rem] = np.where(off, world.NEVER, st.onset[:, rem])
  world.progress(st, 1.0 / 12.0, rng, t)

  # --- medication fills: refill gaps of the past months raise this month's hazards --------------
  gap_hr = np.exp(st.rx_gap * world.GAP_LOG_HR)   # [n, 4] before this month's fills
  fills = _fills(st, rng)

  # --- acute events -----------------------------------------------------------------------------
  ev_rate = world.acute_rates(st, age)
  ev_rate[:, world.ACUTE_INDEX["pneumonia"]] *= world.season(t, "respiratory")
  ev_rate[:, world.ACUTE_INDEX["stroke"]] *= gap_hr[:, 2]
  ev = alive[:, None] & (rng.random(ev_rate.shape, dtype=np.float32) <
                         1 - np.exp(-ev_rate / 12))
  util = st.frail * np.where(st.decline, world.DECLINE_UTIL, 1.0)
  hf_exac = alive & (rng.random(n) < world.annual_to_month(
      0.12 * st.hf_sev * util * world.season(t, "heart_failure") * gap_hr[:, 1]))
  copd_exac = alive & st.present[:, LATENT_INDEX["copd"]] & (
      rng.random(n) < world.annual_to_month(0.25 * util * world.season(t, "respiratory")))
  dm_crisis = alive & st.present[:, LATENT_INDEX["diabetes_t2"]] & (
      rng.random(n) < world.annual_to_month(world.DM_CRISIS_RATE * np.where(
          st.dm_sev == 2, 2.0, 1.0) * np.sqrt(util) * gap_hr[:, 0]))
  # Pregnancy: conception by age, delivery in the ninth month.
  fert = np.interp(age, [14, 15, 20, 25, 30, 35, 40, 45, 46],
                   [0, 0.02, 0.07, 0.10, 0.10, 0.05, 0.012, 0.0, 0.0])
  conceive = alive & st.female & (st.preg_start == world.NEVER) & (
      rng.random(n) < world.annual_to_month(fert))
  deliver = alive & (t - st.preg_start == 8)
  st.preg_start[deliver] = world.NEVER
  st.preg_start[conceive] = t
  pregnant = alive & (st.preg_start != world.NEVER) & (t - st.preg_start >= 1)
  stroke, ihd = LATENT_INDEX["stroke"], LATENT_INDEX["ischemic_heart_disease"]
  stroke_ev, mi_ev = ev[:, world.ACUTE_INDEX["stroke"]], ev[:, world.ACUTE_INDEX["mi"]]
  stroke_new = stroke_ev & ~st.present[:, stroke]
  mi_new = mi_ev & ~st.present[:, ihd]
  world.on_onset(st, (stroke_new[:, None] & (_AR_K == stroke)) |
                 (mi_new[:, None] & (_AR_K == ihd)), t_row, rng)
  st.onset[stroke_ev, stroke] = t   # a recurrent stroke restarts the acute phase
  st.last_mi[mi_ev] = t

  # --- mortality --------------------------------------------------------------------------------
  advanced = world.is_advanced(st)
  active_cancer = st.present[:, world.CANCER_IDX] & ((t - st.onset[:, world.CANCER_IDX]) < 12)
  mort = world.chronic_mortality(st, age, advanced, active_cancer)
  # The chronic hazard starts a terminal decline; death follows it (or an acute event's fatality).
  enter = alive & ~st.decline & (rng.random(n) < world.annual_to_month(mort))
  fat = np.array([world.FATALITY[e] for e in world.ACUTE_NAMES]) * np.where(
      age >= 75, 1.5, 1.0)[:, None]
  p_die = 1 - np.where(st.decline, 1 - world.DECLINE_DEATH_MONTH, 1.0) * np.prod(
      np.where(ev, 1 - fat, 1.0), axis=1)
  dies = alive & (rng.random(n) < p_die)
  st.decline |= enter
  death_day = cal.start[t] + rng.integers(0, cal.length[t], n)
  far = np.int64(1) << 40
  death_cap = np.where(dies, death_day, far)

  # --- claims -----------------------------------------------------------------------------------
  covered = alive & (st.enrolled if members is not None else True)
  mo = _Month(st, t, cal, rng, sink, age, death_cap)
  mo.util = st.frail * np.where(st.decline, world.DECLINE_UTIL, 1.0)
  mo.fills = fills
  _claims(mo, covered, ev, hf_exac, copd_exac, dm_crisis, deliver, pregnant, advanced,
          active_cancer)

  # --- deaths -----------------------------------------------------------------------------------
  if dies.any():
    st.alive = alive & ~dies
    st.death_day = np.where(dies, death_day, st.death_day)
    if members is not None:
      idx = np.nonzero(dies)[0]
      members.add(idx, death_day[idx], code_lib.DEATH, PRIO_DEATH)
      ended = dies & st.enrolled
      ie = np.nonzero(ended)[0]
      members.add(ie, death_day[ie], np.array(code_lib.ENROLL_END)[st.lob[ie]], PRIO_END)
      st.enrolled = st.enrolled & ~dies


def _claims(mo: _Month, covered, ev, hf_exac, copd_exac, dm_crisis, deliver, pregnant, advanced,
            active_cancer) -> None:
  st, rng, age, t = mo.st, mo.rng, mo.age, mo.t
  has = st.present
  n_chronic = has[:, :world.NUM_TARGET].sum(1)
  recent_admit = (t - st.last_admit) <= 2
  cov_idx = np.nonzero(covered)[0]

  # Office visits.
  base = np.interp(age, [0, 2, 3, 18, 45, 65, 80], [0.5, 0.5, 0.13, 0.1, 0.13, 0.2, 0.25])
  lam = mo.util * base + has.astype(np.float32) @ world.VISIT_ADD + 0.4 * recent_admit
  lam = lam + 0.3 * active_cancer.any(1)
  nvis = np.minimum(rng.poisson(lam[cov_idx]), 4)
  pidx = np.repeat(cov_idx, nvis)
  m = len(pidx)
  if m:
    z = rng.random(m) + 0.07 * n_chronic[pidx]
    em = np.searchsorted([0.12, 0.62, 0.97], z, side="right")
    dxb = mo.dx(pidx, world.P_CODE_OFFICE)
    minor = np.where(dxb.max(1) < 0, _minor(rng, m), -1).reshape(m, 1)
    cols = [minor, dxb, mo.maybe(code_lib.Z_INSULIN, 0.4 * st.insulin[pidx], m),
            mo.maybe(code_lib.Z_DIALYSIS, 0.6 * (st.ckd_stage[pidx] == 6), m),
            _col(code_lib.EM_OFFICE[em], m)]
    cost = code_lib.EM_OFFICE_COST[em] * _lognorm(rng, m, 0.2) * mo.price[pidx]
    day = mo.emit(pidx, "PROFESSIONAL", "11", cols, cost)
    # Labs drawn at a share of visits, billed by an independent lab on the same day.
    lab = rng.random(m) < np.minimum(0.85, 0.15 + 0.12 * n_chronic[pidx])
    if lab.any():
      lp, ld = pidx[lab], day[lab]
      ml = len(lp)
      dm = has[lp, LATENT_INDEX["diabetes_t2"]] | has[lp, LATENT_INDEX["prediabetes"]]
      tests = [("cmp", np.ones(ml)), ("cbc", np.full(ml, 0.5)), ("a1c", 0.9 * dm),
               ("lipid", np.maximum(0.6 * has[lp, LATENT_INDEX["hyperlipidemia"]],
                                    0.15 * (age[lp] >= 40))),
               ("tsh", np.maximum(0.6 * has[lp, LATENT_INDEX["hypothyroidism"]], 0.05)),
               ("microalb", 0.4 * (has[lp, LATENT_INDEX["diabetes_t2"]] |
                                   has[lp, LATENT_INDEX["ckd"]])),
               ("bnp", 0.4 * has[lp, LATENT_INDEX["heart_failure"]])]
      tcols, tcost = [], np.zeros(ml)
      for name, p in tests:
        col = mo.maybe(code_lib.LAB[name], p, ml)
        tcols.append(col)
        tcost += (col[:, 0] >= 0) * code_lib.LAB_COST[name]
      dxl = mo.dx(lp, world.P_CODE_LAB)
      ro = mo.rule_out(ml, world.P_RULE_OUT["lab"])
      fallback = np.where((dxl.max(1) < 0) & (ro[:, 0] < 0), code_lib.ACUTE_MINOR[8],
                          -1).reshape(ml, 1)
      mo.emit(lp, "PROFESSIONAL", "81", [fallback, dxl, ro] + tcols,
              tcost * _lognorm(rng, ml, 0.15) * mo.price[lp], day=ld)

  # Annual preventive visits.
  prev = covered & (rng.random(len(age)) < np.where(age < 18, 0.06, 0.035))
  pidx = np.nonzero(prev)[0]
  m = len(pidx)
  if m:
    band = np.searchsorted([1, 5, 12, 18, 40, 65], age[pidx], side="right")
    well = np.where(age[pidx] < 18, code_lib.WELL_CHILD,
                    _pick(rng, code_lib.WELL_ADULT, m)).reshape(m, 1)
    cols = [well, mo.dx(pidx, 0.7 * world.P_CODE_OFFICE), mo.maybe(code_lib.VACCINE, 0.3, m),
            _col(code_lib.PREVENTIVE[band], m)]
    cost = np.array([110, 120, 125, 140, 150, 160, 165.0])[band] * _lognorm(rng, m, 0.15)
    mo.emit(pidx, "PROFESSIONAL", "11", cols, cost * mo.price[pidx])

  # Psychotherapy.
  psych = covered & (has[:, LATENT_INDEX["depression"]] | has[:, LATENT_INDEX["anxiety"]]) & (
      rng.random(len(age)) < 0.2)
  pidx = np.nonzero(psych)[0]
  m = len(pidx)
  if m:
    p = np.zeros(NUM_LATENT)
    p[[LATENT_INDEX["depression"], LATENT_INDEX["anxiety"]]] = 0.95
    mo.emit(pidx, "PROFESSIONAL", "11", [mo.dx(pidx, p), _col(code_lib.PSYCHOTHERAPY, m)],
            105.0 * _lognorm(rng, m, 0.15) * mo.price[pidx])

  # Prenatal care.
  pidx = np.nonzero(covered & pregnant & (rng.random(len(age)) < 0.8))[0]
  m = len(pidx)
  if m:
    us = mo.maybe(code_lib.OB_ULTRASOUND, 0.15, m)
    cost = (100.0 + 200.0 * (us[:, 0] >= 0)) * _lognorm(rng, m, 0.2) * mo.price[pidx]
    mo.emit(pidx, "PROFESSIONAL", "11", [_col(code_lib.PRENATAL, m),
                                         mo.dx(pidx, 0.3 * world.P_CODE_OFFICE),
                                         _col(code_lib.EM_OFFICE[1], m), us], cost)

  _imaging(mo, covered)
  _emergency(mo, covered, ev)
  _inpatient(mo, covered, ev, hf_exac, copd_exac, dm_crisis, deliver)
  _outpatient_procedures(mo, covered, advanced, active_cancer)
  _pharmacy(mo, covered)


def _imaging(mo: _Month, covered) -> None:
  st, rng, age = mo.st, mo.rng, mo.age
  has = st.present.astype(np.float64)
  present = {name: has[:, k] for name, k in LATENT_INDEX.items()}   # column views
  f = st.female
  hist_stroke = present["stroke"] * ((mo.t - st.onset[:, LATENT_INDEX["stroke"]]) < 3)
  table = {
      "cxr": (0.004 + 0.03 * present["copd"] + 0.03 * present["heart_failure"]
              + 0.01 * present["asthma"] + 0.03 * present["lung_cancer"],
              ("copd", "heart_failure", "asthma", "lung_cancer"), -1),
      "echo": (0.002 + 0.04 * present["heart_failure"] + 0.035 * present["atrial_fibrillation"]
               + 0.01 * present["ischemic_heart_disease"],
               ("heart_failure", "atrial_fibrillation", "ischemic_heart_disease", "hypertension"),
               -1),
      "ecg": (0.008 + 0.03 * np.maximum(present["ischemic_heart_disease"],
                                        present["atrial_fibrillation"]),
              ("ischemic_heart_disease", "atrial_fibrillation", "hypertension"), -1),
      "mammo": (f * (age >= 40) * 0.05 + 0.1 * present["breast_cancer"], ("breast_cancer",),
                code_lib.SCREEN_MAMMO),
      "dxa": (f * (age >= 65) * 0.01 + 0.05 * present["osteoporosis"], ("osteoporosis",), -1),
      "mri_knee": (0.0008 + 0.015 * present["osteoarthritis"], ("osteoarthritis",), -1),
      "ct_head": (0.001 + 0.02 * present["dementia"] + 0.03 * present["mild_cognitive_impairment"]
                  + 0.3 * hist_stroke, ("dementia", "mild_cognitive_impairment", "stroke"), -1),
      "ct_chest": (0.15 * present["lung_cancer"] + 0.005 * present["copd"]
                   + 0.004 * present["smoker"] * (age >= 50), ("lung_cancer", "copd", "smoker"),
                   -1),
      "ct_abd": (0.002 + 0.12 * present["colorectal_cancer"], ("colorectal_cancer",), -1),
  }
  for name, (p, relevant, screen) in table.items():
    pidx = np.nonzero(covered & (rng.random(len(age)) < p))[0]
    m = len(pidx)
    if not m:
      continue
    pv = np.zeros(NUM_LATENT)
    pv[[LATENT_INDEX[c] for c in relevant]] = 0.85
    dxb = mo.dx(pidx, pv)
    ro = mo.rule_out(m, world.P_RULE_OUT["imaging"])
    first = np.full(m, screen, np.int32)
    if screen < 0:
      first = np.where((dxb.max(1) < 0) & (ro[:, 0] < 0), _minor(rng, m), -1)
    cost = code_lib.IMAGING_COST[name] * _lognorm(rng, m, 0.25) * mo.facility[pidx]
    mo.emit(pidx, "OUTPATIENT", "22", [first.reshape(m, 1).astype(np.int32), dxb, ro,
                                       _col(code_lib.IMAGING[name], m)], cost)


def _emergency(mo: _Month, covered, ev) -> None:
  st, rng, age = mo.st, mo.rng, mo.age
  has = st.present
  present = {name: has[:, k] for name, k in LATENT_INDEX.items()}   # column views
  rate = mo.util * (0.010 + 0.012 * (age < 5) + 0.008 * (age >= 75)) * np.where(
      st.lob == world.MEDICAID, 1.7, 1.0)
  rate = (rate + 0.015 * present["asthma"] + 0.015 * present["copd"]
          + 0.02 * present["heart_failure"] + 0.008 * (present["depression"] | present["anxiety"])
          + 0.015 * present["dementia"] + 0.01 * (st.ckd_stage >= 5)
          + 0.03 * present["rheumatoid_arthritis"] * st.rx_gap[:, 3])   # RA flares off therapy
  rate = rate * np.where(present["asthma"] | present["copd"], world.season(mo.t, "respiratory"),
                         1.0)
  # Pneumonia treated without admission is seen in the emergency room.
  pneu = ev[:, world.ACUTE_INDEX["pneumonia"]] & (
      rng.random(len(age)) >= np.where(age >= 65, 0.7, 0.45))
  n_er = np.minimum(rng.poisson(rate), 2) * covered
  pidx = np.concatenate([np.repeat(np.arange(len(age)), n_er), np.nonzero(covered & pneu)[0]])
  is_pneu = np.arange(len(pidx)) >= int(n_er.sum())
  m = len(pidx)
  if not m:
    return
  principal = code_lib.MINOR_POOLS.draw(code_lib.POOL_ER, rng.random(m))
  principal = np.where(present["asthma"][pidx] & (rng.random(m) < 0.3), code_lib.ASTHMA_EXAC,
                       principal)
  principal = np.where(present["copd"][pidx] & (rng.random(m) < 0.3), code_lib.COPD_EXAC, principal)
  principal = np.where(is_pneu, code_lib.PNEUMONIA, principal)
  level = np.minimum(2, (rng.random(m) * 2.2 + 0.25 * has[pidx, :world.NUM_TARGET].sum(1)
                         + is_pneu).astype(np.int64))
  xray = np.where(is_pneu | (rng.random(m) < 0.25), code_lib.IMAGING["cxr"], -1).reshape(m, 1)
  cost = np.array([500.0, 900.0, 1500.0])[level] * _lognorm(rng, m, 0.5) * mo.facility[pidx]
  cost = cost + 180.0 * (xray[:, 0] >= 0)
  mo.emit(pidx, "EMERGENCY", "23", [principal.reshape(m, 1).astype(np.int32),
                                    mo.dx(pidx, world.P_CODE_ER),
                                    mo.rule_out(m, world.P_RULE_OUT["er"]),
                                    _col(code_lib.EM_ER[level], m), xray.astype(np.int32)], cost)


_SNF_P = {"readmit": 0.15, "dm": 0.05, "other": 0.12, "mi": 0.15, "stroke": 0.45, "pneumonia": 0.2, "sepsis": 0.35, "hip_fracture": 0.75,
          "joint_replacement": 0.25, "hf": 0.2, "copd": 0.15, "delivery": 0.0, "cancer": 0.1}


def _inpatient(mo: _Month, covered, ev, hf_exac, copd_exac, dm_crisis, deliver) -> None:
  st, rng, age, t = mo.st, mo.rng, mo.age, mo.t
  n = len(age)
  _readmissions(mo, covered)
  u = rng.random(n)
  admits = []   # (kind, mask, principal codes [n], extra code column [n], mean cost)
  stroke = ev[:, world.ACUTE_INDEX["stroke"]]
  tia = u < 0.25
  admits.append(("mi", ev[:, world.ACUTE_INDEX["mi"]], _pick(rng, code_lib.MI, n),
                 np.where(u < 0.5, code_lib.PCS_PCI, -1), 28000.0 + 12000.0 * (u < 0.5)))
  admits.append(("stroke", stroke,
                 np.where(tia, code_lib.TIA, _pick(rng, code_lib.STROKE_ACUTE, n)),
                 np.where(~tia & (u > 0.9), code_lib.PCS_TPA, -1), np.where(tia, 8000.0, 22000.0)))
  admits.append(("pneumonia",
                 ev[:, world.ACUTE_INDEX["pneumonia"]] & (u < np.where(age >= 65, 0.7, 0.45)),
                 np.full(n, code_lib.PNEUMONIA), np.full(n, -1), 14000.0))
  admits.append(("sepsis", ev[:, world.ACUTE_INDEX["sepsis"]], np.full(n, code_lib.SEPSIS),
                 np.where(u < 0.15, code_lib.PCS_VENT, -1), np.where(u < 0.15, 55000.0, 32000.0)))
  admits.append(("hip_fracture", ev[:, world.ACUTE_INDEX["hip_fracture"]],
                 _pick(rng, code_lib.HIP_FRACTURE, n),
                 np.full(n, code_lib.PCS_HIP), 32000.0))
  admits.append(("joint_replacement", ev[:, world.ACUTE_INDEX["joint_replacement"]],
                 _pick(rng, code_lib.KNEE_OA, n),
                 _pick(rng, code_lib.PCS_KNEE, n), 28000.0))
  admits.append(("hf", hf_exac, code_lib.HF_ACUTE[np.maximum(st.hf_sev - 1, 0)], np.full(n, -1),
                 13000.0))
  admits.append(("copd", copd_exac & (u < 0.4), np.full(n, code_lib.COPD_EXAC), np.full(n, -1),
                 10000.0))
  admits.append(("dm", dm_crisis, _pick(rng, code_lib.DM_CRISIS, n), np.full(n, -1), 9000.0))
  cs = u < 0.32
  # Other admissions: more likely with age, frailty and chronic burden.
  other_rate = mo.util * 0.012 * np.exp(0.035 * (np.minimum(age, 95) - 40)) * (
      1 + 0.25 * st.present[:, :world.NUM_TARGET].sum(1))
  other = st.alive & (rng.random(n) < 1 - np.exp(-other_rate / 12))
  admits.append(("other", other, _pick(rng, code_lib.OTHER_ADMISSION, n), np.full(n, -1), 11000.0))
  admits.append(("delivery", deliver, np.where(cs, code_lib.CESAREAN, code_lib.DELIVERY),
                 np.where(cs, code_lib.PCS_CESAREAN, code_lib.PCS_VAGINAL),
                 np.where(cs, 17000.0, 11000.0)))
  # Cancer surgery in the month of diagnosis (breast and prostate as outpatient surgery).
  for j, c in enumerate(world.CANCERS):
    k = LATENT_INDEX[c]
    new = st.present[:, k] & (st.onset[:, k] == t) & (u < 0.8)
    if c in ("breast_cancer", "prostate_cancer"):
      pidx = np.nonzero(covered & new)[0]
      m = len(pidx)
      if m:
        mo.emit(pidx, "OUTPATIENT", "22", [mo.code_now[pidx, k].reshape(m, 1),
                                           mo.dx(pidx, world.P_CODE_FACILITY),
                                           _col(code_lib.CANCER_SURGERY[c], m)],
                world.CANCER_SURGERY_COST[j] * _lognorm(rng, m, 0.4) * mo.facility[pidx])
    else:
      admits.append(("cancer", new, np.full(n, code_lib.ALT_TABLE[k, 0]),
                     np.full(n, code_lib.CANCER_SURGERY[c]), world.CANCER_SURGERY_COST[j]))
  for kind, mask, principal, extra, mean_cost in admits:
    pidx = np.nonzero(covered & mask)[0]
    m = len(pidx)
    if not m:
      continue
    mean_cost = np.broadcast_to(np.asarray(mean_cost, np.float64), (n,))[pidx]
    cols = [principal[pidx].reshape(m, 1).astype(np.int32), mo.dx(pidx, world.P_CODE_FACILITY)]
    if kind == "delivery":
      cols.append(_col(code_lib.LIVEBORN, m))
    if kind == "sepsis":
      cols.append(mo.maybe(code_lib.SEVERE_SEPSIS, 0.5, m))
    cols.append(extra[pidx].reshape(m, 1).astype(np.int32))
    cost = mean_cost * _lognorm(rng, m, 0.45) * mo.facility[pidx]
    day = mo.emit(pidx, "INPATIENT", "21", cols, cost)
    los = np.maximum(1, rng.poisson(np.clip(mean_cost / 4000.0, 2, 9), m))
    prof_cols = [principal[pidx].reshape(m, 1).astype(np.int32), _col(code_lib.EM_INPATIENT[0], m),
                 mo.maybe(code_lib.EM_INPATIENT[1], 1.0 * (los > 1), m)]
    if kind == "mi":
      prof_cols.append(mo.maybe(code_lib.CARDIAC_CATH, 0.8, m))
    mo.emit(pidx, "PROFESSIONAL", "21", prof_cols,
            (250.0 + 110.0 * los) * _lognorm(rng, m, 0.3) * mo.price[pidx], day=day)
    st.last_admit[pidx] = t
    mo.sink.stay(pidx, day, day + los, age[pidx], principal[pidx])
    if kind != "delivery":
      _schedule_readmission(mo, pidx, day + los, principal[pidx])
    # Post-acute care: skilled nursing and home health for older patients, rehabilitation.
    old = age[pidx] >= 65
    snf = old & (rng.random(m) < _SNF_P[kind])
    if snf.any():
      sp = pidx[snf]
      ms = len(sp)
      sday = np.minimum(day[snf] + los[snf], mo.month_start + mo.month_len - 1)
      sday = np.minimum(sday, mo.death_cap[sp])
      days = rng.integers(8, 46, ms)
      mo.emit(sp, "SNF", "31", [principal[sp].reshape(ms, 1).astype(np.int32),
                                mo.dx(sp, world.P_CODE_FACILITY)],
              520.0 * days * _lognorm(rng, ms, 0.2) * world.LOB_PRICE[st.lob[sp]], day=sday)
    hh = old & ~snf & (rng.random(m) < 0.25)
    if hh.any():
      hp = pidx[hh]
      mh = len(hp)
      mo.emit(hp, "HOME_HEALTH", "12", [principal[hp].reshape(mh, 1).astype(np.int32),
                                        mo.dx(hp, world.P_CODE_OFFICE),
                                        _col(code_lib.HOME_HEALTH_RN, mh)],
              2200.0 * _lognorm(rng, mh, 0.3) * world.LOB_PRICE[st.lob[hp]])
    if kind in ("stroke", "hip_fracture", "joint_replacement"):
      rp = pidx[rng.random(m) < 0.7]
      mr = len(rp)
      if mr:
        first = code_lib.AFTERCARE_JOINT if kind == "joint_replacement" else -1
        mo.emit(rp, "OUTPATIENT", "22", [_col(first, mr), mo.dx(rp, world.P_CODE_OFFICE),
                                         _col(code_lib.PHYSICAL_THERAPY, mr)],
                700.0 * _lognorm(rng, mr, 0.3) * mo.price[rp])
  _readmissions(mo, covered)   # those due later this month


def _schedule_readmission(mo: _Month, pidx: np.ndarray, discharge: np.ndarray,
                          principal: np.ndarray) -> None:
  """Draws whether each discharge is followed by a readmission within 90 days, and its day."""
  st, rng, m = mo.st, mo.rng, len(pidx)
  free = st.readmit_day[pidx] == 0
  p = world.READMIT_P90[(mo.age[pidx] >= 65).astype(np.int64)] * st.frail[pidx] ** 0.3 * (
      1 + 0.08 * st.present[pidx, :world.NUM_TARGET].sum(1)) * np.where(st.decline[pidx], 2, 1)
  yes = free & (rng.random(m) < np.minimum(p, 0.8))
  gap = 1 + np.minimum(rng.exponential(world.READMIT_GAP_MEAN, m), 89).astype(np.int64)
  same = rng.random(m) < 0.5   # the same problem, else another reason
  code = np.where(same, principal, _pick(rng, code_lib.OTHER_ADMISSION, m))
  st.readmit_day[pidx[yes]] = (discharge + gap)[yes]
  st.readmit_code[pidx[yes]] = code[yes]


def _readmissions(mo: _Month, covered) -> None:
  """Inpatient stays of the readmissions due this month (emitted like any admission)."""
  st, rng = mo.st, mo.rng
  month_end = mo.month_start + mo.month_len
  due = (st.readmit_day > 0) & (st.readmit_day < month_end)
  pidx = np.nonzero(due & covered & (st.readmit_day <= mo.death_cap))[0]
  st_day = np.maximum(st.readmit_day[pidx], mo.month_start)
  principal = st.readmit_code[pidx]
  st.readmit_day[due] = 0
  m = len(pidx)
  if not m:
    return
  cols = [principal.reshape(m, 1), mo.dx(pidx, world.P_CODE_FACILITY)]
  cost = 12000.0 * _lognorm(rng, m, 0.45) * mo.facility[pidx]
  day = mo.emit(pidx, "INPATIENT", "21", cols, cost, day=st_day)
  los = np.maximum(1, rng.poisson(4, m))
  mo.emit(pidx, "PROFESSIONAL", "21", [principal.reshape(m, 1), _col(code_lib.EM_INPATIENT[0], m),
                                       mo.maybe(code_lib.EM_INPATIENT[1], 1.0 * (los > 1), m)],
          (250.0 + 110.0 * los) * _lognorm(rng, m, 0.3) * mo.price[pidx], day=day)
  mo.sink.stay(pidx, day, day + los, mo.age[pidx], principal)
  st.last_admit[pidx] = mo.t
  # A readmission is followed by another one only from a later month on (one pass a month).
  _schedule_readmission(mo, pidx, np.maximum(day + los, month_end), principal)


def _outpatient_procedures(mo: _Month, covered, advanced, active_cancer) -> None:
  st, rng, age, t = mo.st, mo.rng, mo.age, mo.t
  n = len(age)
  has = st.present
  # Cancer treatment: chemotherapy / immunotherapy / hormone therapy, and radiation.
  for j, c in enumerate(world.CANCERS):
    k = LATENT_INDEX[c]
    # Non-advanced cancers are treated for about six months, advanced ones until death.
    treat = covered & ((active_cancer[:, j] & (t - st.onset[:, k] < 6)) | advanced[:, j]) & (
        rng.random(n) < np.where(advanced[:, j], 0.8, 0.6))
    pidx = np.nonzero(treat)[0]
    m = len(pidx)
    if m:
      drug_a, drug_b = code_lib.CANCER_DRUGS[c]
      cost = world.CANCER_MONTHLY_COST[j] * np.where(advanced[pidx, j], 1.3, 1.0) * _lognorm(
          rng, m, 0.5) * mo.facility[pidx]
      mo.emit(pidx, "OUTPATIENT", "22", [np.full((m, 1), code_lib.ALT_TABLE[k, 0], np.int32),
                                         mo.dx(pidx, world.P_CODE_OFFICE),
                                         _col(code_lib.CHEMO_ADMIN, m),
                                         _col(drug_a, m), mo.maybe(drug_b, 0.5, m)], cost)
    since = t - st.onset[:, k]
    rad = covered & has[:, k] & ~advanced[:, j] & (since >= 1) & (since <= 3) & (
        c != "colorectal_cancer") & (rng.random(n) < 0.5)
    pidx = np.nonzero(rad)[0]
    m = len(pidx)
    if m:
      mo.emit(pidx, "OUTPATIENT", "22", [np.full((m, 1), code_lib.ALT_TABLE[k, 0], np.int32),
                                         _col(code_lib.RADIATION, m)],
              6000.0 * _lognorm(rng, m, 0.4) * mo.facility[pidx])
  ra, ihd = LATENT_INDEX["rheumatoid_arthritis"], LATENT_INDEX["ischemic_heart_disease"]
  simple = [
      # (mask, claim type, pos, principal, procedure columns, mean cost, price vector)
      (has[:, ra] & (st.severity_u[:, ra] > 0.75) & (rng.random(n) < 0.5), "OUTPATIENT", "22",
       code_lib.ALT_TABLE[ra, 0], (code_lib.INFLIXIMAB, code_lib.CHEMO_ADMIN), 4500.0, mo.facility),
      (has[:, LATENT_INDEX["osteoarthritis"]] & (rng.random(n) < 0.02), "PROFESSIONAL", "11",
       -1, (code_lib.JOINT_INJECTION, code_lib.TRIAMCINOLONE), 140.0, mo.price),
      (((age >= 45) & (rng.random(n) < 0.007)) | (has[:, LATENT_INDEX["colorectal_cancer"]] & (
          rng.random(n) < 0.03)), "OUTPATIENT", "22", code_lib.SCREEN_COLON,
       (code_lib.COLONOSCOPY,), 1100.0, mo.facility),
      (has[:, ihd] & (((t - st.onset[:, ihd]) <= 1) & (rng.random(n) < 0.3) | (
          rng.random(n) < 0.002)), "OUTPATIENT", "22", -1, (code_lib.CARDIAC_CATH,), 4500.0,
       mo.facility),
      ((has[:, LATENT_INDEX["dementia"]] | (st.hf_sev == 3)) & (rng.random(n) < 0.03),
       "HOME_HEALTH", "12",
       -1, (code_lib.HOME_HEALTH_RN,), 1800.0, world.LOB_PRICE[st.lob]),
  ]
  for mask, ctype, pos, principal, procs, mean_cost, price in simple:
    pidx = np.nonzero(covered & mask)[0]
    m = len(pidx)
    if not m:
      continue
    cols = [_col(principal, m), mo.dx(pidx, world.P_CODE_OFFICE)] + [_col(p, m) for p in procs]
    if principal == code_lib.SCREEN_COLON:
      cols.append(mo.maybe(code_lib.RULE_OUT[3], 0.04, m))   # rule-out colorectal cancer
    mo.emit(pidx, ctype, pos, cols, mean_cost * _lognorm(rng, m, 0.35) * price[pidx])
  # Dialysis: one facility claim a month for people on dialysis.
  pidx = np.nonzero(covered & (st.ckd_stage == 6))[0]
  m = len(pidx)
  if m:
    cause = np.where(has[pidx, LATENT_INDEX["diabetes_t2"]], code_lib.DM["ckd"],
                     np.where(has[pidx, LATENT_INDEX["hypertension"]], code_lib.HTN["esrd"], -1))
    cost = 7000.0 * np.array([1.8, 1.0, 0.9])[st.lob[pidx]] * _lognorm(rng, m, 0.15)
    mo.emit(pidx, "DIALYSIS", "65", [_col(code_lib.CKD_STAGE[6], m), _col(code_lib.Z_DIALYSIS, m),
                                     cause.reshape(m, 1).astype(np.int32),
                                     _col(code_lib.DIALYSIS_SESSION, m),
                                     _col(code_lib.ESRD_MONTHLY, m)], cost)


RX_MONTHLY_PRICE = {  # drug class: (base monthly price)
    "oral_antidiabetic": 240.0, "insulin": 480.0, "antiarrhythmic": 130.0, "loop_diuretic": 12.0,
    "phosphate_binder": 300.0, "immunosuppressant": 60.0,
}


GAP_CLASSES = {  # the maintenance drug classes of each condition of world.GAP_CONDITIONS
    "diabetes_t2": ("oral_antidiabetic", "insulin"), "heart_failure": ("loop_diuretic",),
    "atrial_fibrillation": ("antiarrhythmic",), "rheumatoid_arthritis": ("immunosuppressant",),
}


def _fills(st: world.State, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """This month's fills per drug class (bool [n]) by indication and the person's adherence; also
  updates the decayed refill-gap counts (a month on therapy without its fill is a gap)."""
  n = len(st.female)
  has = st.present
  dm = has[:, LATENT_INDEX["diabetes_t2"]]
  ra = LATENT_INDEX["rheumatoid_arthritis"]
  # Fill probability at full adherence, by class and indication.
  full = {
      "oral_antidiabetic": np.where(dm, np.where(st.insulin, 0.6, 1.0), 0.0),
      "insulin": np.where(st.insulin & dm, 1.0, 0.0),
      "antiarrhythmic": 0.9 * has[:, LATENT_INDEX["atrial_fibrillation"]],
      "loop_diuretic": np.maximum(1.0 * has[:, LATENT_INDEX["heart_failure"]],
                                  0.6 * (st.ckd_stage >= 4)),
      "phosphate_binder": 0.95 * (st.ckd_stage >= 5),
      "immunosuppressant": 0.8 * has[:, ra],
  }
  adh = np.minimum(st.adherence * (0.85 + 0.3 * rng.random(n, dtype=np.float32)), 0.98)
  fills = {k: st.alive & (rng.random(n) < v * adh) for k, v in full.items()}
  on = st.alive[:, None] & has[:, [LATENT_INDEX[c] for c in world.GAP_CONDITIONS]]
  got = np.stack([np.logical_or.reduce([fills[k] for k in GAP_CLASSES[c]])
                  for c in world.GAP_CONDITIONS], 1)
  st.rx_gap = (world.GAP_DECAY * st.rx_gap + (on & ~got)).astype(np.float32)
  return fills


def _pharmacy(mo: _Month, covered) -> None:
  st, rng = mo.st, mo.rng
  ra = LATENT_INDEX["rheumatoid_arthritis"]
  for j, klass in enumerate(code_lib.DRUG_CLASSES):
    pidx = np.nonzero(covered & mo.fills[klass])[0]
    m = len(pidx)
    if not m:
      continue
    u = st.drug_u[pidx, j]
    ndc = code_lib.ndc_of(j, u)
    price = RX_MONTHLY_PRICE[klass] * np.exp(1.6 * (u - 0.5))   # a product's price level is stable
    if klass == "immunosuppressant":   # self-injected biologics for the more severe
      sev = st.severity_u[pidx, ra]
      price = np.where((sev > 0.45) & (sev <= 0.75), 5200.0, price)
    cost = price * _lognorm(rng, m, 0.1) * mo.rx_price[pidx]
    mo.emit(pidx, "PHARMACY", "01", [ndc.reshape(m, 1)], cost)
