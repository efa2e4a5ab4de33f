"""The world's calibration figures against their published references (docs/synthetic_world.md).

Each function takes what one chunk of the simulation knows (its Sink, state and coverage) and
returns additive counts or per-member arrays, so the writer can pool chunks; `pooled` turns the
pooled parts into the figures of ground_truth/summary.json.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmm_jax.synth import codes as code_lib
from lmm_jax.synth import sim

# Published references, printed beside the measured figures by benchmarks/bench_world.py.
REFERENCES = {
    "top_decile_persistence": ("< 0.5", "MEPS: fewer than half of the top spending decile stay in "
                               "it the next year"),
    "readmission_30d_65plus": ("~0.20", "Jencks, Williams and Coleman, NEJM 2009: 19.6% of "
                               "Medicare discharges readmitted within 30 days"),
    "last_year_of_life_share_65plus": ("~0.25", "Riley and Lubitz, Health Serv Res 2010: about a "
                                       "quarter of Medicare spending is in the last year of life"),
    "winter_summer_ratio": ("> 1", "respiratory and heart-failure admissions peak in winter"),
    "top1_share": ("~0.22", "MEPS"), "top5_share": ("~0.50", "MEPS"),
    "top10_share": ("~0.65", "MEPS"),
}
_SEASONAL = np.concatenate([[code_lib.PNEUMONIA, code_lib.COPD_EXAC], code_lib.HF_ACUTE])


def _stays(sink: sim.Sink) -> tuple[np.ndarray, ...]:
  if not sink.stays:
    return tuple(np.zeros(0, d) for d in (np.int32, np.int64, np.int64, np.float32, np.int32))
  return tuple(np.concatenate(x) for x in zip(*sink.stays))


def chunk_parts(sink: sim.Sink, st, covered_months: np.ndarray, cal: sim.Calendar,
                year: int) -> dict[str, Any]:
  """Per chunk: costs of members covered all of `year - 1` and `year` (persistence), readmission
  and end-of-life counts for people 65+, and seasonal admissions by calendar month."""
  out: dict[str, Any] = {}
  if year >= 1:
    both = (covered_months[year - 1] == 12) & (covered_months[year] == 12)
    out["cost_pairs"] = np.stack([sink.cost[year - 1][both], sink.cost[year][both]], 1).astype(
        np.float32)
  else:
    out["cost_pairs"] = np.zeros((0, 2), np.float32)
  pidx, admit, discharge, age, principal = _stays(sink)
  data_end = int(cal.start[-1] + cal.length[-1])
  # Readmission (any cause) within 30 days of a discharge, 65+, with 30 days of follow-up.
  order = np.lexsort((admit, pidx))
  p_s, a_s, d_s, age_s = pidx[order], admit[order], discharge[order], age[order]
  nxt_same = np.r_[p_s[1:] == p_s[:-1], False]
  nxt_admit = np.r_[a_s[1:], 0]
  index = (age_s >= 65) & (d_s + 30 < data_end)
  readmit = nxt_same & (nxt_admit > d_s - 1) & (nxt_admit <= d_s + 30)
  out["stays_65"] = int(index.sum())
  out["readmit_30_65"] = int((index & readmit).sum())
  # Riley and Lubitz's measure: the spending of the year's decedents (65+) in their last 365
  # days, over the year's spending of all members 65+ covered in it.
  y0, y1 = int(cal.start[12 * year]), int(cal.start[12 * year] + 365)
  age_mid = (12 * year + 6 - st.birth_mi) / 12.0
  members = (covered_months[year] > 0) & (age_mid >= 65)
  died = members & (st.death_day >= y0) & (st.death_day < y1) & ~st.alive
  last_year = 0.0
  if sink.parts:
    c_p, c_day, _, _, c_cost, _, _ = (np.concatenate(x) for x in zip(*sink.parts))
    before = st.death_day[c_p] - c_day
    last_year = float(c_cost[died[c_p] & (before >= 0) & (before < 365)].sum())
  out["eol"] = np.array([sink.cost[year][members].sum(), last_year, members.sum(), died.sum()],
                        np.float64)
  month = ((admit - cal.start[0]) // 30.4375).astype(np.int64) % 12
  seasonal = np.isin(principal, _SEASONAL)
  out["seasonal_by_month"] = np.bincount(month[seasonal], minlength=12).astype(np.int64)
  return out


def persistence(cost_pairs: np.ndarray, top: float = 0.1) -> float:
  """Share of the members in the top `top` of spending in the first year who are in it the
  next year too (ties broken by position)."""
  n = len(cost_pairs)
  if n < 10:
    return float("nan")
  k = max(1, int(round(top * n)))
  first = np.argsort(-cost_pairs[:, 0], kind="stable")[:k]
  second = np.argsort(-cost_pairs[:, 1], kind="stable")[:k]
  return float(np.isin(first, second).mean())


def pooled(parts: list[dict[str, Any]]) -> dict[str, Any]:
  pairs = np.concatenate([p["cost_pairs"] for p in parts])
  stays = sum(p["stays_65"] for p in parts)
  readmit = sum(p["readmit_30_65"] for p in parts)
  eol = sum(p["eol"] for p in parts)
  by_month = sum(p["seasonal_by_month"] for p in parts)
  winter = by_month[[11, 0, 1]].sum()
  summer = by_month[[5, 6, 7]].sum()
  return {
      "top_decile_persistence": persistence(pairs), "persistence_members": int(len(pairs)),
      "readmission_30d_65plus": readmit / stays if stays else float("nan"),
      "discharges_65plus": int(stays),
      "last_year_of_life_share_65plus": float(eol[1] / eol[0]) if eol[0] else float("nan"),
      "decedent_share_65plus": float(eol[3] / eol[2]) if eol[2] else float("nan"),
      "winter_summer_ratio": float(winter / summer) if summer else float("nan"),
      "seasonal_admissions_by_month": by_month.tolist(),
  }
