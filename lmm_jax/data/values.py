"""Numeric values as tokens: per-code quantile bins fit on train (the scheme of ETHOS, CEHR-GPT
and MEDS-EIC-AR).

A generic row (LAB / OTHER systems: labs, vitals, infusion rates...) with a finite
`numeric_value` is tokenized as its code with the value's bin appended, `CODE//_Q_k` (k = 1..B,
B = `num_value_bins`), instead of the bare code, so "a glucose test was done" becomes "glucose in
its 7th decile". The edges are the train quantiles of each code's values (a bounded sample of
`value_sample_size` rows per code, the bottom-k of a data-derived hash, so it does not depend on
the number of workers), merged for raw codes mapped to one parent (codes.parquet), and fit only for
codes with at least `min_code_count` valued train rows and two distinct values; other rows keep the
bare code. A bin whose (estimated) train count is below min_code_count is not used: its rows keep
the bare code, so value bins never turn a known code into [UNK]. `num_value_bins=0` turns
this off. Rows without a value keep the bare code.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

import numpy as np

from lmm_jax.data import events as events_lib
from lmm_jax.data import meds_io
from lmm_jax.data.code_systems import Role

Sample = tuple[np.ndarray, np.ndarray]   # (float64 values, uint64 keys)


def bin_code(code: str, k: int) -> str:
  """The code string of bin k (0-based) of a code's values."""
  return f"{code}//_Q_{k + 1}"


def _valued(c: events_lib.CleanRows) -> np.ndarray:
  return (c.role == Role.OTHER) & np.isfinite(c.value)


def sample_values(c: events_lib.CleanRows, mask: np.ndarray, k: int,
                  into: dict[str, Sample]) -> None:
  """Adds the valued rows of `mask` to the per-code bottom-k samples `into` (raw code strings)."""
  sel = mask & _valued(c)
  if k <= 0 or not sel.any():
    return
  idx = c.code_index[sel]
  vals = c.value[sel].astype(np.float64)
  keys = meds_io.mix64(c.subject[sel], c.time_us[sel], idx.astype(np.int64))
  order = np.argsort(idx, kind="stable")
  idx, vals, keys = idx[order], vals[order], keys[order]
  starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
  for a, b in zip(starts, np.r_[starts[1:], idx.size]):
    code = c.codes.codes[idx[a]]
    merge(into, code, (vals[a:b], keys[a:b]), k)


def merge(into: dict[str, Sample], code: str, sample: Sample, k: int) -> None:
  v, key = sample
  if code in into:
    v, key = np.concatenate([into[code][0], v]), np.concatenate([into[code][1], key])
  if key.size > k:
    sel = np.argpartition(key, k)[:k]
    v, key = v[sel], key[sel]
  into[code] = (v, key)


@dataclasses.dataclass
class ValueBins:
  edges: dict[str, np.ndarray]         # (mapped) code -> increasing float64[B' - 1] edges
  bin_counts: dict[str, int]           # bin code -> estimated train rows (those kept)

  def bin_of(self, code: str, value: np.ndarray) -> np.ndarray:
    return np.searchsorted(self.edges[code], value, side="right")


def fit(samples: Mapping[str, Sample], valued_counts: Mapping[str, int],
        mapping: Mapping[str, str], num_bins: int, min_count: int) -> ValueBins:
  """Per-code quantile edges from the train samples (raw codes merged through `mapping`).

  valued_counts: train rows with a value per raw code (the samples are bounded; bin counts are
  scaled up to it). Deterministic: codes in sorted order, quantiles of the sorted sample.
  """
  if num_bins <= 1:
    return ValueBins({}, {})
  merged: dict[str, list] = {}
  totals: dict[str, int] = {}
  for code in sorted(samples):
    key = mapping.get(code, code)
    merged.setdefault(key, []).append(samples[code][0])
    totals[key] = totals.get(key, 0) + int(valued_counts.get(code, samples[code][0].size))
  edges, counts = {}, {}
  for code in sorted(merged):
    v = np.sort(np.concatenate(merged[code]))
    if totals[code] < min_count or np.unique(v).size < 2:
      continue
    e = np.unique(np.quantile(v, np.arange(1, num_bins) / num_bins))
    edges[code] = e
    per_bin = np.bincount(np.searchsorted(e, v, side="right"), minlength=e.size + 1)
    scale = totals[code] / v.size
    for k, n in enumerate(per_bin.tolist()):
      if round(n * scale) >= min_count:  # a rarer bin keeps the bare code (not [UNK])
        counts[bin_code(code, k)] = int(round(n * scale))
  return ValueBins(edges, counts)


def with_value_bins(c: events_lib.CleanRows, bins: Optional[ValueBins], analyzer
                    ) -> events_lib.CleanRows:
  """The chunk with each valued generic row's code replaced by its bin code."""
  if bins is None or not bins.edges:
    return c
  sel = np.flatnonzero(_valued(c))
  if not sel.size:
    return c
  codes, infos = list(c.codes.codes), list(c.codes.infos)
  index_of: dict[str, int] = {}
  code_index = c.code_index.copy()
  sel_idx = code_index[sel]
  for ci in np.unique(sel_idx).tolist():
    code = c.codes.codes[ci]
    if code not in bins.edges:
      continue
    rows = sel[sel_idx == ci]
    k_R = bins.bin_of(code, c.value[rows].astype(np.float64))
    new_K = np.empty(bins.edges[code].size + 1, np.int32)
    for k in np.unique(k_R).tolist():
      name = bin_code(code, k)
      if name not in bins.bin_counts:
        new_K[k] = ci
        continue
      if name not in index_of:
        index_of[name] = len(codes)
        codes.append(name)
        infos.append(analyzer.analyze(name))
      new_K[k] = index_of[name]
    code_index[rows] = new_K[k_R]
  if not index_of:
    return c
  return dataclasses.replace(c, code_index=code_index, codes=events_lib.CodeTable(codes, infos))


def describe_bins(vocab, bins: ValueBins, tok) -> None:
  """Gives each bin token its value range (`value bin 3/10 [4.1, 4.6)`) as its description."""
  for code in sorted(bins.edges):
    e = bins.edges[code]
    for k in range(e.size + 1):
      name = bin_code(code, k)
      if name not in bins.bin_counts:
        continue
      ids = tok.code_token_ids(name)
      entry = vocab.entries[ids[-1]] if ids else None
      if entry is None or entry["token"] != tok.analyzer.analyze(name).key:
        continue
      lo = f"{e[k - 1]:.4g}" if k > 0 else "-inf"
      hi = f"{e[k]:.4g}" if k < e.size else "inf"
      entry["description"] = f"value bin {k + 1}/{e.size + 1} [{lo}, {hi})"
