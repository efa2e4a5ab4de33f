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

Text values: a generic row with a `text_value` and no finite `numeric_value` is tokenized as
`CODE//_T_<text>` when that text is one of the code's categories: its texts with at least
`min_code_count` train rows (merged through the parent mapping), the `max_text_values_per_code`
most frequent. Other texts keep the bare code (counted in report.json's `text_values`).
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


def _add_code(name: str, codes: list, infos: list, index_of: dict[str, int], analyzer) -> int:
  """The index of code `name` in a chunk's growing code table (codes, infos), added if new."""
  if name not in index_of:
    index_of[name] = len(codes)
    codes.append(name)
    infos.append(analyzer.analyze(name))
  return index_of[name]


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
      new_K[k] = _add_code(name, codes, infos, index_of, analyzer)
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


# ---------------------------------------------------------------------------------------------
# Text values: low-cardinality `text_value`s as category tokens.

TextKey = tuple[str, str]   # (raw code, stripped text_value)
# Distinct texts per code a shard reports to the fit (its most frequent ones): bounds what a
# free-text code (notes, comments) costs; a category needs min_code_count train rows anyway.
TEXTS_KEPT_PER_CODE = 256


def text_code(code: str, text: str) -> str:
  """The code string of a code's text category."""
  return f"{code}//_T_{text}"


def _texted(c: events_lib.CleanRows) -> np.ndarray:
  """Generic rows with a text_value and no finite numeric_value (a value makes it a bin)."""
  if c.text_index is None:
    return np.zeros(c.subject.size, bool)
  return (c.role == Role.OTHER) & ~np.isfinite(c.value) & (c.text_index >= 0)


def count_texts(c: events_lib.CleanRows, mask: np.ndarray, into: dict[TextKey, int]) -> None:
  """Adds the train rows of `mask` with a text value to `into`, per (raw code, text)."""
  sel = mask & _texted(c)
  if not sel.any():
    return
  k = max(len(c.texts), 1)
  pairs, n = np.unique(c.code_index[sel].astype(np.int64) * k + c.text_index[sel],
                       return_counts=True)
  for pair, rows in zip(pairs.tolist(), n.tolist()):
    ci, ti = divmod(pair, k)
    key = (c.codes.codes[ci], c.texts[ti])
    into[key] = into.get(key, 0) + rows


def top_texts(counts: Mapping[TextKey, int], per_code: int = TEXTS_KEPT_PER_CODE
              ) -> dict[TextKey, int]:
  """The `per_code` most frequent texts of each code (ties by text): a shard's bounded report."""
  by_code: dict[str, list[tuple[int, str]]] = {}
  for (code, text), n in counts.items():
    by_code.setdefault(code, []).append((-n, text))
  out = {}
  for code, items in by_code.items():
    for neg, text in sorted(items)[:per_code]:
      out[code, text] = -neg
  return out


@dataclasses.dataclass
class TextCategories:
  categories: dict[str, dict[str, str]]   # (mapped) code -> text -> its category code
  counts: dict[str, int]                  # category code -> train rows

  def __bool__(self) -> bool:
    return bool(self.categories)


def fit_texts(counts: Mapping[TextKey, int], mapping: Mapping[str, str], max_per_code: int,
              min_count: int) -> TextCategories:
  """Per (mapped) code, its texts with at least min_count train rows, the max_per_code most
  frequent (ties by text). Deterministic."""
  if max_per_code <= 0:
    return TextCategories({}, {})
  merged: dict[tuple[str, str], int] = {}
  for (code, text), n in counts.items():
    key = (mapping.get(code, code), text)
    merged[key] = merged.get(key, 0) + int(n)
  by_code: dict[str, list[tuple[int, str]]] = {}
  for (code, text), n in merged.items():
    if n >= max(min_count, 1):
      by_code.setdefault(code, []).append((-n, text))
  cats, out_counts = {}, {}
  for code in sorted(by_code):
    kept = sorted(by_code[code])[:max_per_code]
    cats[code] = {text: text_code(code, text) for _, text in kept}
    out_counts.update({text_code(code, text): -neg for neg, text in kept})
  return TextCategories(cats, out_counts)


def with_text_categories(c: events_lib.CleanRows, cats: Optional[TextCategories], analyzer
                         ) -> tuple[events_lib.CleanRows, int, int]:
  """The chunk with each text row of a category replaced by its category code, the chunk's text
  rows and how many got a category (the rest keep the code's bare token)."""
  sel = np.flatnonzero(_texted(c))
  if not sel.size or not cats:
    return c, int(sel.size), 0
  codes, infos = list(c.codes.codes), list(c.codes.infos)
  index_of: dict[str, int] = {}
  code_index = c.code_index.copy()
  k = max(len(c.texts), 1)
  pairs = code_index[sel].astype(np.int64) * k + c.text_index[sel]
  uniq, inverse = np.unique(pairs, return_inverse=True)
  new_U = np.full(uniq.size, -1, np.int64)
  for u, pair in enumerate(uniq.tolist()):
    ci, ti = divmod(pair, k)
    name = cats.categories.get(c.codes.codes[ci], {}).get(c.texts[ti])
    if name is None:
      continue
    new_U[u] = _add_code(name, codes, infos, index_of, analyzer)
  new_R = new_U[inverse.reshape(-1)]
  hit = new_R >= 0
  if not hit.any():
    return c, int(sel.size), 0
  code_index[sel[hit]] = new_R[hit]
  c = dataclasses.replace(c, code_index=code_index, codes=events_lib.CodeTable(codes, infos))
  return c, int(sel.size), int(hit.sum())


def describe_texts(vocab, cats: TextCategories, tok) -> None:
  """Gives each category token its text (`text value 'NEG'`) as its description."""
  for code in sorted(cats.categories):
    for text, name in cats.categories[code].items():
      ids = tok.code_token_ids(name)
      entry = vocab.entries[ids[-1]] if ids else None
      if entry is None or entry["token"] != tok.analyzer.analyze(name).key:
        continue
      entry["description"] = f"text value {text!r}"
