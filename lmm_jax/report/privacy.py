"""Small-cell suppression and dollar bands for every table and plot that describes members.

The CMS cell-size rule: no figure built from fewer than 11 members (1 to 10) is published, since a
count or mean over a handful of members can identify them. `suppress_groups` blanks such groups
(deciles, calibration bins), `count_cell` shows their counts as "<11", and `dollar_band` replaces a
member's exact dollars by a band. Used by the paper tables (`lmm_jax.report.tables`, the plots)
and the insights report (`lmm_jax.insights.report`).
"""

from __future__ import annotations

import bisect
from typing import Mapping, Sequence

import numpy as np

MIN_CELL = 11                 # the smallest group a published figure may describe
SUPPRESSED = f"<{MIN_CELL}"
# Dollar band edges: [0, 1k), [1k, 5k), ..., [250k, inf); exact zero has its own band.
DOLLAR_EDGES = (1_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000)
# Days-before-an-index-date band edges: [0, 30), [30, 90), [90, 180), [180, 365), [365, inf).
DAY_EDGES = (30, 90, 180, 365)


def is_small(n: int | float, min_cell: int = MIN_CELL) -> bool:
  """True for a count of 1 to min_cell - 1 members (zero reveals no one)."""
  return 0 < n < min_cell


def count_cell(n: int, min_cell: int = MIN_CELL) -> str:
  """A count for a table: itself, or "<11" when it is 1 to 10."""
  return f"<{min_cell}" if is_small(n, min_cell) else str(int(n))


def suppress_mask(n: np.ndarray, min_cell: int = MIN_CELL) -> np.ndarray:
  """bool array: where a figure rests on fewer than min_cell members (0 included: nothing to
  show)."""
  return np.asarray(n) < min_cell


def suppress_groups(groups: Mapping[str, np.ndarray], n_key: str, keys: Sequence[str],
                    min_cell: int = MIN_CELL) -> dict[str, np.ndarray]:
  """A copy of groups (arrays indexed by group) with keys set to NaN where groups[n_key] is
  below min_cell; plots then leave those points out and tables show them empty."""
  out = {k: np.array(v, copy=True) for k, v in groups.items()}
  small = np.asarray(groups[n_key]) < min_cell
  for k in keys:
    out[k] = np.where(small, np.nan, np.asarray(out[k], np.float64))
  return out


def _money(x: float) -> str:
  return f"${x / 1000:g}k" if x >= 1000 else f"${x:g}"


def dollar_band(x: float) -> str:
  """'$0', '<$1k', '$1k-$5k', ..., '>=$250k' (negative dollars band as '<$1k')."""
  if not np.isfinite(x):
    return "n/a"
  if x == 0:
    return "$0"
  i = bisect.bisect_right(DOLLAR_EDGES, x)
  if i == 0:
    return f"<{_money(DOLLAR_EDGES[0])}"
  if i == len(DOLLAR_EDGES):
    return f">={_money(DOLLAR_EDGES[-1])}"
  return f"{_money(DOLLAR_EDGES[i - 1])}-{_money(DOLLAR_EDGES[i])}"


def days_band(days: float) -> str:
  """'0-30d', '30-90d', '90-180d', '180-365d', '365d+' (a dated event shown without its date)."""
  i = bisect.bisect_right(DAY_EDGES, max(float(days), 0.0))
  if i == len(DAY_EDGES):
    return f"{DAY_EDGES[-1]}d+"
  return f"{0 if i == 0 else DAY_EDGES[i - 1]}-{DAY_EDGES[i]}d"


def age_band(age: float, width: int = 5) -> str:
  """'60-64' (unknown: 'unknown'; 90 and over: '90+', as HIPAA safe harbor)."""
  if age < 0 or not np.isfinite(age):
    return "unknown"
  if age >= 90:
    return "90+"
  lo = int(age // width) * width
  return f"{lo}-{lo + width - 1}"


__all__ = ["DAY_EDGES", "DOLLAR_EDGES", "MIN_CELL", "SUPPRESSED", "age_band", "count_cell",
           "days_band", "dollar_band", "is_small", "suppress_groups", "suppress_mask"]
