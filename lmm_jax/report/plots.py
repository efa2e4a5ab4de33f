"""PNG plots of the paper tables (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

_ORACLE_STYLE = {"linestyle": "--", "color": "black"}


def _label(row) -> str:
  return row.name + (" (oracle)" if row.is_oracle else "")


def _save(fig, output_dir: str, name: str) -> str:
  fig.tight_layout()
  fig.savefig(os.path.join(output_dir, name), dpi=120)
  plt.close(fig)
  return name


def predictive_ratio_plot(rows: Sequence, output_dir: str) -> str:
  """Predictive ratio sum(yhat)/sum(y) by decile of predicted cost, one line per model."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for r in rows:
    pr = r.ratios
    ax.plot(pr["group"], pr["ratio"], marker="o", label=_label(r),
            **(_ORACLE_STYLE if r.is_oracle else {}))
  ax.axhline(1.0, color="grey", linewidth=0.8)
  ax.set_xlabel("decile of predicted cost")
  ax.set_ylabel("predictive ratio  Σŷ / Σy")
  ax.set_yscale("log")
  ax.set_title("Cost: predictive ratio by decile of prediction (uncapped)")
  ax.legend(fontsize=7)
  return _save(fig, output_dir, "predictive_ratio.png")


def calibration_plot(rows: Sequence, output_dir: str) -> str:
  """Reliability curves pooled over all member-condition pairs, one line per model."""
  fig, ax = plt.subplots(figsize=(5.5, 5))
  ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
  for r in rows:
    c = r.calibration
    ax.plot(c["mean_pred"], c["frac_pos"], marker="o", label=_label(r),
            **(_ORACLE_STYLE if r.is_oracle else {}))
  ax.set_xlabel("mean predicted probability")
  ax.set_ylabel("observed frequency")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_title("Chronic conditions: calibration (all members)")
  ax.legend(fontsize=7)
  return _save(fig, output_dir, "calibration.png")


def auroc_plot(rows: Sequence, output_dir: str) -> str:
  """Per-condition AUROC of each model, on all members and on new onsets."""
  conds = list(dict.fromkeys(c for r in rows for c in r.conditions))
  x = np.arange(len(conds))
  fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.45 * len(conds) + 3), 8), sharex=True)
  for ax, (pop, title) in zip(axes, (("all", "all members"), ("new_onset", "new onsets"))):
    for r in rows:
      per = {c["condition"]: c["auroc"] for c in r.populations[pop]["metrics"]["per_condition"]}
      y = np.array([per.get(c, np.nan) for c in conds])
      ax.plot(x, y, marker="o", linestyle="none" if not r.is_oracle else ":",
              label=_label(r), **({"color": "black"} if r.is_oracle else {}))
    ax.axhline(0.5, color="grey", linewidth=0.8)
    ax.set_ylabel("AUROC")
    ax.set_ylim(0.3, 1.0)
    ax.set_title(f"Per-condition AUROC: {title}")
  axes[-1].set_xticks(x)
  axes[-1].set_xticklabels(conds, rotation=60, ha="right", fontsize=8)
  axes[0].legend(fontsize=7, ncol=2)
  return _save(fig, output_dir, "chronic_auroc.png")
