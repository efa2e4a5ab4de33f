"""Synthetic patients: whole timelines sampled from the model, written as a MEDS dataset.

Each synthetic patient starts from a demographic prefix ([BOS], sex, line of business, age) drawn
at random from the train timelines (only the prefix is copied: no event of a real patient), and
the model writes the rest until [EOS], death, `horizon_days` of generated time, or the token budget.

Decoding tokens back to MEDS rows follows `lmm_jax.conventions`:
  GENDER//F|M           a static row (null time); GENDER//UNKNOWN writes nothing
  AGE//n (prefix)       MEDS_BIRTH at start - age_years * 365.25 days (the prefix's real age)
  LOB//X                ENROLLMENT//START//X at the first day (and on a change; END of the old one
                        the day before), ENROLLMENT//END//X at the last day
  TIME//...             advances the day by the bucket's mean days (the sampler's clock)
  CLAIM//TYPE           opens a claim (new claim_id) and writes its row; a new day closes it
  POS, dx, procedure, drug, other
                        a row of the current claim; the code is the vocabulary token's most
                        frequent source code (a real MEDS code), else the token string
  COST//BINxx           COST//ALLOWED with numeric_value = the bin's mean dollars
  DEATH                 MEDS_DEATH, and the timeline ends
Tokens that name no code ([UNK] of a system, ICD-10-CM blocks/chapters without a source code, AGE
tokens after the prefix) are skipped and counted by reason in the summary.
"""

from __future__ import annotations

import collections
import datetime
import json
import os
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lmm_jax import conventions as conv
from lmm_jax.conventions import TokenKind
from lmm_jax.data import meds_io
from lmm_jax.data import records
from lmm_jax.sampling import decode

DATASET_NAME = "lmm_jax_model_synthetic"
DATA_SCHEMA = meds_io.CLAIMS_SCHEMA


def sample_prefixes(data_dir: str, num: int, seed: int) -> list[decode.History]:
  """Demographic prefixes of `num` train timelines drawn with replacement (seeded)."""
  prefixes = []
  for rec in records.read_records(data_dir, records.TIMELINE, conv.TRAIN):
    p = int(rec["prefix_len"])
    prefixes.append((np.asarray(rec["tokens"][:p], np.int32),
                     np.asarray(rec["age"][:p], np.float32)))
  if not prefixes:
    raise ValueError(f"no train timelines in {data_dir}")
  rng = np.random.default_rng(seed)
  pick = rng.integers(0, len(prefixes), size=num)
  return [decode.History(tokens=prefixes[i][0], age=prefixes[i][1],
                         days=np.zeros(len(prefixes[i][0]), np.float32)) for i in pick]


class _Decoder:
  """Token ids -> MEDS rows for one vocabulary."""

  def __init__(self, vocab: Any):
    self.vocab = vocab
    self.code_of: dict[int, str] = {}
    for i, e in enumerate(vocab.entries):
      tok = e["token"]
      sources = e.get("sources") or []
      if sources:
        self.code_of[i] = sources[0]
      elif "//" in tok and "[" not in tok and not tok.startswith(("AGE//", "TIME//", "COST//",
                                                                  "LOB//", "GENDER//")):
        system, _, code = tok.partition("//")
        if not (system == "ICD10CM" and ("-" in code or code.isdigit())):
          self.code_of[i] = tok

  def rows(self, subject_id: int, prefix: Sequence[int], prefix_age: float, gen: Sequence[int],
           clock: Sequence[float], start_day: int, skipped: collections.Counter
           ) -> tuple[list[tuple], int]:
    """(rows (subject_id, day or None, code, value or None, claim_id or None), last day)."""
    v = self.vocab
    out: list[tuple] = []
    lob = None
    for t in prefix:
      tok = v.tokens[int(t)]
      if tok in ("GENDER//F", "GENDER//M"):
        out.append((subject_id, None, conv.FEMALE_CODE if tok.endswith("F") else conv.MALE_CODE,
                    None, None))
      elif tok.startswith("LOB//"):
        lob = tok.partition("//")[2]
    if prefix_age >= 0:
      out.append((subject_id, start_day - int(round(prefix_age * decode.DAYS_PER_YEAR)),
                  conv.BIRTH_CODE, None, None))
    if lob:
      out.append((subject_id, start_day, conv.enrollment_code("START", lob), None, None))
    claim = None
    claim_day = None
    day = start_day
    claim_counter = 0
    for t, c in zip(gen, clock):
      t = int(t)
      day = start_day + int(round(float(c)))
      kind = int(v.kinds[t])
      tok = v.tokens[t]
      if t == v.eos_id:
        break
      if kind == TokenKind.TIME or t == v.pad_id:
        continue
      if claim is not None and day != claim_day:
        claim = None
      if kind == TokenKind.DEATH:
        out.append((subject_id, day, conv.DEATH_CODE, None, None))
        break
      if tok.startswith("AGE//"):
        skipped["age_token_after_prefix"] += 1
        continue
      if tok.startswith("LOB//"):
        new = tok.partition("//")[2]
        if new != lob:
          if lob:
            out.append((subject_id, day - 1, conv.enrollment_code("END", lob), None, None))
          out.append((subject_id, day, conv.enrollment_code("START", new), None, None))
          lob = new
        continue
      if kind == TokenKind.SPECIAL or kind == TokenKind.DEMOGRAPHIC:
        skipped["special_or_demographic_token"] += 1
        continue
      is_claim_type = kind == TokenKind.CLAIM and v.systems[t] == conv.CLAIM
      if is_claim_type or claim is None:
        claim_counter += 1
        claim = subject_id * 100_000 + claim_counter
        claim_day = day
        if not is_claim_type:
          skipped["implicit_claim_opened"] += 1
      if kind == TokenKind.COST:
        out.append((subject_id, day, conv.COST_ALLOWED_CODE, float(v.cost_value[t]), claim))
        continue
      code = self.code_of.get(t)
      if code is None:
        skipped["token_without_code"] += 1
        continue
      out.append((subject_id, day, code, None, claim))
    if lob:
      out.append((subject_id, day, conv.enrollment_code("END", lob), None, None))
    return out, day


