"""PNG plots: the paper tables' here, and the figure helpers every other plot uses.

Figures are `matplotlib.figure.Figure` objects rendered straight to PNG: no pyplot state and no
backend switch, so importing the library never changes a notebook's backend and no display is
needed.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from matplotlib import colormaps
from matplotlib.figure import Figure
import numpy as np

_ORACLE_STYLE = {"linestyle": "--", "color": "black"}


def _label(row) -> str:
  return row.name + (" (oracle)" if row.is_oracle else "")


def subplots(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Figure, Any]:
  """(figure, axes) like pyplot.subplots, on a standalone Figure (figsize= etc. go to Figure)."""
  fig_kw = {k: kwargs.pop(k) for k in ("figsize", "dpi") if k in kwargs}
  fig = Figure(**fig_kw)
  return fig, fig.subplots(nrows, ncols, **kwargs)


def save_png(fig: Figure, path: str, dpi: int = 120) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  return path


def colormap(name: str):
  return colormaps[name]


def _save(fig: Figure, output_dir: str, name: str) -> str:
  save_png(fig, os.path.join(output_dir, name))
  return name


def predictive_ratio_plot(rows: Sequence, output_dir: str) -> str:
  """Predictive ratio sum(yhat)/sum(y) by decile of predicted cost, one line per model."""
  fig, ax = subplots(figsize=(7, 4.5))
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
  fig, ax = subplots(figsize=(5.5, 5))
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
  fig, axes = subplots(2, 1, figsize=(max(8, 0.45 * len(conds) + 3), 8), sharex=True)
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
