"""The paper tables: cost and chronic-condition results of every model, from predictions files.

`build_report(runs_dir, output_dir)` scans runs_dir for predictions/{cost,chronic}/*.parquet
(lmm_jax.eval.predictions), evaluates every file with lmm_jax.eval.metrics and writes
  cost_table.md, cost_table.csv, predictive_ratios.csv
  chronic_table.md, chronic_table.csv
  predictive_ratio.png, calibration.png, chronic_auroc.png     (lmm_jax.report.plots)
Oracle rows (kind "oracle": the synthetic world's ground truth) are marked and never count as the
best baseline. Improvements are relative to the best row of kind "baseline": for NMAE
(best - model) / best, for macro AUROC (model - best) / best, in percent, with paired bootstrap
intervals when both files hold the same members.

Small cells are suppressed (`lmm_jax.report.privacy`, the CMS rule of 11): a predictive-ratio
decile or calibration bin of fewer than 11 members is left out of the CSV figures and the plots,
and counts of 1 to 10 members print as "<11".
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Any, Sequence

import numpy as np
import tqdm

from lmm_jax.eval import metrics
from lmm_jax.eval import predictions as preds_io
from lmm_jax.report import plots as plots_lib
from lmm_jax.report import privacy

ORACLE_MARK = " †"
NUM_RATIO_GROUPS = 10  # deciles of predicted cost
POPULATIONS = (("all", "all members"),
               ("new_onset", "new onsets only (members without the condition before the index "
                "date)"))


def _display_names(paths: Sequence[str], models: Sequence[str], runs_dir: str) -> list[str]:
  """Model names, made unique by the run directory when two runs share a model name."""
  names = []
  for path, model in zip(paths, models):
    if models.count(model) > 1:
      run = os.path.relpath(os.path.dirname(os.path.dirname(os.path.dirname(path))), runs_dir)
      names.append(f"{model} ({run})")
    else:
      names.append(model)
  return names


def _sorted_by_subject(ids: np.ndarray, *arrays):
  order = np.argsort(ids, kind="stable")
  return (ids[order],) + tuple(None if a is None else a[order] for a in arrays)


def _params(n) -> str:
  if n is None:
    return "—"
  n = float(n)
  for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
    if n >= size:
      return f"{n / size:.1f}{unit}"
  return f"{int(n)}"


def _fmt(x: float, ci: tuple[float, float] | None = None, scale: float = 1.0,
         digits: int = 3) -> str:
  if x is None or np.isnan(x):
    return "—"
  s = f"{x * scale:,.{digits}f}"
  if ci is not None and not np.isnan(ci[0]):
    s += f" [{ci[0] * scale:,.{digits}f}, {ci[1] * scale:,.{digits}f}]"
  return s


def _provenance(metas: Sequence[dict], num_samples: int, seed: int) -> list[str]:
  data = sorted({f"`{m['data_dir']}` (split {m['split']})" for m in metas})
  members = sorted({int(m["num_members"]) for m in metas})
  sizes = [f"{m['model']}: {_params(m['num_params'])}" for m in metas if m["num_params"]]
  lines = [f"- Data: {', '.join(data)}",
           f"- Members evaluated: {', '.join(str(n) for n in members)} (per model in the table)",
           f"- Model sizes (parameters): {'; '.join(sizes) if sizes else 'no neural models'}",
           f"- Intervals: 95% percentile bootstrap over members ({num_samples} resamples, "
           f"seed {seed}); improvements use the same resamples for both models when they hold "
           "the same members.",
           f"- Rows marked{ORACLE_MARK} are the oracle: expected values (probabilities) of the "
           "synthetic world's ground truth, the best attainable R² and AUROC; never the \"best "
           "baseline\". NMAE rewards median-like predictions, so a model may beat the oracle's "
           "NMAE."]
  return lines


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  out += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# Cost.


@dataclasses.dataclass
class CostRow:
  name: str
  meta: dict
  subject_id: np.ndarray
  targets: dict[str, dict[str, Any]]   # "raw"/"capped" -> metrics, intervals, samples
  ratios: dict[str, np.ndarray]
  interval_coverage: float      # share of members inside [P10, P90]; NaN without quantiles
  improvement: dict[str, tuple[float, tuple[float, float] | None]] = dataclasses.field(
      default_factory=dict)

  @property
  def is_oracle(self) -> bool:
    return self.meta["kind"] == "oracle"


def evaluate_cost(p: preds_io.CostPredictions, name: str, num_samples: int,
                  seed: int) -> CostRow:
  ids, y, yhat, yhat_cap = _sorted_by_subject(p.subject_id, p.y_true, p.y_pred, p.y_pred_capped)
  targets = {}
  capped_pred = yhat_cap if yhat_cap is not None else metrics.cap(yhat)
  for target, (t, pr) in (("raw", (y, yhat)), ("capped", (metrics.cap(y), capped_pred))):
    samples = metrics.bootstrap_cost(t, pr, num_samples=num_samples, seed=seed)
    targets[target] = {"metrics": metrics.cost_metrics(t, pr), "samples": samples,
                       "ci": metrics.summarize(samples)}
  ratios = privacy.suppress_groups(
      metrics.predictive_ratios(y, yhat, min(NUM_RATIO_GROUPS, y.size)), "n",
      ("mean_pred", "mean_true", "ratio"))
  coverage = float("nan")
  if "p10" in p.quantiles and "p90" in p.quantiles:
    _, lo, hi = _sorted_by_subject(p.subject_id, p.quantiles["p10"], p.quantiles["p90"])
    coverage = float(np.mean((lo <= y) & (y <= hi)))
  return CostRow(name, p.meta, ids, targets, ratios, coverage)


def _add_improvements(rows: Sequence[Any], key: str, best_of, lower_is_better: bool) -> dict:
  """Sets row.improvement[key] against the best baseline; returns {key: best row name or None}."""
  baselines = [r for r in rows if r.meta["kind"] == "baseline" and not np.isnan(best_of(r)[0])]
  if not baselines:
    for r in rows:
      r.improvement[key] = (float("nan"), None)
    return None
  pick = min if lower_is_better else max
  best = pick(baselines, key=lambda r: best_of(r)[0])
  base_value, base_samples = best_of(best)
  for r in rows:
    value, samples = best_of(r)
    point = float(metrics.improvement_percent(value, base_value, lower_is_better))
    ci = None
    if np.array_equal(r.subject_id, best.subject_id):
      ci = metrics.interval(metrics.improvement_percent(samples, base_samples, lower_is_better))
    r.improvement[key] = (point, ci)
  return best.name


def cost_report(paths: Sequence[str], runs_dir: str, *, num_samples: int, seed: int,
                progress: bool = True) -> tuple[list[CostRow], dict]:
  loaded = [preds_io.read_cost_predictions(p) for p in paths]
  names = _display_names(paths, [p.model for p in loaded], runs_dir)
  rows = [evaluate_cost(p, n, num_samples, seed)
          for p, n in tqdm.tqdm(list(zip(loaded, names)), desc="cost tables", disable=not progress)]
  best = {}
  for target in ("raw", "capped"):
    best[target] = _add_improvements(
        rows, target, lambda r, t=target: (r.targets[t]["metrics"]["nmae"],
                                           r.targets[t]["samples"]["nmae"]),
        lower_is_better=True)
  rows.sort(key=lambda r: (r.is_oracle, r.targets["raw"]["metrics"]["nmae"]))
  return rows, best


def cost_markdown(rows: Sequence[CostRow], best: dict, *, num_samples: int, seed: int) -> str:
  header = ["model", "kind", "members", "params"]
  for t in ("raw", "capped $250k"):
    header += [f"NMAE % ({t})", f"MAE $ ({t})", f"R² ({t})", f"CPM ({t})",
               f"NMAE improvement % ({t})"]
  header.append("P10-P90 coverage %")
  body = []
  for r in rows:
    line = [r.name + (ORACLE_MARK if r.is_oracle else ""), r.meta["kind"],
            str(r.meta["num_members"]), _params(r.meta["num_params"])]
    for t in ("raw", "capped"):
      m, ci = r.targets[t]["metrics"], r.targets[t]["ci"]
      imp, imp_ci = r.improvement[t]
      line += [_fmt(m["nmae"], ci["nmae"], 100, 1), _fmt(m["mae"], ci["mae"], 1, 0),
               _fmt(m["r2"], ci["r2"]), _fmt(m["cpm"], ci["cpm"]), _fmt(imp, imp_ci, 1, 1)]
    line.append(_fmt(r.interval_coverage, None, 100, 1))
    body.append(line)
  lines = ["# Next-12-month cost: held-out results", ""]
  lines += _provenance([r.meta for r in rows], num_samples, seed)
  lines += [f"- Best baseline (lowest NMAE, raw): {best['raw'] or 'none'}; "
            f"capped: {best['capped'] or 'none'}.",
            "- NMAE = MAE / mean actual cost; CPM = 1 - Σ|y-ŷ| / Σ|y-ȳ|. Capped: actual and "
            "predicted cost truncated at $250k (or the model's own capped prediction). P10-P90 "
            "coverage: share of members whose cost falls in the model's 80% interval (ideal 80).",
            "",
            _md_table(header, body), ""]
  return "\n".join(lines)


def cost_csv(rows: Sequence[CostRow], best: dict, path: str) -> None:
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    head = ["model", "kind", "data_dir", "split", "members", "num_params"]
    for t in ("raw", "capped"):
      for k in ("nmae", "mae", "r2", "cpm"):
        head += [f"{k}_{t}", f"{k}_{t}_lo", f"{k}_{t}_hi"]
      head += [f"nmae_improvement_pct_{t}", f"nmae_improvement_pct_{t}_lo",
               f"nmae_improvement_pct_{t}_hi", f"best_baseline_{t}"]
    head.append("p10_p90_coverage")
    w.writerow(head)
    for r in rows:
      line = [r.name, r.meta["kind"], r.meta["data_dir"], r.meta["split"], r.meta["num_members"],
              r.meta["num_params"] if r.meta["num_params"] is not None else ""]
      for t in ("raw", "capped"):
        m, ci = r.targets[t]["metrics"], r.targets[t]["ci"]
        for k in ("nmae", "mae", "r2", "cpm"):
          line += [m[k], *ci[k]]
        imp, imp_ci = r.improvement[t]
        line += [imp, *(imp_ci or ("", "")), best[t] or ""]
      line.append("" if np.isnan(r.interval_coverage) else r.interval_coverage)
      w.writerow(line)


def ratios_csv(rows: Sequence[CostRow], path: str) -> None:
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["model", "decile", "members", "mean_pred", "mean_true", "predictive_ratio"])
    for r in rows:
      pr = r.ratios
      for i in range(len(pr["group"])):
        w.writerow([r.name, int(pr["group"][i]), privacy.count_cell(int(pr["n"][i]))] +
                   ["" if np.isnan(pr[k][i]) else pr[k][i]
                    for k in ("mean_pred", "mean_true", "ratio")])


# ----------------------------------------------------------------------------------------------
# Chronic conditions.


@dataclasses.dataclass
class ChronicRow:
  name: str
  meta: dict
  subject_id: np.ndarray
  conditions: tuple[str, ...]
  populations: dict[str, dict[str, Any]]  # "all"/"new_onset" -> metrics, macro samples, ci
  calibration: dict[str, np.ndarray]      # pooled over conditions, all members
  improvement: dict[str, tuple[float, tuple[float, float] | None]] = dataclasses.field(
      default_factory=dict)

  @property
  def is_oracle(self) -> bool:
    return self.meta["kind"] == "oracle"


def evaluate_chronic(p: preds_io.ChronicPredictions, name: str, num_samples: int,
                     seed: int) -> ChronicRow:
  ids, y, pr, prior = _sorted_by_subject(p.subject_id, p.y_true, p.y_pred, p.y_prior)
  pops = {}
  for pop, _ in POPULATIONS:
    mask = None if pop == "all" else metrics.new_onset_mask(prior)
    m = metrics.chronic_metrics(y, pr, mask, names=p.conditions)
    samples = metrics.bootstrap_macro_auroc(y, pr, mask, num_samples=num_samples, seed=seed)
    pops[pop] = {"metrics": m, "samples": samples, "ci": metrics.interval(samples)}
  curve = privacy.suppress_groups(metrics.calibration_curve(y.ravel(), pr.ravel()), "count",
                                  ("mean_pred", "frac_pos"))
  return ChronicRow(name, p.meta, ids, p.conditions, pops, curve)


def chronic_report(paths: Sequence[str], runs_dir: str, *, num_samples: int, seed: int,
                   progress: bool = True) -> tuple[list[ChronicRow], dict]:
  loaded = [preds_io.read_chronic_predictions(p) for p in paths]
  names = _display_names(paths, [p.model for p in loaded], runs_dir)
  rows = [evaluate_chronic(p, n, num_samples, seed)
          for p, n in tqdm.tqdm(list(zip(loaded, names)), desc="chronic tables",
                                disable=not progress)]
  best = {}
  for pop, _ in POPULATIONS:
    best[pop] = _add_improvements(
        rows, pop, lambda r, q=pop: (r.populations[q]["metrics"]["macro_auroc"],
                                     r.populations[q]["samples"]),
        lower_is_better=False)
  rows.sort(key=lambda r: (r.is_oracle, -np.nan_to_num(
      r.populations["all"]["metrics"]["macro_auroc"], nan=-1.0)))
  return rows, best


def chronic_markdown(rows: Sequence[ChronicRow], best: dict, *, num_samples: int,
                     seed: int) -> str:
  lines = ["# Chronic conditions in the next 12 months: held-out results", ""]
  lines += _provenance([r.meta for r in rows], num_samples, seed)
  lines += ["- AUROC and AUPRC per condition; macro = mean over conditions with both classes "
            "present, micro = all member-condition pairs pooled; ECE over 10 equal-width bins.",
            ""]
  for pop, title in POPULATIONS:
    lines += [f"## {title}", "",
              f"Best baseline (highest macro AUROC): {best[pop] or 'none'}.", ""]
    header = ["model", "kind", "members", "params", "macro AUROC", "macro AUPRC", "micro AUROC",
              "micro AUPRC", "Brier", "ECE", "macro AUROC improvement %"]
    body = []
    for r in rows:
      m = r.populations[pop]["metrics"]
      imp, imp_ci = r.improvement[pop]
      body.append([r.name + (ORACLE_MARK if r.is_oracle else ""), r.meta["kind"],
                   str(r.meta["num_members"]), _params(r.meta["num_params"]),
                   _fmt(m["macro_auroc"], r.populations[pop]["ci"]), _fmt(m["macro_auprc"]),
                   _fmt(m["micro_auroc"]), _fmt(m["micro_auprc"]), _fmt(m["brier"], digits=4),
                   _fmt(m["ece"], digits=4), _fmt(imp, imp_ci, 1, 1)])
    lines += [_md_table(header, body), ""]
    conds = list(dict.fromkeys(c for r in rows for c in r.conditions))
    header = ["condition", "positives / members"] + [
        r.name + (ORACLE_MARK if r.is_oracle else "") for r in rows]
    body = []
    for c in conds:
      seen = {(x["n_pos"], x["n"]) for r in rows
              for x in r.populations[pop]["metrics"]["per_condition"] if x["condition"] == c}
      counts = (" / ".join(privacy.count_cell(n) for n in next(iter(seen))) if len(seen) == 1
                else "varies")
      cells = []
      for r in rows:
        per = {x["condition"]: x for x in r.populations[pop]["metrics"]["per_condition"]}
        cells.append(f"{_fmt(per[c]['auroc'])} / {_fmt(per[c]['auprc'])}" if c in per else "—")
      body.append([c, counts] + cells)
    lines += ["Per condition: AUROC / AUPRC.", "", _md_table(header, body), ""]
  return "\n".join(lines)


def chronic_csv(rows: Sequence[ChronicRow], best: dict, path: str) -> None:
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["model", "kind", "data_dir", "split", "members", "num_params", "population",
                "condition", "n", "n_pos", "auroc", "auprc", "brier", "ece", "auroc_lo",
                "auroc_hi", "auroc_improvement_pct", "auroc_improvement_pct_lo",
                "auroc_improvement_pct_hi", "best_baseline"])
    for r in rows:
      head = [r.name, r.meta["kind"], r.meta["data_dir"], r.meta["split"], r.meta["num_members"],
              r.meta["num_params"] if r.meta["num_params"] is not None else ""]
      for pop, _ in POPULATIONS:
        m = r.populations[pop]["metrics"]
        imp, imp_ci = r.improvement[pop]
        w.writerow(head + [pop, "macro", m["n_pairs"], "", m["macro_auroc"], m["macro_auprc"],
                           m["brier"], m["ece"], *r.populations[pop]["ci"], imp,
                           *(imp_ci or ("", "")), best[pop] or ""])
        w.writerow(head + [pop, "micro", m["n_pairs"], "", m["micro_auroc"], m["micro_auprc"],
                           m["brier"], m["ece"], "", "", "", "", "", ""])
        for c in m["per_condition"]:
          w.writerow(head + [pop, c["condition"], c["n"], c["n_pos"], c["auroc"], c["auprc"],
                             c["brier"], c["ece"], "", "", "", "", "", ""])


# ----------------------------------------------------------------------------------------------


def _write_text(path: str, text: str) -> None:
  with open(path, "w") as f:
    f.write(text)


def build_report(runs_dir: str, output_dir: str, *,
                 num_samples: int = metrics.DEFAULT_BOOTSTRAP_SAMPLES, seed: int = 0,
                 plots: bool = True, progress: bool = True) -> dict[str, str]:
  """Writes the tables (and plots) for every predictions file below runs_dir.

  Returns {"cost": markdown or "", "chronic": markdown or "", "files": [...] written}.
  """
  found = preds_io.find_predictions(runs_dir)
  if not found["cost"] and not found["chronic"]:
    raise FileNotFoundError(f"no predictions/{{cost,chronic}}/*.parquet below {runs_dir!r}")
  os.makedirs(output_dir, exist_ok=True)
  out = {"cost": "", "chronic": "", "files": []}
  if found["cost"]:
    rows, best = cost_report(found["cost"], runs_dir, num_samples=num_samples, seed=seed,
                             progress=progress)
    out["cost"] = cost_markdown(rows, best, num_samples=num_samples, seed=seed)
    for name, write in (("cost_table.md", lambda p: _write_text(p, out["cost"])),
                        ("cost_table.csv", lambda p: cost_csv(rows, best, p)),
                        ("predictive_ratios.csv", lambda p: ratios_csv(rows, p))):
      write(os.path.join(output_dir, name))
      out["files"].append(name)
    if plots:
      out["files"].append(plots_lib.predictive_ratio_plot(rows, output_dir))
  if found["chronic"]:
    rows, best = chronic_report(found["chronic"], runs_dir, num_samples=num_samples, seed=seed,
                                progress=progress)
    out["chronic"] = chronic_markdown(rows, best, num_samples=num_samples, seed=seed)
    for name, write in (("chronic_table.md", lambda p: _write_text(p, out["chronic"])),
                        ("chronic_table.csv", lambda p: chronic_csv(rows, best, p))):
      write(os.path.join(output_dir, name))
      out["files"].append(name)
    if plots:
      out["files"].append(plots_lib.calibration_plot(rows, output_dir))
      out["files"].append(plots_lib.auroc_plot(rows, output_dir))
  return out
