"""True intervention effects: the target year re-simulated from the true latent state, edited.

The MEDS writer is deterministic per chunk (`writer.run_chunk`: the chunk's seeded streams), so a
written world's members can be replayed to the index date to recover their latent state, and
`verify_history` checks that the replay reproduces the written rows before the index exactly.
From that state the target year is rolled out `rollouts` times (the oracle's machinery,
`writer.simulate_target_year`) without and with an intervention applied to the state at the index,
one member at a time from a stream of its own (seed, chunk, member) that both arms share (common
random numbers: a null intervention gives exactly zero effect; after the first draw an
intervention changes, e.g. a fill that now happens, the arms' streams diverge, so the paired
difference is unbiased but not noise-free).

The interventions (`INTERVENTIONS`) are the simulator's counterparts of the history edits of
`lmm_jax.insights.interventions`:

  adherence   medication adherence set high from the index date: the member's adherence
              propensity (PDC) raised to at least HIGH_ADHERENCE and the decayed refill-gap counts
              cleared (the edited history has its gaps filled). The world has one propensity per
              person, so all of the member's maintenance drugs are affected.
  start_drug  a maintenance drug of condition c taken from the months before the index on: the
              condition's refill-gap count cleared and adherence raised as above. A member coded
              with c whose latent c is absent (a rule-out or miscoding) is not on therapy in the
              world: the true effect is zero.
  remove_admission  the most recent stay did not happen. The world's latent health (the event that
              caused the stay) cannot be undone; what the stay itself changed can: the pending
              readmission it scheduled is cancelled and the month of the last stay reset (recent
              stays raise office visits). The true effect is therefore small: an admission is
              mostly a marker of the latent state, not a cause of next year's cost.
  none        no change (the common-random-numbers check).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import threadpoolctl

from lmm_jax import conditions as cond_lib
from lmm_jax import conventions as conv
from lmm_jax.data import meds_io
from lmm_jax.synth import model as world
from lmm_jax.synth import writer

HIGH_ADHERENCE = 0.95
_US_PER_DAY = 86_400 * 1_000_000


# ------------------------------------------------------------------------------------------------
# Replaying a written world's chunk.


def _summary(meds_dir: str) -> dict[str, Any]:
  path = os.path.join(meds_dir, "ground_truth", "summary.json")
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except OSError as e:
    raise ValueError(f"{path}: cannot read the synthetic world's summary ({e}); the true effects "
                     "need a world written by lmm_jax.synth") from e


def patients_per_shard(summary: Mapping[str, Any]) -> int:
  """The world's chunk size (older summaries lack it: the writer's chunks are equal but the last,
  so ceil(patients / shards); `verify_history` catches a wrong guess)."""
  if "patients_per_shard" in summary:
    return int(summary["patients_per_shard"])
  return -(-int(summary["patients"]) // int(summary["shards"]))


def chunk_task(meds_dir: str, chunk: int) -> dict[str, Any]:
  """The writer's task of one chunk of the world in meds_dir (from its ground-truth summary)."""
  s = _summary(meds_dir)
  pps = patients_per_shard(s)
  if not 0 <= chunk < int(s["shards"]):
    raise ValueError(f"{meds_dir}: chunk {chunk} is not one of its {s['shards']} shards")
  return dict(chunk=chunk, num_patients=min(pps, int(s["patients"]) - chunk * pps),
              seed=int(s["seed"]), first_year=int(s["first_year"]),
              last_year=int(s["last_year"]), patients_per_shard=pps,
              rollouts=int(s["oracle_rollouts"]), rollouts_other=int(s["oracle_rollouts_other"]),
              split_fractions=tuple(s["split_fractions"]), output_dir=meds_dir)


