"""Intervention effects from simulated futures: edited histories, sampled twice, against the truth.

A member's history (a task record: the tokens before the index date and the anchor) is read back
into the builder's units (`parse`: one claim, or one coverage change, per unit, on its day) and
written out again exactly as `lmm_jax.data.timeline` writes it (`render`: time-gap tokens between
days, an AGE token when the integer age changes, the anchor), so an edit only adds or removes
claims and the edited history looks like real data. The edits (`EDITS`), pure functions of a
parsed history:

  start_drug        a member coded with a condition that has maintenance drugs in the world
                    (diabetes, heart failure, atrial fibrillation, rheumatoid arthritis) and no fill
                    of them gets monthly pharmacy fills of the drug (its most frequent NDC token on
                    train) for the START_MONTHS months before the index, at the world's refill
                    cadence (one fill per FILL_DAYS days) and its base monthly price.
  adherence         a member with a maintenance drug whose proportion of days covered (PDC) over
                    the year before the index is below TARGET_PDC gets copies of their own latest
                    fill of that drug at the start of each uncovered stretch until PDC reaches
                    TARGET_PDC.
  remove_admission  the most recent inpatient stay of the year before the index is deleted: its
                    CLAIM//INPATIENT claim and the same-day inpatient professional claims (POS 21).

The model's effect: N futures are sampled for the unedited and the edited history with the same
random keys (the sampler's keys depend on the member's position in the list and the sample number
only: common random numbers), by the zero-shot machinery (`lmm_jax.sampling.zero_shot.simulate`).
Per member, effect = mean over futures of (edited - unedited): the next-year cost, and for each
condition not coded before the index the probability of its onset (coded in the target window).
On the synthetic world, `lmm_jax.synth.intervene` gives the true effect of the same intervention
applied to the member's true latent state; the bias is the model's effect minus the true effect,
averaged over members, with a paired bootstrap interval. The naive observational contrast (the
next-year cost of train members who look treated minus that of those who do not, standardized to
the treated-to-be group's age band and sex) is the baseline an analyst would compute without a
model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from lmm_jax import conditions
from lmm_jax import conventions as conv
from lmm_jax import runs
from lmm_jax.conventions import TokenKind
from lmm_jax.data import records
from lmm_jax.data import tokenizer as tok_lib
from lmm_jax.insights import uncertainty
from lmm_jax.report import plots
from lmm_jax.report import privacy
from lmm_jax.sampling import audit as audit_lib
from lmm_jax.sampling import decode
from lmm_jax.sampling import zero_shot
from lmm_jax.synth import codes as code_lib
from lmm_jax.synth import intervene
from lmm_jax.synth import sim
from lmm_jax.tasks.pretrain import PretrainTask

DAYS_PER_YEAR = 365.25
FILL_DAYS = 30          # the world fills maintenance drugs monthly (lmm_jax.synth.sim._fills)
START_MONTHS = 6        # start_drug: fills in the months before the index
TARGET_PDC = 0.8        # the usual adherence threshold (PDC >= 80%)
LOOKBACK_DAYS = 365     # PDC and the removed stay: the year before the index
INPATIENT = f"{conv.CLAIM}{conv.SEP}INPATIENT"
PHARMACY = f"{conv.CLAIM}{conv.SEP}PHARMACY"
INPATIENT_POS = f"{conv.POS}{conv.SEP}21"


@dataclasses.dataclass(frozen=True)
class Unit:
  day: int
  age: float
  tokens: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class History:
  """A task record's history as the builder's units (see the module docstring)."""
  prefix_tokens: np.ndarray
  prefix_days: np.ndarray
  prefix_age: np.ndarray
  units: tuple[Unit, ...]
  index_day: int

  def age_at(self, day: int) -> float:
    """Age in years on a day (-1 when the birth date is unknown), from the nearest unit."""
    ref_day, ref_age = int(self.prefix_days[-1]), float(self.prefix_age[-1])
    for u in self.units:
      if u.day <= day:
        ref_day, ref_age = u.day, u.age
    return ref_age + (day - ref_day) / DAYS_PER_YEAR if ref_age >= 0 else -1.0


class Codebook:
  """The vocabulary's tokens the edits need: structure, claims and the maintenance drugs."""

  def __init__(self, vocab: Any):
    self.vocab = vocab
    self.tok = tok_lib.Tokenizer(vocab)
    names = vocab.tokens
    self.structural_V = (np.asarray(vocab.kinds) == TokenKind.TIME) | np.array(
        [t.startswith("AGE//") for t in names])
    self.starts_unit_V = np.array([t.startswith(f"{conv.CLAIM}{conv.SEP}") for t in names]) | (
        np.isin(vocab.kinds, [TokenKind.DEMOGRAPHIC, TokenKind.DEATH]) & ~self.structural_V)
    self.cost_V = np.asarray(vocab.kinds) == TokenKind.COST
    self.inpatient = vocab.get(INPATIENT)
    self.inpatient_pos = vocab.get(INPATIENT_POS)
    unk = {vocab.get(f"{conv.NDC}{conv.SEP}{tok_lib.UNK}")}
    # Drug class -> its NDC token ids (the builder's grouping; [UNK] left out).
    self.drug_ids: dict[str, set[int]] = {}
    for klass in code_lib.DRUG_CLASSES:
      ids = {i for c in code_lib.NDC_IDS[klass]
             for i in self.tok.code_token_ids(code_lib.CODES[c])} - unk
      self.drug_ids[klass] = ids

  def maintenance_classes(self, condition: int) -> tuple[str, ...]:
    return sim.GAP_CLASSES.get(conditions.CONDITION_NAMES[condition], ())

  def fill_unit_tokens(self, klass: str) -> tuple[int, ...] | None:
    """A new pharmacy claim of the class's most frequent NDC token at its base monthly price."""
    ids = sorted(self.drug_ids[klass])
    if not ids:
      return None
    ndc = max(ids, key=lambda i: (int(self.vocab.counts[i]), -i))
    out = list(self.tok.code_token_ids(PHARMACY)) + list(self.tok.code_token_ids(
        f"{conv.POS}{conv.SEP}01")) + [ndc]
    out.append(int(self.tok.cost_ids[self.tok.cost_index(sim.RX_MONTHLY_PRICE[klass])]))
    return tuple(dict.fromkeys(out))


