"""Runs the world in chunks and writes the MEDS dataset, its metadata and the oracle ground truth.

One chunk of `patients_per_shard` people is one unit of work (and one parquet shard per split).
Every chunk draws from its own `np.random.SeedSequence(seed, spawn_key=(chunk,))`, so the output
for a seed does not depend on the number of worker processes.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import threadpoolctl
import tqdm

from lmm_jax import conditions as cond_lib
from lmm_jax import conventions as conv
from lmm_jax import workers
from lmm_jax.data import meds_io
from lmm_jax.data import terminology
from lmm_jax.synth import calibration
from lmm_jax.synth import codes as code_lib
from lmm_jax.synth import model as world
from lmm_jax.synth import sim

DATASET_NAME = "lmm_jax_synthetic_claims"
ETL_NAME = "lmm_jax.synth"
ETL_VERSION = "1.0.0"
MEDS_VERSION = "0.4.1"
AGE_BANDS = ((0, 18), (18, 45), (45, 65), (65, 75), (75, 85), (85, 200))
_US_PER_DAY = 86_400 * 1_000_000

DATA_SCHEMA = meds_io.CLAIMS_SCHEMA


def _oracle_schema() -> pa.Schema:
  fields = [pa.field("subject_id", pa.int64(), nullable=False),
            pa.field("index_date", pa.timestamp("us"), nullable=False),
            pa.field("expected_cost", pa.float64()), pa.field("expected_cost_capped", pa.float64())]
  fields += [pa.field(f"p_{c}", pa.float32()) for c in cond_lib.CONDITION_NAMES]
  fields += [pa.field(f"true_{c}", pa.bool_()) for c in cond_lib.CONDITION_NAMES]
  fields += [pa.field("age", pa.float32()), pa.field("enrolled_at_index", pa.bool_())]
  # Added by world v2: the Monte-Carlo standard errors, the conditional median and its roll-outs.
  fields += [pa.field("expected_cost_se", pa.float64()),
             pa.field("expected_cost_capped_se", pa.float64()),
             pa.field("median_cost", pa.float64()), pa.field("median_cost_se", pa.float64())]
  fields += [pa.field(f"p_{c}_se", pa.float32()) for c in cond_lib.CONDITION_NAMES]
  fields += [pa.field("oracle_rollouts", pa.int32())]
  return pa.schema(fields)


ORACLE_SCHEMA = _oracle_schema()


def _copy_state(st: world.State) -> world.State:
  return st.take(np.arange(len(st.female)))


def _rows_table(subject_id: np.ndarray, st: world.State, sink: sim.Sink,
                members: sim.MemberEvents) -> pa.Table:
  """The chunk's MEDS rows, sorted by subject, time (static first), then claim and line."""
  n = len(subject_id)
  # Claims, in (person, day, emission) order.
  if sink.parts:
    pidx, day, ctype, pos, cost, ncodes, flat = (np.concatenate(x) for x in zip(*sink.parts))
  else:
    pidx, day, ctype, pos, cost, ncodes, flat = (np.zeros(0, d) for d in (
        np.int32, np.int64, np.int32, np.int32, np.float32, np.int32, np.int32))
  num_claims = len(pidx)
  order = np.lexsort((np.arange(num_claims), day, pidx))
  code_off = np.cumsum(ncodes) - ncodes
  nc_s = ncodes[order]
  within = np.arange(int(nc_s.sum())) - np.repeat(np.cumsum(nc_s) - nc_s, nc_s)
  flat_s = flat[np.repeat(code_off[order], nc_s) + within]
  pidx, day, ctype, pos, cost = pidx[order], day[order], ctype[order], pos[order], cost[order]
  ordinal = np.arange(num_claims) - np.searchsorted(pidx, pidx, side="left")
  claim_id = subject_id[pidx] * 1_000_000 + ordinal
  per_claim = 3 + nc_s
  starts = np.cumsum(per_claim) - per_claim
  total = int(per_claim.sum())
  c_code = np.empty(total, np.int32)
  c_code[starts] = ctype
  c_code[starts + 1] = pos
  c_code[np.repeat(starts + 2, nc_s) + within] = flat_s
  c_code[starts + 2 + nc_s] = code_lib.COST
  c_value = np.full(total, np.nan, np.float32)
  c_value[starts + 2 + nc_s] = np.round(cost, 2)
  c_line = np.arange(total) - np.repeat(starts, per_claim)

  # Member rows: sex (static), birth, enrollment spans and deaths.
  ar = np.arange(n, dtype=np.int32)
  m_pidx = [ar, ar] + members.pidx
  m_day = [np.zeros(n, np.int64), st.birth_day] + members.day
  m_code = [np.where(st.female, code_lib.FEMALE, code_lib.MALE).astype(np.int32),
            np.full(n, code_lib.BIRTH, np.int32)] + members.code
  m_prio = [np.zeros(n, np.int8), np.zeros(n, np.int8)] + members.prio
  m_pidx, m_day, m_code, m_prio = (np.concatenate(x) for x in (m_pidx, m_day, m_code, m_prio))
  static = np.zeros(len(m_pidx), bool)
  static[:n] = True

  r_pidx = np.concatenate([m_pidx, np.repeat(pidx, per_claim)])
  r_day = np.concatenate([m_day, np.repeat(day, per_claim)])
  r_static = np.concatenate([static, np.zeros(total, bool)])
  r_code = np.concatenate([m_code, c_code])
  r_value = np.concatenate([np.full(len(m_pidx), np.nan, np.float32), c_value])
  r_claim = np.concatenate([np.full(len(m_pidx), -1, np.int64), np.repeat(claim_id, per_claim)])
  r_prio = np.concatenate([m_prio, np.full(total, sim.PRIO_CLAIM, np.int8)])
  r_line = np.concatenate([np.zeros(len(m_pidx), np.int64), c_line])
  time_key = np.where(r_static, np.iinfo(np.int64).min, r_day)
  order = np.lexsort((r_line, r_claim, r_prio, time_key, r_pidx))

  r_pidx, r_day, r_static, r_code, r_value, r_claim = (
      x[order] for x in (r_pidx, r_day, r_static, r_code, r_value, r_claim))
  times = pa.array(r_day * _US_PER_DAY, pa.int64(), mask=r_static).cast(pa.timestamp("us"))
  code = pa.DictionaryArray.from_arrays(pa.array(r_code, pa.int32()),
                                        pa.array(code_lib.CODES, pa.string())).cast(pa.string())
  return pa.Table.from_arrays([
      pa.array(subject_id[r_pidx], pa.int64()), times, code,
      pa.array(r_value, pa.float32(), mask=np.isnan(r_value)),
      pa.array(r_claim, pa.int64(), mask=r_claim < 0)], schema=DATA_SCHEMA)