def chunk_of(meds_dir: str, subject_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(chunk, index within the chunk) of each subject id (ids are chunk * pps + index + 1)."""
  pps = patients_per_shard(_summary(meds_dir))
  z = np.asarray(subject_ids, np.int64) - 1
  return z // pps, z % pps


@dataclasses.dataclass
class Replay:
  run: writer.ChunkRun
  chunk: int
  index_day: int     # days since 1970-01-01 of the index date (the first day of the last year)


def replay(meds_dir: str, chunk: int) -> Replay:
  """Re-simulates a chunk through the index month (histories and the state at the index)."""
  task = chunk_task(meds_dir, chunk)
  num_years = task["last_year"] - task["first_year"] + 1
  t0 = 12 * (num_years - 1)
  with threadpoolctl.threadpool_limits(1):   # small matrix products: see writer.simulate_chunk
    run = writer.run_chunk(task, through_month=t0 + 1)
  return Replay(run, chunk, int(run.cal.start[t0]))


def _history_rows(table: pa.Table, subject_ids: np.ndarray, index_day: int) -> pa.Table:
  """Rows of these subjects before the index date (static rows included), in file order."""
  keep = pc.is_in(table.column("subject_id"), pa.array(np.asarray(subject_ids, np.int64)))
  t = table.filter(keep)
  time_us = t.column("time").cast(pa.int64()).to_numpy(zero_copy_only=False)
  valid = t.column("time").is_valid().to_numpy(zero_copy_only=False)
  before = ~valid | (np.where(valid, time_us, 0) < index_day * _US_PER_DAY)
  t = t.filter(pa.array(before))
  # A stable order independent of how rows are spread over split files.
  order = np.lexsort((np.arange(t.num_rows), t.column("subject_id").to_numpy()))
  return t.take(pa.array(order))


def verify_history(meds_dir: str, rep: Replay, subject_ids: np.ndarray) -> int:
  """Checks that the replay reproduces the written rows of these subjects before the index date;
  returns the number of rows compared (raises naming the file and column that differ)."""
  chunk = rep.chunk
  files = [os.path.join(meds_dir, "data", s, f"{chunk}.parquet") for s in conv.SPLITS]
  files = [f for f in files if os.path.exists(f)]
  written = pa.concat_tables([pq.read_table(f) for f in files]) if files else None
  if written is None:
    raise ValueError(f"{meds_dir}/data/*/{chunk}.parquet: no shard of chunk {chunk}")
  a = _history_rows(written, subject_ids, rep.index_day)
  b = _history_rows(writer.rows_table(rep.run), subject_ids, rep.index_day)
  if a.num_rows != b.num_rows:
    raise ValueError(f"{meds_dir}/data/*/{chunk}.parquet: {a.num_rows} rows before the index "
                     f"written, {b.num_rows} re-simulated (is this world's seed or chunk size "
                     "different from its ground_truth/summary.json?)")
  for name in meds_io.CLAIMS_SCHEMA.names:
    if not a.column(name).cast(b.column(name).type).equals(b.column(name)):
      raise ValueError(f"{meds_dir}/data/*/{chunk}.parquet: column {name!r} differs from the "
                       "re-simulation before the index")
  return a.num_rows


# ------------------------------------------------------------------------------------------------
# Interventions on the state at the index.


def _adherence(st: world.State, idx: np.ndarray, condition: int | None) -> None:
  st.adherence[idx] = np.maximum(st.adherence[idx], HIGH_ADHERENCE)
  st.rx_gap[idx] = 0.0


def _start_drug(st: world.State, idx: np.ndarray, condition: int | None) -> None:
  name = cond_lib.CONDITION_NAMES[condition]
  if name not in world.GAP_CONDITIONS:
    raise ValueError(f"condition {name!r} has no maintenance drug in the world "
                     f"(one of {world.GAP_CONDITIONS})")
  st.adherence[idx] = np.maximum(st.adherence[idx], HIGH_ADHERENCE)
  st.rx_gap[idx, world.GAP_CONDITIONS.index(name)] = 0.0


def _remove_admission(st: world.State, idx: np.ndarray, condition: int | None) -> None:
  st.readmit_day[idx] = 0
  st.readmit_code[idx] = -1
  st.last_admit[idx] = world.NEVER


def _none(st: world.State, idx: np.ndarray, condition: int | None) -> None:
  del st, idx, condition


# name -> fn(state, row indices, condition or None) editing the state in place.
INTERVENTIONS: dict[str, Callable[[world.State, np.ndarray, int | None], None]] = {
    "adherence": _adherence, "start_drug": _start_drug, "remove_admission": _remove_admission,
    "none": _none,
}


@dataclasses.dataclass
class TrueEffect:
  cost_base_RxN: np.ndarray     # float64: roll-outs' target-year cost, unintervened
  cost_int_RxN: np.ndarray      # ... with the intervention
  cond_base_NxC: np.ndarray     # float64: P(condition case rule met in the target year)
  cond_int_NxC: np.ndarray

  @property
  def cost_effect_N(self) -> np.ndarray:
    return (self.cost_int_RxN - self.cost_base_RxN).mean(0)

  @property
  def cond_effect_NxC(self) -> np.ndarray:
    return self.cond_int_NxC - self.cond_base_NxC


def true_effect(rep: Replay, member_idx: np.ndarray, intervention: str,
                conditions: Sequence[int | None] | None = None, *, rollouts: int,
                seed: int) -> TrueEffect:
  """Target-year roll-outs of these members (indices within the chunk) without and with the
  intervention (condition per member for start_drug), each arm from the same seeded stream."""
  if intervention not in INTERVENTIONS:
    raise ValueError(f"unknown intervention {intervention!r}; one of {sorted(INTERVENTIONS)}")
  member_idx = np.asarray(member_idx, np.int64)
  snap = rep.run.snap
  dead = ~snap.alive[member_idx]
  if dead.any():
    raise ValueError(f"{int(dead.sum())} members are not alive at the index date")
  conds = list(conditions) if conditions is not None else [None] * len(member_idx)
  fn = INTERVENTIONS[intervention]
  n, num_c = len(member_idx), cond_lib.NUM_CONDITIONS
  cost = np.zeros((2, rollouts, n))
  hits = np.zeros((2, n, num_c))
  # One member at a time, from a stream of its own (seed, chunk, member): a member's truth does not
  # depend on who else is in the sample, and an arm's diverging draws stay within that member.
  for j, (i, c) in enumerate(zip(member_idx, conds)):
    for arm in (0, 1):
      st = snap.take(np.array([i]))
      if arm:
        fn(st, np.array([0]), c)
      rng = np.random.default_rng(np.random.SeedSequence([seed, rep.chunk, int(i)]))
      with threadpoolctl.threadpool_limits(1):
        cost_R1, _, p_sum_1C, _ = writer.simulate_target_year(st, rep.run.t0, rep.run.cal,
                                                              rollouts, rng)
      cost[arm, :, j] = cost_R1[:, 0]
      hits[arm, j] = p_sum_1C[0] / rollouts  # the oracle's Rao-Blackwellized case probability
  return TrueEffect(cost[0], cost[1], hits[0], hits[1])