def parse(rec: Mapping[str, Any], book: Codebook) -> History:
  """A task record's history (tokens strictly before the index, then the anchor) as units."""
  tokens = np.asarray(rec["tokens"], np.int64)
  days = np.asarray(rec["days"], np.int64)
  age = np.asarray(rec["age"], np.float32)
  prefix = int(rec["prefix_len"])
  index_day = int(rec["index_day"])
  units: list[Unit] = []
  cur: list[int] = []
  cur_day, cur_age = None, 0.0
  prev_cost = False
  for i in range(prefix, len(tokens)):
    t, d = int(tokens[i]), int(days[i])
    if d >= index_day or book.structural_V[t]:
      continue   # the anchor, and gap / age tokens (rendered again)
    if cur and (d != cur_day or book.starts_unit_V[t] or prev_cost):
      units.append(Unit(cur_day, cur_age, tuple(cur)))
      cur = []
    if not cur:
      cur_day, cur_age = d, float(age[i])
    cur.append(t)
    prev_cost = bool(book.cost_V[t])
  if cur:
    units.append(Unit(cur_day, cur_age, tuple(cur)))
  return History(tokens[:prefix].copy(), days[:prefix].copy(), age[:prefix].copy(), tuple(units),
                 index_day)


def render(h: History, book: Codebook, rec: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """The history as the builder writes it (gap and age tokens, the anchor at the index date);
  rec's other fields (labels, covariates) are copied."""
  tok = book.tok
  toks = [int(t) for t in h.prefix_tokens]
  days = [int(d) for d in h.prefix_days]
  ages = [float(a) for a in h.prefix_age]
  known = bool(len(ages)) and ages[0] >= 0
  age_int = math.floor(ages[0]) if known else None
  prev = None
  for u in sorted(h.units, key=lambda u: u.day):   # stable: same-day units keep their order
    if prev is not None and u.day != prev:
      toks.append(tok.gap_token(u.day - prev)); days.append(u.day); ages.append(u.age)
    if prev is None or u.day != prev:
      if known and math.floor(u.age) != age_int:
        age_int = math.floor(u.age)
        toks.append(tok.age_token(age_int)); days.append(u.day); ages.append(u.age)
      prev = u.day
    toks.extend(u.tokens)
    days.extend([u.day] * len(u.tokens))
    ages.extend([u.age] * len(u.tokens))
  # The anchor, as timeline.history_at writes it.
  last_day, last_age = days[-1], ages[-1]
  age_idx = last_age + (h.index_day - last_day) / DAYS_PER_YEAR if last_age >= 0 else -1.0
  if h.index_day - last_day >= 1:
    toks.append(tok.gap_token(h.index_day - last_day)); days.append(h.index_day)
    ages.append(age_idx)
  if age_idx >= 0:
    toks.append(tok.age_token(math.floor(age_idx))); days.append(h.index_day); ages.append(age_idx)
  out = dict(rec) if rec is not None else {}
  out.update(tokens=np.asarray(toks, np.int32), days=np.asarray(days, np.int32),
             age=np.asarray(ages, np.float32), prefix_len=len(h.prefix_tokens),
             index_day=h.index_day)
  return out


# ------------------------------------------------------------------------------------------------
# Adherence.


def fill_days(h: History, ids: set[int]) -> np.ndarray:
  """Days of the units that fill one of these drug tokens (sorted)."""
  return np.array(sorted(u.day for u in h.units if ids.intersection(u.tokens)), np.int64)


def pdc(days: np.ndarray, index_day: int, *, lookback: int = LOOKBACK_DAYS,
        supply: int = FILL_DAYS) -> float:
  """Proportion of days covered from the first fill of the lookback window to the index (each
  fill covers `supply` days); NaN without a fill in the window."""
  d = np.asarray(days, np.int64)
  d = d[(d >= index_day - lookback) & (d < index_day)]
  if not len(d):
    return float("nan")
  covered = np.zeros(index_day - int(d[0]), bool)
  for x in d:
    covered[x - d[0]:x - d[0] + supply] = True
  return float(covered.mean())


def member_pdc(h: History, book: Codebook) -> dict[str, float]:
  """PDC of each maintenance drug class the member fills in the lookback year."""
  out = {}
  for klass in {k for ks in sim.GAP_CLASSES.values() for k in ks}:
    p = pdc(fill_days(h, book.drug_ids[klass]), h.index_day)
    if np.isfinite(p):
      out[klass] = p
  return out


# ------------------------------------------------------------------------------------------------
# The edits: History -> edited History, or None when the member is not eligible.


@dataclasses.dataclass(frozen=True)
class Edit:
  history: History
  condition: int | None = None     # the condition treated (start_drug)


def start_drug(h: History, book: Codebook, cond_prior_C: np.ndarray) -> Edit | None:
  """Monthly fills of a maintenance drug for the first coded condition that has none."""
  for c in np.flatnonzero(np.asarray(cond_prior_C) > 0):
    classes = book.maintenance_classes(int(c))
    if not classes or any(len(fill_days(h, book.drug_ids[k])) for k in classes):
      continue
    unit = book.fill_unit_tokens(classes[0])
    if unit is None:
      continue
    last = h.index_day - 1 - FILL_DAYS // 2
    new = [Unit(d, h.age_at(d), unit) for d in range(last - FILL_DAYS * (START_MONTHS - 1),
                                                     last + 1, FILL_DAYS)]
    return Edit(dataclasses.replace(h, units=h.units + tuple(new)), int(c))
  return None


def raise_adherence(h: History, book: Codebook, cond_prior_C: np.ndarray | None = None,
                    *, target: float = TARGET_PDC) -> Edit | None:
  """Copies of the member's latest fill at each uncovered stretch until every class's PDC >=
  target (eligible: some maintenance class below it)."""
  del cond_prior_C
  units = list(h.units)
  changed = False
  for klass, p in sorted(member_pdc(h, book).items()):
    if p >= target:
      continue
    ids = book.drug_ids[klass]
    latest = max((u for u in units if ids.intersection(u.tokens)), key=lambda u: u.day)
    while True:
      days = fill_days(dataclasses.replace(h, units=tuple(units)), ids)
      days = days[(days >= h.index_day - LOOKBACK_DAYS) & (days < h.index_day)]
      if pdc(days, h.index_day) >= target:
        break
      # The first uncovered day after the first fill.
      covered = np.zeros(h.index_day - int(days[0]), bool)
      for x in days:
        covered[x - days[0]:x - days[0] + FILL_DAYS] = True
      gap = int(days[0]) + int(np.argmin(covered))
      units.append(Unit(gap, h.age_at(gap), latest.tokens))
      changed = True
  return Edit(dataclasses.replace(h, units=tuple(units))) if changed else None


def remove_admission(h: History, book: Codebook, cond_prior_C: np.ndarray | None = None
                     ) -> Edit | None:
  """Deletes the most recent stay of the lookback year (see the module docstring)."""
  del cond_prior_C
  if book.inpatient is None:
    return None
  stays = [u.day for u in h.units if u.tokens[0] == book.inpatient and
           u.day >= h.index_day - LOOKBACK_DAYS]
  if not stays:
    return None
  day = max(stays)
  keep = tuple(u for u in h.units if not (u.day == day and (
      u.tokens[0] == book.inpatient or (book.inpatient_pos is not None and
                                        book.inpatient_pos in u.tokens))))
  return Edit(dataclasses.replace(h, units=keep))


# name -> fn(history, codebook, cond_prior [C]) -> Edit | None; names match lmm_jax.synth.intervene.
EDITS: dict[str, Callable[..., Edit | None]] = {
    "start_drug": start_drug, "adherence": raise_adherence, "remove_admission": remove_admission,
}


# ------------------------------------------------------------------------------------------------
# Intervals.


def bootstrap_mean(x_N: np.ndarray, *, num: int = 1000, seed: int = 0, level: float = 0.95
                   ) -> tuple[float, float, float]:
  """(mean, lower, upper): percentile bootstrap interval of the mean over members (NaNs left out;
  paired effects are passed as per-member differences)."""
  x = np.asarray(x_N, np.float64)
  x = x[np.isfinite(x)]
  if not len(x):
    return float("nan"), float("nan"), float("nan")
  means = uncertainty.bootstrap_weights(len(x), num, seed) @ x / len(x)
  a = (1 - level) / 2
  return float(x.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def bootstrap_difference(boot_a: np.ndarray, boot_b: np.ndarray, *, level: float = 0.95
                         ) -> tuple[float, float]:
  """Interval of a - b from independent bootstrap replicates of each."""
  d = np.asarray(boot_a, np.float64) - np.asarray(boot_b, np.float64)
  d = d[np.isfinite(d)]   # a resample without both groups in any stratum has no contrast
  if not len(d):
    return float("nan"), float("nan")
  a = (1 - level) / 2
  return float(np.quantile(d, a)), float(np.quantile(d, 1 - a))


def bootstrap_replicates(fn: Callable[[np.ndarray], float], n: int, *, num: int = 1000,
                         seed: int = 0) -> np.ndarray:
  """fn(resampled member indices) for `num` resamples of n members (the draws of
  `uncertainty.bootstrap_weights`, each as the indices repeated by their draw counts)."""
  ar = np.arange(n)
  return np.array([fn(np.repeat(ar, w.astype(np.int64)))
                   for w in uncertainty.bootstrap_weights(n, num, seed)])


# ------------------------------------------------------------------------------------------------
# The naive observational contrast.


def _strata(age_N: np.ndarray, female_N: np.ndarray) -> np.ndarray:
  band = np.clip(np.asarray(age_N) // 10, 0, 9).astype(np.int64)
  return band * 2 + np.asarray(female_N, np.int64)


def standardized_contrast(y_N: np.ndarray, treated_N: np.ndarray, target_N: np.ndarray,
                          strata_N: np.ndarray) -> float:
  """Mean y of the treated minus the untreated within strata, averaged over the strata with the
  target group's weights (strata lacking either group are left out)."""
  y = np.asarray(y_N, np.float64)
  treated, target = np.asarray(treated_N, bool), np.asarray(target_N, bool)
  total, weight = 0.0, 0.0
  for s in np.unique(strata_N[target]):
    m = strata_N == s
    a, b = m & treated, m & ~treated
    if a.any() and b.any():
      w = float((m & target).sum())
      total += w * (y[a].mean() - y[b].mean())
      weight += w
  return total / weight if weight else float("nan")


@dataclasses.dataclass
class NaiveGroups:
  """Train members' groups for one intervention: treated-looking, the treatment's target."""
  cost_N: np.ndarray
  treated_N: np.ndarray
  target_N: np.ndarray
  strata_N: np.ndarray


def naive_groups(name: str, histories: Sequence[History], recs: Sequence[Mapping[str, Any]],
                 book: Codebook, condition: int | None = None) -> NaiveGroups:
  """Who looks treated on train: adherence PDC >= target (among members with a maintenance fill);
  start_drug: fills of the condition's drug (among members coded with it); remove_admission: no
  stay in the year before the index (among all). target: the members the intervention would
  change (below target; coded without fills; with a stay)."""
  n = len(histories)
  treated, eligible, target = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
  for i, (h, r) in enumerate(zip(histories, recs)):
    if name == "adherence":
      p = member_pdc(h, book)
      eligible[i] = bool(p)
      treated[i] = bool(p) and min(p.values()) >= TARGET_PDC
    elif name == "start_drug":
      classes = book.maintenance_classes(condition)
      eligible[i] = bool(np.asarray(r["cond_prior"])[condition])
      treated[i] = eligible[i] and any(len(fill_days(h, book.drug_ids[k])) for k in classes)
    elif name == "remove_admission":
      eligible[i] = True
      treated[i] = remove_admission(h, book) is None
    else:
      raise ValueError(f"unknown intervention {name!r}; one of {sorted(EDITS)}")
    target[i] = eligible[i] and not treated[i]
  keep = eligible
  age = np.array([float(r["age_at_index"]) for r in recs])
  female = np.array([int(r["sex"]) for r in recs]) == 1
  cost = np.array([float(r["cost_next"]) for r in recs])
  return NaiveGroups(cost[keep], treated[keep], target[keep], _strata(age, female)[keep])


# ------------------------------------------------------------------------------------------------
# The measurement: model effect, true effect, naive contrast, bias.


@dataclasses.dataclass
class Sizes:
  """How much the measurement samples (the report's flags)."""
  members: int = 12           # members per intervention (a seeded sample of the eligible)
  futures: int = 2            # sampled futures per member and arm
  rollouts: int = 64          # simulator roll-outs per member and arm (the truth)
  naive_members: int = 4000   # train members of the naive contrast
  bootstrap: int = 1000
  seed: int = 0


@dataclasses.dataclass
class Arm:
  """One intervention's per-member measurements (M members)."""
  name: str
  cost_model_M: np.ndarray         # mean over futures of edited - unedited cost
  cost_true_M: np.ndarray          # mean over roll-outs of intervened - unintervened cost
  onset_model_MxC: np.ndarray      # effect on P(condition coded next year); NaN where prior
  onset_true_MxC: np.ndarray
  model_cost_base_MxN: np.ndarray  # the futures' costs (the distribution plot)
  model_cost_edit_MxN: np.ndarray
  true_cost_base_RxM: np.ndarray
  true_cost_int_RxM: np.ndarray
  naive: float = float("nan")
  naive_boot_B: np.ndarray | None = None
  naive_members: int = 0
  naive_smaller_group: int = 0     # members in the smaller of the treated / untreated groups


def sample_outcomes(sampler: Any, recs: Sequence[Mapping[str, Any]], vocab: Any,
                    index: Sequence[int], sizes: Sizes, batch_patients: int
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """(cost [P, N], condition flags [P, N, C], sampling stats) of N futures per record, record p
  keyed by index[p] (equal indices: the same random keys)."""
  out = zero_shot.simulate(sampler, recs, vocab, batch_patients=batch_patients, seed=sizes.seed,
                           progress=False, patient_index=index)
  return out["cost"], out["cond"].astype(np.float64), out["stats"]


def measure(sampler: Any, vocab: Any, held_out: Sequence[Mapping[str, Any]],
            train: Sequence[Mapping[str, Any]], meds_dir: str | None, sizes: Sizes, *,
            batch_patients: int = 16) -> dict[str, Any]:
  """Per-intervention measurements (`Arm`s) and the counts behind them.

  held_out: the task records the members are drawn from (on the synthetic world, those of one
  chunk: its replay gives their true latent state); train: the naive contrast's records.
  meds_dir: the synthetic world's MEDS directory (None: no truth).
  """
  book = Codebook(vocab)
  rng = np.random.default_rng(sizes.seed)
  hist = [parse(r, book) for r in held_out]
  picked: dict[str, list[tuple[int, Edit]]] = {}
  counts: dict[str, dict[str, int]] = {}
  for name, fn in EDITS.items():
    edits = [(i, fn(h, book, np.asarray(r["cond_prior"]))) for i, (h, r) in
             enumerate(zip(hist, held_out))]
    eligible = [(i, e) for i, e in edits if e is not None]
    take = sorted(rng.choice(len(eligible), min(sizes.members, len(eligible)), replace=False)) \
        if eligible else []
    picked[name] = [eligible[j] for j in take]
    counts[name] = {"read": len(held_out), "eligible": len(eligible), "sampled": len(take)}
  # The model: each member's unedited futures once; an edited history reuses its member's keys.
  members = sorted({i for v in picked.values() for i, _ in v})
  pos = {i: p for p, i in enumerate(members)}
  seconds = {}
  cpu0, t0 = _clock()
  base_cost, base_cond, stats = sample_outcomes(
      sampler, [held_out[i] for i in members], vocab, list(range(len(members))), sizes,
      batch_patients)
  # All edited histories in one pass (full batches), each keyed by its member's position.
  order = [(name, i, e) for name, chosen in picked.items() for i, e in chosen]
  cost_all, cond_all, st = sample_outcomes(
      sampler, [render(e.history, book, held_out[i]) for _, i, e in order], vocab,
      [pos[i] for _, i, _ in order], sizes, batch_patients)
  gen_tokens = stats["generated_tokens"] + st["generated_tokens"]
  arms = []
  truth_rep: dict[int, Any] = {}
  for name, chosen in picked.items():
    if not chosen:
      continue
    rows = [j for j, (n, _, _) in enumerate(order) if n == name]
    idx = [i for i, _ in chosen]
    cost_e, cond_e = cost_all[rows], cond_all[rows]
    cost_b = base_cost[[pos[i] for i in idx]]
    cond_b = base_cond[[pos[i] for i in idx]]
    prior = np.stack([np.asarray(held_out[i]["cond_prior"], bool) for i in idx])
    onset_model = np.where(prior, np.nan, (cond_e - cond_b).mean(1))
    no_truth = np.full((sizes.rollouts, len(idx)), np.nan)
    arms.append(Arm(name, (cost_e - cost_b).mean(1), np.full(len(idx), np.nan),
                    onset_model, np.full_like(onset_model, np.nan), cost_b, cost_e,
                    no_truth, no_truth.copy()))
  seconds["model"] = _since(cpu0, t0)
  verified = 0
  if meds_dir is not None:
    cpu0, t0 = _clock()
    ids = np.array([int(held_out[i]["subject_id"]) for i in members], np.int64)
    chunk, within = intervene.chunk_of(meds_dir, ids)
    by_id = dict(zip(ids.tolist(), zip(chunk.tolist(), within.tolist())))
    for k in sorted(set(chunk.tolist())):
      truth_rep[k] = intervene.replay(meds_dir, k)
      verified += intervene.verify_history(meds_dir, truth_rep[k], ids[chunk == k])
    seconds["replay"] = _since(cpu0, t0)
    cpu0, t0 = _clock()
    for arm in arms:
      chosen = picked[arm.name]
      where = [by_id[int(held_out[i]["subject_id"])] for i, _ in chosen]
      for k in sorted({c for c, _ in where}):
        js = [j for j, (c, _) in enumerate(where) if c == k]
        te = intervene.true_effect(
            truth_rep[k], np.array([where[j][1] for j in js]), arm.name,
            [chosen[j][1].condition for j in js], rollouts=sizes.rollouts, seed=sizes.seed)
        arm.cost_true_M[js] = te.cost_effect_N
        arm.onset_true_MxC[js] = np.where(np.isnan(arm.onset_model_MxC[js]), np.nan,
                                          te.cond_effect_NxC)
        arm.true_cost_base_RxM[:, js] = te.cost_base_RxN
        arm.true_cost_int_RxM[:, js] = te.cost_int_RxN
    seconds["truth"] = _since(cpu0, t0)
  # The naive contrast on train.
  cpu0, t0 = _clock()
  if len(train) > sizes.naive_members:
    keep = np.sort(np.random.default_rng(sizes.seed).choice(len(train), sizes.naive_members,
                                                            replace=False))
    train = [train[i] for i in keep]
  train_hist = [parse(r, book) for r in train]
  for arm in arms:
    conds = [e.condition for _, e in picked[arm.name]]
    cond = max(set(conds), key=conds.count) if arm.name == "start_drug" else None
    g = naive_groups(arm.name, train_hist, train, book, cond)
    fn = lambda ix, g=g: standardized_contrast(  # noqa: E731
        g.cost_N[ix], g.treated_N[ix], g.target_N[ix], g.strata_N[ix])
    # Treated - untreated: adherent, on the drug, or without a stay (the removal's effect).
    arm.naive = fn(np.arange(len(g.cost_N)))
    arm.naive_boot_B = bootstrap_replicates(fn, len(g.cost_N), num=sizes.bootstrap,
                                            seed=sizes.seed)
    arm.naive_members = int(len(g.cost_N))
    arm.naive_smaller_group = int(min(g.treated_N.sum(), (~g.treated_N).sum()))
  seconds["naive"] = _since(cpu0, t0)
  return {"arms": arms, "counts": counts, "members": len(members), "seconds": seconds,
          "generated_tokens": int(gen_tokens), "verified_rows": int(verified),
          "chunks_replayed": sorted(truth_rep)}


def _clock() -> tuple[float, float]:
  return time.process_time(), time.time()


def _since(cpu0: float, t0: float) -> dict[str, float]:
  cpu1, t1 = _clock()
  return {"wall_s": t1 - t0, "cpu_s": cpu1 - cpu0}


def bias_table(arms: Sequence[Arm], sizes: Sizes) -> list[dict[str, Any]]:
  """Per intervention: model effect, true effect, model bias, naive contrast and its bias, each
  with a 95% bootstrap interval (model and truth paired over members; the naive contrast's own
  bootstrap over train members against the truth's)."""
  rows = []
  for arm in arms:
    m = len(arm.cost_model_M)
    b = dict(num=sizes.bootstrap, seed=sizes.seed)
    row: dict[str, Any] = {"intervention": arm.name, "members": m,
                           "naive_members": arm.naive_members,
                           "naive_smaller_group": arm.naive_smaller_group}
    row["model"] = bootstrap_mean(arm.cost_model_M, **b)
    row["true"] = bootstrap_mean(arm.cost_true_M, **b)
    row["model_bias"] = bootstrap_mean(arm.cost_model_M - arm.cost_true_M, **b)
    true_boot = bootstrap_replicates(lambda ix: float(np.nanmean(arm.cost_true_M[ix])), m, **b)
    row["naive"] = (arm.naive,) + (bootstrap_difference(arm.naive_boot_B, np.zeros_like(
        arm.naive_boot_B)) if arm.naive_boot_B is not None else (float("nan"),) * 2)
    nb = arm.naive - row["true"][0]
    row["naive_bias"] = (nb,) + (bootstrap_difference(arm.naive_boot_B, true_boot)
                                 if arm.naive_boot_B is not None else (float("nan"),) * 2)
    row["bias_reduction"] = (1 - abs(row["model_bias"][0]) / abs(nb)
                             if np.isfinite(nb) and nb != 0 else float("nan"))
    rows.append(row)
  return rows


# ------------------------------------------------------------------------------------------------
# The report section.

_LABEL = {"start_drug": "start a maintenance drug", "adherence": "raise adherence (PDC >= 0.8)",
          "remove_admission": "remove the last admission"}


def _ci(t: Sequence[float]) -> str:
  m, lo, hi = t
  if not np.isfinite(m):
    return "n/a"
  return f"{m:+,.0f} [{lo:+,.0f}, {hi:+,.0f}]" if np.isfinite(lo) else f"{m:+,.0f}"


def _distribution_plot(arms: Sequence[Arm], path: str) -> str | None:
  """Quantiles (5%..95%) of the pooled next-year cost: model futures and simulator roll-outs,
  without and with each intervention (interventions of fewer than 11 members left out)."""
  shown = [a for a in arms if not privacy.suppress_mask(len(a.cost_model_M))]
  if not shown:
    return None
  q = np.linspace(0.05, 0.95, 19)
  fig, axes = plots.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.6), squeeze=False)
  for ax, a in zip(axes[0], shown):
    for x, style, label in ((a.model_cost_base_MxN, "C0--", "model, unedited"),
                            (a.model_cost_edit_MxN, "C0-", "model, edited"),
                            (a.true_cost_base_RxM, "C3--", "simulator, as is"),
                            (a.true_cost_int_RxM, "C3-", "simulator, intervened")):
      v = np.asarray(x, np.float64).ravel()
      v = v[np.isfinite(v)]
      if len(v):
        ax.plot(q, np.quantile(v, q), style, label=label)
    ax.set(yscale="symlog", xlabel="quantile", ylabel="next-year cost ($)",
           title=f"{_LABEL[a.name]} ({len(a.cost_model_M)} members)")
    ax.legend(fontsize=7)
  return plots.save_png(fig, path)


def _bias_plot(rows: Sequence[Mapping[str, Any]], path: str) -> str | None:
  rows = [r for r in rows if not privacy.suppress_mask(r["members"])]
  if not rows:
    return None
  fig, ax = plots.subplots(figsize=(6.5, 3.6))
  x = np.arange(len(rows))
  for off, key, label, color in ((-0.18, "model_bias", "model - truth", "C0"),
                                 (0.18, "naive_bias", "naive contrast - truth", "C1")):
    # The naive contrast is left out where one of its groups is a small cell (as in the table).
    ok = np.array([key == "model_bias" or not privacy.suppress_mask(r["naive_smaller_group"])
                   for r in rows])
    m = np.where(ok, [r[key][0] for r in rows], np.nan)
    err = np.where(ok, np.array([[r[key][0] - r[key][1], r[key][2] - r[key][0]] for r in rows]).T,
                   np.nan)
    ax.bar(x + off, m, 0.36, yerr=np.nan_to_num(err), color=color, label=label, capsize=3)
  ax.axhline(0, color="k", lw=0.8)
  ax.set_xticks(x, [_LABEL[r["intervention"]] for r in rows], fontsize=7)
  ax.set(ylabel="bias of the next-year cost effect ($)",
         title="Bias against the simulator's true effect (95% bootstrap)")
  ax.legend(fontsize=7)
  return plots.save_png(fig, path)


def _onset_rows(arm: Arm, top: int = 5) -> list[list[Any]]:
  names = conditions.CONDITION_NAMES
  n_C = np.isfinite(arm.onset_model_MxC).sum(0)
  true_C = np.nanmean(np.where(np.isfinite(arm.onset_true_MxC), arm.onset_true_MxC, np.nan), 0) \
      if np.isfinite(arm.onset_true_MxC).any() else np.full(len(names), np.nan)
  model_C = np.array([np.nanmean(arm.onset_model_MxC[:, c]) if n_C[c] else np.nan
                      for c in range(len(names))])
  key = np.where(np.isfinite(true_C), np.abs(true_C), np.abs(np.nan_to_num(model_C)))
  out = []
  for c in np.argsort(-key, kind="stable")[:top]:
    if privacy.suppress_mask(n_C[c]):
      continue
    m = bootstrap_mean(arm.onset_model_MxC[:, c], seed=0)
    t = bootstrap_mean(arm.onset_true_MxC[:, c], seed=0)
    out.append([_LABEL[arm.name], names[c], privacy.count_cell(int(n_C[c])),
                f"{m[0]:+.3f} [{m[1]:+.3f}, {m[2]:+.3f}]",
                f"{t[0]:+.3f} [{t[1]:+.3f}, {t[2]:+.3f}]" if np.isfinite(t[0]) else "n/a"])
  return out


def _summary_row(r: Mapping[str, Any]) -> dict[str, Any]:
  """A table row for the JSON summary, the naive figures blanked where the table suppresses them."""
  out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in r.items()}
  if privacy.suppress_mask(r["naive_smaller_group"]):
    out["naive"] = out["naive_bias"] = out["bias_reduction"] = None
  return out


def section(sampler: Any, vocab: Any, held_out: Sequence[Mapping[str, Any]],
            train: Sequence[Mapping[str, Any]], meds_dir: str | None, workdir: str,
            sizes: Sizes, *, model_desc: str, batch_patients: int = 16
            ) -> tuple[list[str], dict[str, Any]]:
  """The report's "Intervention effects" section (markdown lines) and its summary."""
  res = measure(sampler, vocab, held_out, train, meds_dir, sizes, batch_patients=batch_patients)
  rows = bias_table(res["arms"], sizes)
  lines = ["## Intervention effects", "",
           "A member's history is edited (start a maintenance drug, raise adherence to PDC >= 0.8, "
           "remove the most recent admission; `lmm_jax.insights.interventions`) and "
           f"{sizes.futures} futures are sampled from the pretrained model ({model_desc}) for the "
           "unedited and the edited history with the same random keys. The effect is the mean "
           "difference in next-year cost (and in each condition's onset probability) per member, "
           f"averaged over up to {sizes.members} seeded members per intervention with a 95% paired "
           "bootstrap interval."]
  if meds_dir is not None:
    lines[-1] += (
        " On the synthetic world the **true effect** comes from the simulator: the members' chunk "
        f"is re-simulated to the index date ({res['verified_rows']} rows checked equal to the "
        f"written data), the intervention is applied to their latent state, and the target year "
        f"is rolled out {sizes.rollouts} times per arm from the same random stream "
        "(`lmm_jax.synth.intervene`). The **naive contrast** is the next-year cost of train "
        f"members who look treated minus that of the others (up to {sizes.naive_members} train "
        "members, standardized to the target group's age band and sex). Bias = estimate - true "
        "effect; the bias reduction is 1 - |model bias| / |naive bias|.")
  lines.append("")
  table = []
  for r in rows:
    small = privacy.suppress_mask(r["members"])
    # The naive contrast compares two groups: both must reach the small-cell size.
    naive_ok = not privacy.suppress_mask(r["naive_smaller_group"])
    cells = [_LABEL[r["intervention"]], privacy.count_cell(r["members"])]
    if small:
      cells += ["suppressed"] * 6
    else:
      cells += [_ci(r["model"]), _ci(r["true"]), _ci(r["model_bias"]),
                _ci(r["naive"]) if naive_ok else "suppressed",
                _ci(r["naive_bias"]) if naive_ok else "suppressed",
                "n/a" if not (naive_ok and np.isfinite(r["bias_reduction"]))
                else f"{r['bias_reduction']:.0%}"]
    table.append(cells)
  # The report imports this module: its table helper is imported here, not at the top.
  from lmm_jax.insights import report as report_lib   # pylint: disable=g-import-not-at-top
  lines += [report_lib._md_table(  # pylint: disable=protected-access
      ["intervention", "members", "model effect ($)", "true effect ($)", "model bias ($)",
       "naive contrast ($)", "naive bias ($)", "bias reduction"], table), ""]
  onset = [row for a in res["arms"] for row in _onset_rows(a)]
  if onset:
    lines += ["Effect on the probability of a new onset (conditions not coded before the index; "
              "the five with the largest true effect per intervention):", "",
              report_lib._md_table(  # pylint: disable=protected-access
                  ["intervention", "condition", "members at risk", "model effect",
                   "true effect"], onset), ""]
  for fn, name, caption in ((_distribution_plot, "interventions_distribution.png",
                             "Next-year cost quantiles, model futures vs simulator roll-outs"),
                            (_bias_plot, "interventions_bias.png", "Bias against the truth")):
    p = fn(res["arms"] if fn is _distribution_plot else rows, os.path.join(workdir, name))
    if p:
      lines += [f"![{caption}]({name})", ""]
  c = res["counts"]
  lines += ["Members: " + "; ".join(
      f"{_LABEL[k]}: {privacy.count_cell(v['eligible'])} eligible of {v['read']} read, "
      f"{privacy.count_cell(v['sampled'])} sampled" for k, v in c.items()) +
      f". Sampled tokens: {res['generated_tokens']}; seconds (wall / CPU): " + ", ".join(
          f"{k} {v['wall_s']:.1f} / {v['cpu_s']:.1f}" for k, v in res["seconds"].items()) + ".",
      ""]
  summary = {"sizes": dataclasses.asdict(sizes), "counts": c, "seconds": res["seconds"],
             "generated_tokens": res["generated_tokens"], "verified_rows": res["verified_rows"],
             "chunks_replayed": res["chunks_replayed"],
             "table": [_summary_row(r) for r in rows if not privacy.suppress_mask(r["members"])]}
  return lines, summary


def meds_dir_of(data_dir: str) -> str:
  """The MEDS directory the records were built from (their build report's meds_dir)."""
  path = os.path.join(data_dir, records.REPORT_FILE)
  with open(path, encoding="utf-8") as f:
    report = json.load(f)
  if "meds_dir" not in report:
    raise ValueError(f"{path}: no 'meds_dir' (the records' MEDS source)")
  return report["meds_dir"]


def run_section(pretrain_workdir: str, data_dir: str, workdir: str, sizes: Sizes, *,
                meds_dir: str | None, max_new_tokens: int = 512, batch_patients: int = 16,
                split: str = "held_out", chunk: int = 0) -> tuple[list[str], dict[str, Any]]:
  """Loads the pretrained model and the records, then `section`. On the synthetic world
  (meds_dir given) the members are drawn from one chunk of the world (its replay is the truth's
  cost: a whole chunk is re-simulated whoever is drawn from it)."""
  run = runs.load_run(pretrain_workdir, data_dir=data_dir,
                      hint=f"interventions: pretraining run {pretrain_workdir}")
  if not isinstance(run.task, PretrainTask):
    raise ValueError(f"{pretrain_workdir} is a {run.config.task!r} run; the intervention effects "
                     "sample futures from a pretraining run")
  vocab = run.task.vocab
  seq = int(run.config.seq_len)
  sc = decode.SamplingConfig(num_samples=sizes.futures, max_new_tokens=max_new_tokens)
  sampler = decode.Sampler(run.model, vocab.time_gap_days, vocab.eos_id, sc,
                           context_len=max(seq - max_new_tokens, seq // 2),
                           banned_ids=decode.banned_token_ids(
                               vocab, audit_lib.min_code_count_of(vocab)))
  held = list(records.read_records(data_dir, records.TASK, split))
  if meds_dir is not None:
    ids = np.array([int(r["subject_id"]) for r in held], np.int64)
    held = [r for r, k in zip(held, intervene.chunk_of(meds_dir, ids)[0]) if k == chunk]
  train = list(records.read_records(data_dir, records.TASK, conv.TRAIN))
  desc = f"{run.num_params:,} parameters, step {run.step}"
  lines, summary = section(sampler, vocab, held, train, meds_dir, workdir, sizes,
                           model_desc=desc, batch_patients=batch_patients)
  summary.update(model=os.path.abspath(pretrain_workdir), num_params=int(run.num_params),
                 step=int(run.step), split=split, chunk=chunk if meds_dir else None)
  return lines, summary