def simulate_target_year(base: world.State, t0: int, cal: sim.Calendar, rollouts: int,
                         rng: np.random.Generator
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """`rollouts` simulated target years: total cost float64 [R, n], case bits int32 [R, n] (the
  plain 0/1 outcome), and the sum and sum of squares over roll-outs of the Rao-Blackwellized case
  probabilities (sim.Sink.case_probability), float64 [n, C] each."""
  n = len(base.female)
  costs, cases = [], []
  p_sum = np.zeros((n, cond_lib.NUM_CONDITIONS))
  p_sq = np.zeros((n, cond_lib.NUM_CONDITIONS))
  # Replicas in batches keep memory bounded (about 50k person-rows per batch).
  batch = max(1, min(rollouts, 50_000 // max(n, 1)))
  done = 0
  while done < rollouts:
    b = min(batch, rollouts - done)
    st = base.take(np.tile(np.arange(n), b))
    st.enrolled[:] = True
    sink = sim.Sink(n * b, 1, t0, rng, emit=False, rao_blackwell=True)
    for t in range(t0, t0 + 12):
      sim.step(st, t, cal, rng, sink, None)
    costs.append(sink.cost[0].reshape(b, n))
    cases.append(sink.case[0].reshape(b, n))
    prob = sink.case_probability().reshape(b, n, -1)
    p_sum += prob.sum(0)
    p_sq += np.square(prob).sum(0)
    done += b
  return np.concatenate(costs), np.concatenate(cases), p_sum, p_sq


def _median_and_se(cost_RxN: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The per-person median of the roll-outs and its standard error from the distribution-free
  95% interval of the median (order statistics R/2 -+ 1.96 sqrt(R)/2), divided by 2 x 1.96."""
  r = len(cost_RxN)
  srt = np.sort(cost_RxN, axis=0)
  med = np.median(cost_RxN, axis=0)
  half = 1.96 * np.sqrt(r) / 2
  lo = int(np.clip(np.floor(r / 2 - half), 0, r - 1))
  hi = int(np.clip(np.ceil(r / 2 + half), 0, r - 1))
  return med, (srt[hi] - srt[lo]) / (2 * 1.96)


def _oracle(snap: world.State, alive_idx: np.ndarray, subject_id: np.ndarray, t0: int,
            cal: sim.Calendar, rollouts: np.ndarray, rng: np.random.Generator,
            enrolled: np.ndarray) -> tuple[pa.Table, np.ndarray]:
  """Next-year cost (mean, median) and condition-label probabilities by rolling the world forward
  from the true latent state; rollouts: int [len(alive_idx)], the roll-outs of each row. Returns
  the oracle rows and the plain (count) estimate of the probabilities [n, C], for the summary."""
  n = len(alive_idx)
  base = snap.take(alive_idx)
  num_c = cond_lib.NUM_CONDITIONS
  out = {k: np.zeros(n) for k in ("cost", "cost_se", "capped", "capped_se", "median",
                                   "median_se")}
  p, p_se = np.zeros((n, num_c)), np.zeros((n, num_c))
  p_count = np.zeros((n, num_c))   # the plain share of roll-outs with a case, for the summary
  for r in np.unique(rollouts):
    rows = np.flatnonzero(rollouts == r)
    cost, case, p_sum, p_sq = simulate_target_year(base.take(rows), t0, cal, int(r), rng)
    capped = np.minimum(cost, conv.COST_CAP)
    sd = lambda x: x.std(0, ddof=1) / np.sqrt(r) if r > 1 else np.full(x.shape[1], np.nan)  # noqa: E731
    out["cost"][rows], out["cost_se"][rows] = cost.mean(0), sd(cost)
    out["capped"][rows], out["capped_se"][rows] = capped.mean(0), sd(capped)
    out["median"][rows], out["median_se"][rows] = _median_and_se(cost)
    p_count[rows] = ((case[:, :, None] >> np.arange(num_c)) & 1).mean(0)
    p[rows] = p_sum / r
    var = np.maximum(p_sq - r * np.square(p[rows]), 0) / (r - 1) if r > 1 else np.nan
    p_se[rows] = np.sqrt(var / r)
  index_day = int(cal.start[t0])
  cols: dict[str, Any] = {
      "subject_id": pa.array(subject_id[alive_idx], pa.int64()),
      "index_date": pa.array(np.full(n, index_day * _US_PER_DAY, np.int64)).cast(
          pa.timestamp("us")),
      "expected_cost": pa.array(out["cost"]),
      "expected_cost_capped": pa.array(out["capped"]),
  }
  for i, c in enumerate(cond_lib.CONDITION_NAMES):
    cols[f"p_{c}"] = pa.array(p[:, i].astype(np.float32))
  for i, c in enumerate(cond_lib.CONDITION_NAMES):
    cols[f"true_{c}"] = pa.array(base.present[:, i])
  cols["age"] = pa.array(((t0 - base.birth_mi) / 12.0).astype(np.float32))
  cols["enrolled_at_index"] = pa.array(enrolled[alive_idx])
  cols["expected_cost_se"] = pa.array(out["cost_se"])
  cols["expected_cost_capped_se"] = pa.array(out["capped_se"])
  cols["median_cost"] = pa.array(out["median"])
  cols["median_cost_se"] = pa.array(out["median_se"])
  for i, c in enumerate(cond_lib.CONDITION_NAMES):
    cols[f"p_{c}_se"] = pa.array(p_se[:, i].astype(np.float32))
  cols["oracle_rollouts"] = pa.array(rollouts.astype(np.int32))
  return pa.table(cols, schema=ORACLE_SCHEMA), p_count


def _calibration_stats(st_age_at: np.ndarray, sink: sim.Sink, covered_months: np.ndarray,
                       year: int) -> dict[str, np.ndarray]:
  """Per-chunk figures for calibration: costs of full-year members, coded prevalence by age."""
  full = covered_months[year] == 12
  costs = sink.cost[year][full]
  bits = sink.case[year][full]
  age = st_age_at[full]
  band = np.searchsorted([b[1] for b in AGE_BANDS[:-1]], age, side="right")
  flags = (bits[:, None] >> np.arange(cond_lib.NUM_CONDITIONS)) & 1
  counts = np.zeros((len(AGE_BANDS), cond_lib.NUM_CONDITIONS))
  np.add.at(counts, band, flags)
  members = np.bincount(band, minlength=len(AGE_BANDS)).astype(np.float64)
  return {"costs": costs.astype(np.float32), "prev_counts": counts, "band_members": members}


def simulate_chunk(task: dict[str, Any]) -> dict[str, Any]:
  """Simulates one chunk, writes its shards; returns the oracle, splits and calibration figures."""
  # The small matrix products are ~10x slower with a multi-threaded BLAS on a busy machine, and
  # chunks already run in parallel processes.
  with threadpoolctl.threadpool_limits(1):
    return _simulate_chunk(task)


@dataclasses.dataclass
class ChunkRun:
  """A chunk's simulation as the writer ran it: the state, its claims and the index snapshot."""
  st: world.State
  sink: sim.Sink
  members: sim.MemberEvents
  subject_id: np.ndarray        # int64 [n]
  ever: np.ndarray              # bool [n]: covered at some time (written to the data)
  snap: world.State | None      # the state at the start of the index month t0
  enrolled_at_index: np.ndarray | None
  covered_months: np.ndarray    # int8 [years, n]
  cal: sim.Calendar
  t0: int
  ss_oracle: np.random.SeedSequence
  ss_split: np.random.SeedSequence


def run_chunk(task: dict[str, Any], through_month: int | None = None) -> ChunkRun:
  """Simulates a chunk's people month by month (deterministic in the task's seed and chunk).

  through_month: stop before that month (default: the whole window); the index month t0 is the
  first month of the last year, so through_month=t0 gives the histories and the index snapshot.
  """
  k, n, seed = task["chunk"], task["num_patients"], task["seed"]
  first_year, last_year = task["first_year"], task["last_year"]
  ss = np.random.SeedSequence(seed, spawn_key=(k,))
  ss_pop, ss_sim, ss_oracle, ss_split = ss.spawn(4)
  num_years = last_year - first_year + 1
  num_months = 12 * num_years
  t0 = 12 * (num_years - 1)
  cal = sim.Calendar(first_year, num_months)
  st = world.new_population(n, first_year, np.random.default_rng(ss_pop))
  rng = np.random.default_rng(ss_sim)
  sink = sim.Sink(n, num_years, 0, rng, emit=True)
  members = sim.MemberEvents()
  covered_months = np.zeros((num_years, n), np.int8)
  snap = None
  enrolled_at_index = None
  for t in range(num_months if through_month is None else through_month):
    if t == t0:
      snap = _copy_state(st)
    was_enrolled = st.enrolled.copy()
    sim.step(st, t, cal, rng, sink, members)
    # A month counts as covered when the person was enrolled in it (including the month of death).
    died_now = (st.death_day >= cal.start[t]) & (st.death_day < cal.start[t] + cal.length[t])
    covered = st.enrolled | (died_now & was_enrolled)
    covered_months[t // 12] += covered
    if t == t0:
      enrolled_at_index = covered
  if snap is None and through_month == t0:
    snap = _copy_state(st)
  subject_id = (k * task["patients_per_shard"] + np.arange(n) + 1).astype(np.int64)
  # People never covered in the window (late joiners who died first) leave no trace in claims
  # data: they are not written, and have no split and no oracle row.
  ever = np.zeros(n, bool)
  for p_idx, codes in zip(members.pidx, members.code):
    ever[p_idx[np.isin(codes, code_lib.ENROLL_START)]] = True
  return ChunkRun(st, sink, members, subject_id, ever, snap, enrolled_at_index, covered_months,
                  cal, t0, ss_oracle, ss_split)


def rows_table(run: ChunkRun) -> pa.Table:
  """The chunk's MEDS rows (all its people, whatever their split), as the writer writes them."""
  return _rows_table(run.subject_id, run.st, run.sink, run.members)


def _simulate_chunk(task: dict[str, Any]) -> dict[str, Any]:
  run = run_chunk(task)
  k, n = task["chunk"], task["num_patients"]
  num_years = task["last_year"] - task["first_year"] + 1
  st, sink, members, subject_id, ever = run.st, run.sink, run.members, run.subject_id, run.ever
  snap, enrolled_at_index, covered_months, cal, t0 = (run.snap, run.enrolled_at_index,
                                                      run.covered_months, run.cal, run.t0)
  ss_oracle, ss_split = run.ss_oracle, run.ss_split
  table = _rows_table(subject_id, st, sink, members)
  u = np.random.default_rng(ss_split).random(n)
  train_f, tuning_f, _ = task["split_fractions"]
  split = np.where(u < train_f, 0, np.where(u < train_f + tuning_f, 1, 2))
  split = np.where(ever, split, -1)
  row_split = split[(table.column("subject_id").to_numpy() - subject_id[0]).astype(np.int64)]
  rows_written = {}
  for j, name in enumerate(conv.SPLITS):
    mask = row_split == j
    if not mask.any():
      continue
    part = table.filter(pa.array(mask))
    path = os.path.join(task["output_dir"], "data", name, f"{k}.parquet")
    pq.write_table(part, path, compression="zstd")
    rows_written[name] = part.num_rows
  alive_idx = np.nonzero(snap.alive & ever)[0]
  # The held-out members, whom the tables evaluate, get the precise oracle.
  rollouts = np.where(split[alive_idx] == conv.SPLITS.index(conv.HELD_OUT), task["rollouts"],
                      task["rollouts_other"])
  oracle, p_count = _oracle(snap, alive_idx, subject_id, t0, cal, rollouts,
                   np.random.default_rng(ss_oracle), enrolled_at_index)
  used_codes = set(pc.unique(table.filter(pa.array(row_split >= 0)).column("code")).to_pylist())
  calib_year = num_years - 2 if num_years >= 2 else num_years - 1
  age_calib = ((12 * calib_year + 6 - st.birth_mi) / 12.0).astype(np.float32)
  calib = _calibration_stats(age_calib, sink, covered_months, calib_year)
  calib["world"] = calibration.chunk_parts(sink, st, covered_months, cal, calib_year)
  # The last-year cost of members covered all year, paired with the oracle (for the summary).
  full_last = covered_months[num_years - 1] == 12
  last_cost = sink.cost[num_years - 1]
  return {
      "chunk": k, "oracle": oracle, "oracle_p_count": p_count, "subject_id": subject_id[ever],
      "split": split[ever].astype(np.int8), "rows": int(sum(rows_written.values())), "rows_by_split": rows_written, "used_codes": used_codes,
      "calib": calib, "dropped_claims": sink.dropped, "num_patients": n,
      "last_year_cost": last_cost[alive_idx], "last_year_full": full_last[alive_idx],
      "prior_year_cost": sink.cost[num_years - 2][alive_idx] if num_years >= 2 else None,
  }


def _describe_chunk(task: dict[str, Any]) -> str:
  return f"simulating chunk {task['chunk']} (data/*/{task['chunk']}.parquet)"


def _code_metadata(used: set[str]) -> pa.Table:
  """codes.parquet: descriptions (ICD-10-CM from simple-icd-10-cm; none for CPT: AMA copyright)."""
  rx_class = {}
  for klass in code_lib.DRUG_CLASSES:
    for i in code_lib.NDC_IDS[klass]:
      rx_class[code_lib.CODES[i]] = klass.replace("_", " ")
  claim_desc = {f"{conv.CLAIM}//{t}": f"Claim type: {t.lower().replace('_', ' ')}"
                for t in conv.CLAIM_TYPES}
  pos_desc = {f"{conv.POS}//{p}": f"Place of service: {d}"
              for p, d in conv.PLACES_OF_SERVICE.items()}
  codes, descs, parents = [], [], []
  for code in sorted(used):
    desc, parent = None, []
    system, _, value = code.partition(conv.SEP)
    if system == conv.ICD10CM:
      desc = terminology.icd10cm_description(value)
      ancestors = terminology.icd10cm_ancestors(value)  # nearest first
      parent = [f"{conv.ICD10CM}{conv.SEP}{ancestors[0]}"] if ancestors else []
    elif system == conv.NDC:
      desc = f"Drug product in the HHS-HCC drug class '{rx_class.get(code, 'unknown')}'"
    elif code in claim_desc:
      desc = claim_desc[code]
    elif code in pos_desc:
      desc = pos_desc[code]
    elif code == conv.COST_ALLOWED_CODE:
      desc = "Allowed amount of the claim in US dollars (numeric_value)"
    elif code in (conv.FEMALE_CODE, conv.MALE_CODE):
      desc = "Sex: female" if code == conv.FEMALE_CODE else "Sex: male"
    elif code == conv.BIRTH_CODE:
      desc = "Birth"
    elif code == conv.DEATH_CODE:
      desc = "Death"
    elif system == conv.ENROLLMENT:
      boundary, _, lob = value.partition(conv.SEP)
      desc = f"{'Start' if boundary == 'START' else 'End'} of {lob.lower()} coverage"
    codes.append(code)
    descs.append(desc)
    parents.append(parent)
  return pa.table({"code": pa.array(codes, pa.string()), "description": pa.array(descs, pa.string()),
                   "parent_codes": pa.array(parents, pa.list_(pa.string()))})


def _regression_figures(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
  mae = float(np.mean(np.abs(y - pred)))
  sst = float(np.sum((y - y.mean()) ** 2))
  r2 = 1.0 - float(np.sum((y - pred) ** 2)) / sst if sst > 0 else float("nan")
  cpm = 1.0 - float(np.sum(np.abs(y - pred))) / float(np.sum(np.abs(y - y.mean())) or 1.0)
  return {"mae": mae, "nmae": mae / float(y.mean() or 1.0), "r2": r2, "cpm": cpm}


def _summary_figures(results: list[dict[str, Any]]) -> dict[str, Any]:
  costs = np.concatenate([r["calib"]["costs"] for r in results]).astype(np.float64)
  counts = sum(r["calib"]["prev_counts"] for r in results)
  members = sum(r["calib"]["band_members"] for r in results)
  out: dict[str, Any] = {"calibration_members": int(len(costs))}
  out["dynamics"] = calibration.pooled([r["calib"]["world"] for r in results])
  if len(costs):
    s = np.sort(costs)[::-1]
    total = s.sum() or 1.0
    share = lambda f: float(s[:int(round(f * len(s)))].sum() / total)  # noqa: E731
    out.update({
        "mean_cost": float(costs.mean()), "median_cost": float(np.median(costs)),
        "zero_cost_share": float(np.mean(costs == 0)), "top1_share": share(0.01),
        "top5_share": share(0.05), "top10_share": share(0.10),
        "bottom50_share": float(np.sort(costs)[:len(costs) // 2].sum() / total)})
  prev = {}
  for b, (lo, hi) in enumerate(AGE_BANDS):
    if members[b] > 0:
      prev[f"{lo}-{hi - 1}" if hi < 200 else f"{lo}+"] = {
          "members": int(members[b]),
          **{c: float(counts[b, i] / members[b]) for i, c in enumerate(cond_lib.CONDITION_NAMES)}}
  out["coded_prevalence_by_age"] = prev
  # Oracle versus simple predictors on the held-out members covered all of the target year.
  orc = pa.concat_tables([r["oracle"] for r in results])
  split = np.concatenate([r["split"][np.isin(r["subject_id"], r["oracle"].column(
      "subject_id").to_numpy())] for r in results])
  y = np.concatenate([r["last_year_cost"] for r in results])
  full = np.concatenate([r["last_year_full"] for r in results])
  prior = np.concatenate([r["prior_year_cost"] for r in results]) if results[0][
      "prior_year_cost"] is not None else np.zeros_like(y)
  pred = orc.column("expected_cost").to_numpy()
  train = full & (split == 0)
  held = full & (split == 2)
  if held.sum() > 1 and train.sum() > 0:
    out["held_out_cost_prediction"] = {
        "members": int(held.sum()),
        "oracle": _regression_figures(y[held], pred[held]),
        "oracle_median": _regression_figures(y[held], orc.column("median_cost").to_numpy()[held]),
        "oracle_expected_cost_se_mean": float(np.mean(
            orc.column("expected_cost_se").to_numpy()[held])),
        "train_mean": _regression_figures(y[held], np.full(held.sum(), y[train].mean())),
        "prior_year_cost": _regression_figures(y[held], prior[held]),
    }
  out["held_out_condition_probabilities"] = _probability_figures(orc, split, np.concatenate(
      [r["oracle_p_count"] for r in results]))
  return out


def _probability_figures(orc: pa.Table, split: np.ndarray, p_count: np.ndarray) -> dict[str, Any]:
  """Held-out oracle rows: the Rao-Blackwellized probabilities against the plain count of
  roll-outs with a case (the estimator before): zero share and mean standard error, over all
  member-condition pairs and over those whose condition is not present at the index date."""
  held = split == conv.SPLITS.index(conv.HELD_OUT)
  names = cond_lib.CONDITION_NAMES
  p = np.stack([orc.column(f"p_{c}").to_numpy() for c in names], 1)[held]
  se = np.stack([orc.column(f"p_{c}_se").to_numpy() for c in names], 1)[held]
  present = np.stack([orc.column(f"true_{c}").to_numpy(zero_copy_only=False) for c in names],
                     1)[held]
  r = orc.column("oracle_rollouts").to_numpy()[held][:, None]
  pc_ = p_count[held]
  se_count = np.sqrt(pc_ * (1 - pc_) / r)
  out: dict[str, Any] = {"members": int(held.sum())}
  for name, mask in (("all_pairs", np.ones_like(present)), ("not_present_pairs", ~present)):
    if mask.any():
      out[name] = {"pairs": int(mask.sum()),
                   "zero_share_count": float(np.mean(pc_[mask] == 0)),
                   "zero_share_rao_blackwell": float(np.mean(p[mask] == 0)),
                   "mean_se_count": float(se_count[mask].mean()),
                   "mean_se_rao_blackwell": float(se[mask].mean())}
  return out


def _distinct_by_system(used: set[str]) -> dict[str, int]:
  out: dict[str, int] = {}
  for code in used:
    system = code.partition(conv.SEP)[0]
    out[system] = out.get(system, 0) + 1
  return dict(sorted(out.items()))


def _clear_outputs(output_dir: str) -> None:
  for sub in ("data", "metadata", "ground_truth"):
    path = os.path.join(output_dir, sub)
    if os.path.isdir(path):
      shutil.rmtree(path)


def synthesize(output_dir: str, num_patients: int, seed: int, *, first_year: int = 2016,
               last_year: int = 2022, patients_per_shard: int = 10_000,
               num_workers: int | None = None, oracle_rollouts: int = 256,
               oracle_rollouts_other: int = 16,
               split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
               progress: bool = True) -> dict[str, Any]:
  """Writes a synthetic MEDS claims dataset with oracle ground truth to output_dir.

  Output: data/{train,tuning,held_out}/{shard}.parquet, metadata/{dataset.json,codes.parquet,
  subject_splits.parquet}, ground_truth/{oracle.parquet,summary.json,README.md}. The same seed (and
  patients_per_shard) gives identical files whatever num_workers is. Returns the summary.
  oracle_rollouts: simulated target years per held-out member (the oracle the tables evaluate);
  oracle_rollouts_other: per train/tuning member. split_fractions: train/tuning/held_out shares
  of the people (a larger held-out share gives the tables more members per simulated person).
  """
  if num_patients <= 0:
    raise ValueError(f"num_patients must be positive, got {num_patients}")
  if last_year < first_year:
    raise ValueError(f"last_year ({last_year}) is before first_year ({first_year})")
  if patients_per_shard <= 0 or oracle_rollouts <= 0 or oracle_rollouts_other <= 0:
    raise ValueError("patients_per_shard, oracle_rollouts and oracle_rollouts_other must be "
                     f"positive, got {patients_per_shard}, {oracle_rollouts}, "
                     f"{oracle_rollouts_other}")
  fractions = tuple(float(f) for f in split_fractions)
  if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
    raise ValueError(f"split_fractions must be three non-negative shares summing to 1, got "
                     f"{split_fractions}")
  start_time = time.time()
  _clear_outputs(output_dir)
  for sub in [os.path.join("data", s) for s in conv.SPLITS] + ["metadata", "ground_truth"]:
    os.makedirs(os.path.join(output_dir, sub), exist_ok=True)
  num_chunks = -(-num_patients // patients_per_shard)
  tasks = [dict(chunk=k, num_patients=min(patients_per_shard, num_patients - k * patients_per_shard),
                seed=seed, first_year=first_year, last_year=last_year,
                patients_per_shard=patients_per_shard, rollouts=oracle_rollouts,
                rollouts_other=oracle_rollouts_other, split_fractions=fractions,
                output_dir=output_dir) for k in range(num_chunks)]
  if num_workers is None:
    num_workers = os.cpu_count() or 1
  num_workers = max(1, min(num_workers, num_chunks))

  bar = tqdm.tqdm(total=num_patients, unit="patient", desc="synthesize", disable=not progress)
  oracle_writer = pq.ParquetWriter(os.path.join(output_dir, "ground_truth", "oracle.parquet"),
                                   ORACLE_SCHEMA, compression="zstd")
  split_ids, split_names, used_codes, kept = [], [], set(), []
  totals = {"rows": 0, "dropped_claims": 0, "rows_by_split": dict.fromkeys(conv.SPLITS, 0)}

  def consume(res: dict[str, Any]) -> None:
    oracle_writer.write_table(res["oracle"])
    split_ids.append(res["subject_id"])
    split_names.append(res["split"])
    used_codes.update(res["used_codes"])
    totals["rows"] += res["rows"]
    totals["dropped_claims"] += res["dropped_claims"]
    for s, v in res["rows_by_split"].items():
      totals["rows_by_split"][s] += v
    # Keep what the summary needs; drop the oracle table beyond a bounded number of patients.
    if sum(r["num_patients"] for r in kept) < 200_000:
      kept.append(res)
    bar.update(res["num_patients"])

  try:
    # Workers are spawned, not forked: the parent may run JAX threads. A worker's error or death
    # stops the others and is raised here.
    for res in workers.ordered_map(simulate_chunk, tasks, num_workers=num_workers,
                                   start_method="spawn", describe=_describe_chunk):
      consume(res)
  finally:
    oracle_writer.close()
    bar.close()

  ids = np.concatenate(split_ids)
  names = np.array(conv.SPLITS)[np.concatenate(split_names)]
  pq.write_table(pa.table({"subject_id": pa.array(ids, pa.int64()),
                           "split": pa.array(names.tolist(), pa.string())}),
                 os.path.join(output_dir, "metadata", "subject_splits.parquet"))
  pq.write_table(_code_metadata(used_codes), os.path.join(output_dir, "metadata", "codes.parquet"))
  with open(os.path.join(output_dir, "metadata", "dataset.json"), "w") as f:
    json.dump({"dataset_name": DATASET_NAME, "dataset_version": f"seed{seed}-n{num_patients}",
               "etl_name": ETL_NAME, "etl_version": ETL_VERSION, "meds_version": MEDS_VERSION,
               "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
               "license": "CC0-1.0 (synthetic data)",
               "raw_source_id_columns": ["claim_id"]}, f, indent=2)
  summary = {
      "patients": num_patients, "subjects_written": int(len(ids)), "shards": num_chunks,
      "patients_per_shard": patients_per_shard,
      "rows": totals["rows"],
      "rows_by_split": totals["rows_by_split"],
      "subjects_by_split": {s: int(np.sum(names == s)) for s in conv.SPLITS},
      "missing_claims_dropped": totals["dropped_claims"], "seed": seed, "first_year": first_year,
      "last_year": last_year, "oracle_rollouts": oracle_rollouts,
      "oracle_rollouts_other": oracle_rollouts_other, "split_fractions": list(fractions),
      "distinct_codes_by_system": _distinct_by_system(used_codes),
      "index_date": f"{last_year}-01-01",
      "calibration_year": last_year - 1 if last_year > first_year else last_year,
      **_summary_figures(kept),
  }
  summary["seconds"] = time.time() - start_time
  with open(os.path.join(output_dir, "ground_truth", "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  with open(os.path.join(output_dir, "ground_truth", "README.md"), "w") as f:
    f.write(GROUND_TRUTH_README)
  return summary


GROUND_TRUTH_README = """# Ground truth of the synthetic claims world

`oracle.parquet`: one row per person alive at the index date (January 1 of the last year, the
dataset builder's default index date) who appears in the data, whether or not enrolled then.

| column | meaning |
|---|---|
| subject_id | MEDS subject id |
| index_date | the index date (timestamp[us]) |
| expected_cost | E[total COST//ALLOWED over the 12 months from the index date], given the true latent state, estimated by rolling the simulator forward `oracle_rollouts` times (coverage held fixed, deaths simulated) |
| expected_cost_capped | E[min(that cost, 250000)] |
| p_<condition> | probability that the condition's CCW-style case rule (lmm_jax.conditions.CaseRule: one inpatient, or by condition SNF / home-health, claim or two other claims on different days) is met by the claims of those 12 months: the dataset builder's `cond_next` label. Rao-Blackwellized: the mean over roll-outs of the exact probability of a case given each roll-out's draws other than the coding ones (which codes a claim carries, rule-outs, missing claims); unbiased (docs/synthetic_world.md, "The oracle") |
| true_<condition> | the latent condition is present at the index date (coded or not) |
| age | age in years at the index date |
| enrolled_at_index | covered in the index month |
| expected_cost_se, expected_cost_capped_se | Monte-Carlo standard error of the two means (sd / sqrt(roll-outs)) |
| median_cost | the conditional median of that cost (the best predictor for absolute error, NMAE) |
| median_cost_se | its standard error, from the distribution-free 95% interval of the median / 3.92 |
| p_<condition>_se | Monte-Carlo standard error of p_<condition>: the roll-outs' standard deviation of that probability / sqrt(roll-outs) |
| oracle_rollouts | roll-outs of the row: `oracle_rollouts` (default 256) for held-out members, `oracle_rollouts_other` (default 16) for train and tuning members |

`summary.json`: the run's figures: size, cost concentration and coded prevalence by age band
(members covered all of the calibration year), and the held-out comparison of the oracle with
simple predictors (training mean, prior-year cost) on members covered all of the target year, and
`held_out_condition_probabilities`: over the held-out rows, the share of member-condition pairs with
p = 0 and the mean standard error, Rao-Blackwellized against the plain count of roll-outs with a
case (the estimator before), over all pairs and over pairs whose condition is not present.
"""