def write_meds(out_dir: str, rows: list[tuple], subject_ids: Sequence[int], split: str,
               vocab: Any, extra_meta: dict[str, Any]) -> dict[str, str]:
  """data/<split>/0.parquet (static rows first, then by time) and metadata/*."""
  rows = sorted(rows, key=lambda r: (r[0], -10**9 if r[1] is None else r[1]))
  times = [None if r[1] is None else int(r[1]) * meds_io.US_PER_DAY for r in rows]
  table = pa.Table.from_arrays([
      pa.array([r[0] for r in rows], pa.int64()),
      pa.array(times, pa.int64()).cast(pa.timestamp("us")),
      pa.array([r[2] for r in rows], pa.string()),
      pa.array([r[3] for r in rows], pa.float32()),
      pa.array([r[4] for r in rows], pa.int64())], schema=DATA_SCHEMA)
  data_path = os.path.join(out_dir, "data", split, "0.parquet")
  os.makedirs(os.path.dirname(data_path), exist_ok=True)
  pq.write_table(table, data_path)
  meta_dir = os.path.join(out_dir, "metadata")
  os.makedirs(meta_dir, exist_ok=True)
  pq.write_table(pa.table({"subject_id": pa.array(list(subject_ids), pa.int64()),
                           "split": pa.array([split] * len(subject_ids), pa.string())}),
                 os.path.join(meta_dir, "subject_splits.parquet"))
  desc = {}
  for e in vocab.entries:
    for s in (e.get("sources") or [])[:1]:
      desc.setdefault(s, e.get("description", ""))
  codes = sorted(set(table.column("code").to_pylist()))
  pq.write_table(pa.table({"code": pa.array(codes, pa.string()),
                           "description": pa.array([desc.get(c, "") for c in codes], pa.string()),
                           "parent_codes": pa.array([[] for _ in codes],
                                                    pa.list_(pa.string()))}),
                 os.path.join(meta_dir, "codes.parquet"))
  with open(os.path.join(meta_dir, "dataset.json"), "w") as f:
    json.dump(dict({"dataset_name": DATASET_NAME, "dataset_version": "1",
                    "etl_name": "lmm_jax.sampling.synthetic", "etl_version": "1.0.0",
                    "meds_version": "0.4.1",
                    "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                    "raw_source_id_columns": ["claim_id"]}, **extra_meta), f, indent=2)
  return {"data": data_path, "metadata": meta_dir}


def generate_cohort(sampler: decode.Sampler, vocab: Any, data_dir: str, out_dir: str, *,
                    num_patients: int, seed: int, start_date: str, split: str,
                    first_subject_id: int, batch_patients: int = 64) -> dict[str, Any]:
  """Samples num_patients timelines, writes them as MEDS under out_dir; returns a summary with
  each patient's event tokens (for the memorization audit; never logged)."""
  if sampler.sc.num_samples != 1:
    raise ValueError("synthetic patients need a sampler with num_samples=1")
  prefixes = sample_prefixes(data_dir, num_patients, seed)
  rng = np.random.default_rng(seed + 1)
  start0 = meds_io.date_to_day(start_date)
  dec = _Decoder(vocab)
  skipped: collections.Counter = collections.Counter()
  rows: list[tuple] = []
  sequences: list[np.ndarray] = []
  ids = [first_subject_id + i for i in range(num_patients)]
  reasons = collections.Counter()
  lengths = []
  for lo in range(0, num_patients, batch_patients):
    hi = min(lo + batch_patients, num_patients)
    fut = sampler.generate(prefixes[lo:hi], patient_index=range(lo, hi), seed=seed)
    for j in range(hi - lo):
      n = int(fut.num_tokens[j])
      gen = fut.tokens[j, :n]
      h = prefixes[lo + j]
      start = start0 + int(rng.integers(0, 365))
      r, _ = dec.rows(ids[lo + j], h.tokens, float(h.age[-1]), gen, fut.clock[j, :n], start,
                      skipped)
      rows.extend(r)
      sequences.append(np.concatenate([h.tokens, gen]).astype(np.int32))
      reasons[decode.STOP_REASONS[int(fut.stop_reason[j])]] += 1
      lengths.append(n)
  paths = write_meds(out_dir, rows, ids, split, vocab,
                     {"generated_from": os.path.abspath(data_dir), "num_patients": num_patients})
  summary = {"patients": num_patients, "rows": len(rows), "files": paths,
             "generated_tokens_mean": float(np.mean(lengths)),
             "stop_reasons": dict(reasons), "skipped_tokens": dict(skipped)}
  return {"summary": summary, "sequences": sequences,
          "prefix_lens": [len(p.tokens) for p in prefixes]}
