"""The paper tables: cost and chronic-condition results of every model, from predictions files.

`build_report(runs_dir, output_dir)` scans runs_dir for predictions/{cost,chronic}/*.parquet
(lmm_jax.eval.predictions), evaluates every file with lmm_jax.eval.metrics and writes
  cost_table.md, cost_table.csv, predictive_ratios.csv
  chronic_table.md, chronic_table.csv
  predictive_ratio.png, calibration.png, chronic_auroc.png     (lmm_jax.report.plots)
Oracle rows (kind "oracle": the synthetic world's ground truth) are marked and never count as the
best baseline. Improvements are relative to the best row of kind "baseline": for NMAE
(best - model) / best, for macro AUROC (model - best) / best, in percent. Each table states the
headroom (how much better the best oracle row is than the best baseline) and every row's share of
that gap closed, (model - best) / (oracle - best); cost rows also show their NMAE reduction against
the commercial risk model (RISK_MODEL, recalibrated CMS-HCC V28), the paper's comparison. Every
comparison is paired: computed on the
members both (all three) files hold, with the same bootstrap resamples for each.
The new-onset macro AUROC averages only the conditions with at least `min_positives` (30) new
onsets among the evaluated members; the others are listed and counted, and the pooled micro AUROC
uses every at-risk pair.

Small cells are suppressed (`lmm_jax.report.privacy`, the CMS rule of 11): a predictive-ratio
decile or calibration bin of fewer than 11 members is left out of the CSV figures and the plots,
and counts of 1 to 10 members print as "<11".
"""

from __future__ import annotations

import csv
import dataclasses
import functools
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
# The commercial risk model of the paper's cost comparison (the baselines runner's recalibrated
# CMS-HCC V28): every cost row also gets its paired NMAE reduction against this one.
RISK_MODEL = "cms_hcc_v28"
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
  z = lambda v: v * scale + 0.0  # + 0.0: no "-0.0"
  s = f"{z(x):,.{digits}f}"
  if ci is not None and not np.isnan(ci[0]):
    s += f" [{z(ci[0]):,.{digits}f}, {z(ci[1]):,.{digits}f}]"
  return s


def _provenance(metas: Sequence[dict], num_samples: int, seed: int) -> list[str]:
  data = sorted({f"`{m['data_dir']}` (split {m['split']})" for m in metas})
  members = sorted({int(m["num_members"]) for m in metas})
  sizes = [f"{m['model']}: {_params(m['num_params'])}" for m in metas if m["num_params"]]
  lines = [f"- Data: {', '.join(data)}",
           f"- Members evaluated: {', '.join(str(n) for n in members)} (per model in the table)",
           f"- Model sizes (parameters): {'; '.join(sizes) if sizes else 'no neural models'}",
           f"- Intervals: 95% percentile bootstrap over members ({num_samples} resamples, "
           f"seed {seed}); improvements, headroom and gap closed are paired: computed on the "
           "members both (all three) rows hold, with the same resamples.",
           f"- Rows marked{ORACLE_MARK} are the oracle: expected values (probabilities) of the "
           "synthetic world's ground truth, the best attainable R² and AUROC; never the \"best "
           "baseline\". NMAE rewards median-like predictions: oracle_median (the true conditional "
           "median, when the world provides it) is the NMAE limit, and a model may beat the mean "
           "oracle's NMAE. The headroom uses the oracle row best on the table's metric."]
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
  truth: dict[str, np.ndarray]  # "raw"/"capped" -> actual cost, in subject order
  preds: dict[str, np.ndarray]  # "raw"/"capped" -> prediction, in subject order
  improvement: dict[str, tuple[float, tuple[float, float] | None]] = dataclasses.field(
      default_factory=dict)
  gap_closed: dict[str, tuple[float, tuple[float, float] | None]] = dataclasses.field(
      default_factory=dict)
  # Percent NMAE below the commercial risk model (RISK_MODEL), paired: the paper's comparison.
  vs_risk_model: dict[str, tuple[float, tuple[float, float] | None]] = dataclasses.field(
      default_factory=dict)
  cache: dict = dataclasses.field(default_factory=dict, repr=False)

  @property
  def is_oracle(self) -> bool:
    return self.meta["kind"] == "oracle"

  def nmae_on(self, idx: np.ndarray | None, target: str, num_samples: int,
              seed: int) -> tuple[float, np.ndarray]:
    """NMAE and its bootstrap draws on the members at positions idx (None: all of them)."""
    if idx is None:
      return self.targets[target]["metrics"]["nmae"], self.targets[target]["samples"]["nmae"]
    key = (target, idx.size, hash(idx.tobytes()))
    if key not in self.cache:
      t, pr = self.truth[target][idx], self.preds[target][idx]
      self.cache[key] = (metrics.cost_metrics(t, pr)["nmae"],
                         metrics.bootstrap_cost(t, pr, num_samples=num_samples, seed=seed)["nmae"])
    return self.cache[key]


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
  return CostRow(name, p.meta, ids, targets, ratios, coverage,
                 truth={"raw": y, "capped": metrics.cap(y)},
                 preds={"raw": yhat, "capped": capped_pred})


def _common(*rows) -> tuple[list[np.ndarray | None], int]:
  """Positions in each row (None: all of it) of the members every row holds, and their count."""
  ids = functools.reduce(np.intersect1d, [r.subject_id for r in rows])
  return [None if ids.size == r.subject_id.size else np.searchsorted(r.subject_id, ids)
          for r in rows], int(ids.size)


def paired_improvement(row: Any, reference: Any, metric, lower_is_better: bool
                       ) -> tuple[float, tuple[float, float] | None]:
  """Percent improvement of row over reference on the members both hold, with its paired
  interval (the same bootstrap draws); (nan, None) when they share no member."""
  (i_r, i_b), n = _common(row, reference)
  if not n:
    return float("nan"), None
  (v_r, s_r), (v_b, s_b) = metric(row, i_r), metric(reference, i_b)
  return (float(metrics.improvement_percent(v_r, v_b, lower_is_better)),
          metrics.interval(metrics.improvement_percent(s_r, s_b, lower_is_better)))


def compare(rows: Sequence[Any], key: str, metric, lower_is_better: bool) -> dict:
  """Paired comparisons of every row with the best baseline and the best oracle row.

  metric(row, idx) -> (point, bootstrap draws) on the row's members at positions idx (None: all).
  Sets row.improvement[key] (percent over the best baseline) and row.gap_closed[key] (percent of
  the headroom closed), each with a paired interval, on the members the rows compared hold.
  Returns {best, oracle (row names or None), headroom (oracle better than the best baseline by,
  in the metric's units), headroom_ci, paired_members}.
  """
  point = lambda r: metric(r, None)[0]
  pick = min if lower_is_better else max
  baselines = [r for r in rows if r.meta["kind"] == "baseline" and not np.isnan(point(r))]
  oracles = [r for r in rows if r.is_oracle and not np.isnan(point(r))]
  best = pick(baselines, key=point) if baselines else None
  oracle = pick(oracles, key=point) if oracles else None
  info = {"best": best.name if best else None, "oracle": oracle.name if oracle else None,
          "headroom": float("nan"), "headroom_ci": None, "paired_members": 0}
  for r in rows:
    r.improvement[key] = (float("nan"), None)
    r.gap_closed[key] = (float("nan"), None)
  if best is None:
    return info
  for r in rows:
    r.improvement[key] = paired_improvement(r, best, metric, lower_is_better)
    if oracle is None:
      continue
    (i_r, i_b, i_o), n = _common(r, best, oracle)
    if n:
      (v_r, s_r), (v_b, s_b), (v_o, s_o) = metric(r, i_r), metric(best, i_b), metric(oracle, i_o)
      r.gap_closed[key] = (float(metrics.gap_closed_percent(v_r, v_b, v_o)),
                           metrics.interval(metrics.gap_closed_percent(s_r, s_b, s_o)))
  if oracle is not None:
    (i_b, i_o), n = _common(best, oracle)
    if n:
      sign = -1.0 if lower_is_better else 1.0
      (v_b, s_b), (v_o, s_o) = metric(best, i_b), metric(oracle, i_o)
      info.update(headroom=float(sign * (v_o - v_b)),
                  headroom_ci=metrics.interval(sign * (s_o - s_b)), paired_members=n)
  return info


def _headroom_line(metric_name: str, info: dict, scale: float, digits: int, unit: str) -> str:
  if info["best"] is None or info["oracle"] is None:
    return (f"- Headroom ({metric_name}): needs a baseline and an oracle row "
            f"(best baseline: {info['best'] or 'none'}, oracle: {info['oracle'] or 'none'}).")
  return (f"- Headroom ({metric_name}): the oracle row {info['oracle']} is better than the best "
          f"baseline {info['best']} by {_fmt(info['headroom'], info['headroom_ci'], scale, digits)}"
          f"{unit}, paired on {privacy.count_cell(info['paired_members'])} members. \"gap closed\""
          " = (model - best baseline) / (oracle - best baseline), in percent.")


def with_median_rows(loaded: Sequence[preds_io.CostPredictions], names: Sequence[str]
                     ) -> tuple[list[preds_io.CostPredictions], list[str]]:
  """Adds a "NAME (P50)" row for every model whose file predicts the mean but also carries a P50.

  NMAE is an absolute-error measure, minimized by the conditional median; the baselines come as
  a mean and a median model (lightgbm_cost, lightgbm_median), so a model with a P50 output (the
  fine-tuned cost head's pinball quantile, zero-shot's median future) is shown both ways too, from
  the same predictions file. Oracles have their own median row (oracle_median).
  """
  out_p, out_n = list(loaded), list(names)
  for p, name in zip(loaded, names):
    p50 = p.quantiles.get("p50")
    if p50 is None or p.meta["kind"] == "oracle" or p.meta.get("point_estimate") == "p50":
      continue
    out_p.append(dataclasses.replace(p, y_pred=p50, y_pred_capped=metrics.cap(p50),
                                     meta=dict(p.meta, point_estimate="p50")))
    out_n.append(f"{name} (P50)")
  return out_p, out_n


def cost_report(paths: Sequence[str], runs_dir: str, *, num_samples: int, seed: int,
                progress: bool = True) -> tuple[list[CostRow], dict]:
  loaded = [preds_io.read_cost_predictions(p) for p in paths]
  names = _display_names(paths, [p.model for p in loaded], runs_dir)
  loaded, names = with_median_rows(loaded, names)
  rows = [evaluate_cost(p, n, num_samples, seed)
          for p, n in tqdm.tqdm(list(zip(loaded, names)), desc="cost tables", disable=not progress)]
  best = {}
  risk = next((r for r in rows if r.meta.get("model") == RISK_MODEL
               and r.meta["kind"] == "baseline"), None)
  for target in ("raw", "capped"):
    metric = lambda r, idx, t=target: r.nmae_on(idx, t, num_samples, seed)
    best[target] = compare(rows, target, metric, lower_is_better=True)
    for r in rows:
      r.vs_risk_model[target] = (paired_improvement(r, risk, metric, lower_is_better=True)
                                 if risk is not None else (float("nan"), None))
  rows.sort(key=lambda r: (r.is_oracle, r.targets["raw"]["metrics"]["nmae"]))
  return rows, best


def cost_markdown(rows: Sequence[CostRow], best: dict, *, num_samples: int, seed: int) -> str:
  header = ["model", "kind", "members", "params"]
  for t in ("raw", "capped $250k"):
    header += [f"NMAE % ({t})", f"MAE $ ({t})", f"R² ({t})", f"CPM ({t})",
               f"NMAE improvement % ({t})", f"gap closed % ({t})",
               f"NMAE below {RISK_MODEL} % ({t})"]
  header.append("P10-P90 coverage %")
  body = []
  for r in rows:
    line = [r.name + (ORACLE_MARK if r.is_oracle else ""), r.meta["kind"],
            privacy.count_cell(int(r.meta["num_members"])), _params(r.meta["num_params"])]
    for t in ("raw", "capped"):
      m, ci = r.targets[t]["metrics"], r.targets[t]["ci"]
      imp, imp_ci = r.improvement[t]
      gap, gap_ci = r.gap_closed[t]
      risk, risk_ci = r.vs_risk_model[t]
      line += [_fmt(m["nmae"], ci["nmae"], 100, 1), _fmt(m["mae"], ci["mae"], 1, 0),
               _fmt(m["r2"], ci["r2"]), _fmt(m["cpm"], ci["cpm"]), _fmt(imp, imp_ci, 1, 1),
               _fmt(gap, gap_ci, 1, 1), _fmt(risk, risk_ci, 1, 1)]
    line.append(_fmt(r.interval_coverage, None, 100, 1))
    body.append(line)
  lines = ["# Next-12-month cost: held-out results", ""]
  lines += _provenance([r.meta for r in rows], num_samples, seed)
  lines += [f"- Best baseline (lowest NMAE, raw): {best['raw']['best'] or 'none'}; "
            f"capped: {best['capped']['best'] or 'none'}.",
            _headroom_line("NMAE, raw", best["raw"], 100, 1, " NMAE points"),
            _headroom_line("NMAE, capped", best["capped"], 100, 1, " NMAE points"),
            "- NMAE = MAE / mean actual cost; CPM = 1 - Σ|y-ŷ| / Σ|y-ȳ|. Capped: actual and "
            "predicted cost truncated at $250k (or the model's own capped prediction). P10-P90 "
            "coverage: share of members whose cost falls in the model's 80% interval (ideal 80).",
            f"- NMAE below {RISK_MODEL}: percent by which a row's NMAE is below the commercial "
            "risk model's (the paper's comparison: 14.1% below the best commercial model), "
            "paired on the members both rows hold.",
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
               f"nmae_improvement_pct_{t}_hi", f"best_baseline_{t}", f"gap_closed_pct_{t}",
               f"gap_closed_pct_{t}_lo", f"gap_closed_pct_{t}_hi", f"oracle_{t}",
               f"headroom_nmae_{t}", f"headroom_nmae_{t}_lo", f"headroom_nmae_{t}_hi",
               f"nmae_below_risk_model_pct_{t}", f"nmae_below_risk_model_pct_{t}_lo",
               f"nmae_below_risk_model_pct_{t}_hi"]
    head += ["risk_model", "p10_p90_coverage"]
    w.writerow(head)
    for r in rows:
      line = [r.name, r.meta["kind"], r.meta["data_dir"], r.meta["split"], r.meta["num_members"],
              r.meta["num_params"] if r.meta["num_params"] is not None else ""]
      for t in ("raw", "capped"):
        m, ci = r.targets[t]["metrics"], r.targets[t]["ci"]
        for k in ("nmae", "mae", "r2", "cpm"):
          line += [m[k], *ci[k]]
        imp, imp_ci = r.improvement[t]
        gap, gap_ci = r.gap_closed[t]
        info = best[t]
        risk, risk_ci = r.vs_risk_model[t]
        line += [imp, *(imp_ci or ("", "")), info["best"] or "", gap, *(gap_ci or ("", "")),
                 info["oracle"] or "", info["headroom"], *(info["headroom_ci"] or ("", "")),
                 risk, *(risk_ci or ("", ""))]
      line.append(RISK_MODEL)
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
  y: np.ndarray                           # uint8[N, C] labels, in subject order
  pred: np.ndarray                        # float[N, C]
  prior: np.ndarray                       # uint8[N, C]
  include: dict[str, np.ndarray | None]   # population -> conditions in the macro (None: all)
  improvement: dict[str, tuple[float, tuple[float, float] | None]] = dataclasses.field(
      default_factory=dict)
  gap_closed: dict[str, tuple[float, tuple[float, float] | None]] = dataclasses.field(
      default_factory=dict)
  cache: dict = dataclasses.field(default_factory=dict, repr=False)

  @property
  def is_oracle(self) -> bool:
    return self.meta["kind"] == "oracle"

  def macro_on(self, idx: np.ndarray | None, pop: str, num_samples: int,
               seed: int) -> tuple[float, np.ndarray]:
    """Macro AUROC and its bootstrap draws on the members at positions idx (None: all)."""
    if idx is None:
      return self.populations[pop]["metrics"]["macro_auroc"], self.populations[pop]["samples"]
    key = (pop, idx.size, hash(idx.tobytes()))
    if key not in self.cache:
      y, pr, prior = self.y[idx], self.pred[idx], self.prior[idx]
      mask = None if pop == "all" else metrics.new_onset_mask(prior)
      m = metrics.chronic_metrics(y, pr, mask, include_C=self.include[pop])["macro_auroc"]
      self.cache[key] = (m, metrics.bootstrap_macro_auroc(
          y, pr, mask, num_samples=num_samples, seed=seed, include_C=self.include[pop]))
    return self.cache[key]


def evaluate_chronic(p: preds_io.ChronicPredictions, name: str, num_samples: int,
                     seed: int, new_onset_include: np.ndarray | None = None) -> ChronicRow:
  """new_onset_include (bool[C]): the conditions the new-onset macro AUROC averages."""
  ids, y, pr, prior = _sorted_by_subject(p.subject_id, p.y_true, p.y_pred, p.y_prior)
  pops = {}
  include = {"all": None, "new_onset": new_onset_include}
  for pop, _ in POPULATIONS:
    mask = None if pop == "all" else metrics.new_onset_mask(prior)
    m = metrics.chronic_metrics(y, pr, mask, names=p.conditions, include_C=include[pop])
    samples = metrics.bootstrap_macro_auroc(y, pr, mask, num_samples=num_samples, seed=seed,
                                            include_C=include[pop])
    pops[pop] = {"metrics": m, "samples": samples, "ci": metrics.interval(samples)}
  curve = privacy.suppress_groups(metrics.calibration_curve(y.ravel(), pr.ravel()), "count",
                                  ("mean_pred", "frac_pos"))
  return ChronicRow(name, p.meta, ids, p.conditions, pops, curve, y, pr, prior, include)


def new_onset_conditions(loaded: Sequence[preds_io.ChronicPredictions],
                         min_positives: int) -> dict[str, Any]:
  """Which conditions enter the new-onset macro AUROC: those with at least min_positives new
  onsets among the members of any file (labels are the members', the same in every file).

  Returns {conditions, incident (int[C]), include (bool[C]), excluded (names), min_positives}.
  """
  conds = loaded[0].conditions
  for p in loaded[1:]:
    if tuple(p.conditions) != tuple(conds):
      raise ValueError(f"chronic predictions of {p.model} list conditions {list(p.conditions)}, "
                       f"those of {loaded[0].model} {list(conds)}")
  ids = np.concatenate([p.subject_id for p in loaded])
  _, first = np.unique(ids, return_index=True)
  y = np.concatenate([p.y_true for p in loaded])[first]
  prior = np.concatenate([p.y_prior for p in loaded])[first]
  incident = metrics.incident_positives(y, prior)
  include = incident >= min_positives
  return {"conditions": tuple(conds), "incident": incident, "include": include,
          "excluded": [c for c, k in zip(conds, include) if not k],
          "min_positives": min_positives, "members": int(first.size)}


def chronic_report(paths: Sequence[str], runs_dir: str, *, num_samples: int, seed: int,
                   progress: bool = True,
                   min_positives: int = metrics.MIN_NEW_ONSET_POSITIVES
                   ) -> tuple[list[ChronicRow], dict]:
  loaded = [preds_io.read_chronic_predictions(p) for p in paths]
  names = _display_names(paths, [p.model for p in loaded], runs_dir)
  onsets = new_onset_conditions(loaded, min_positives)
  rows = [evaluate_chronic(p, n, num_samples, seed, onsets["include"])
          for p, n in tqdm.tqdm(list(zip(loaded, names)), desc="chronic tables",
                                disable=not progress)]
  best = {"new_onset_conditions": onsets}
  for pop, _ in POPULATIONS:
    best[pop] = compare(
        rows, pop, lambda r, idx, q=pop: r.macro_on(idx, q, num_samples, seed),
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
  onsets = best["new_onset_conditions"]
  for pop, title in POPULATIONS:
    lines += [f"## {title}", "",
              f"- Best baseline (highest macro AUROC): {best[pop]['best'] or 'none'}.",
              _headroom_line("macro AUROC", best[pop], 1, 3, ""),
              "- Members: members in the file (member-condition pairs at risk; positives among "
              "them)."]
    if pop == "new_onset":
      k = int(onsets["include"].sum())
      excluded = onsets["excluded"]
      lines.append(
          f"- Macro over the {k} conditions with at least {onsets['min_positives']} new onsets "
          f"among the {privacy.count_cell(onsets['members'])} members; {len(excluded)} "
          f"condition(s) with fewer left out" + (f": {', '.join(excluded)}." if excluded else ".")
          + " Micro pools every at-risk pair of every condition.")
    lines.append("")
    header = ["model", "kind", "members (pairs; positives)", "params", "macro AUROC",
              "macro AUPRC", "micro AUROC", "micro AUPRC", "Brier", "ECE",
              "macro AUROC improvement %", "gap closed %"]
    body = []
    for r in rows:
      m = r.populations[pop]["metrics"]
      imp, imp_ci = r.improvement[pop]
      gap, gap_ci = r.gap_closed[pop]
      positives = sum(c["n_pos"] for c in m["per_condition"])
      members = (f"{privacy.count_cell(int(r.meta['num_members']))} "
                 f"({privacy.count_cell(m['n_pairs'])}; {privacy.count_cell(positives)})")
      body.append([r.name + (ORACLE_MARK if r.is_oracle else ""), r.meta["kind"], members,
                   _params(r.meta["num_params"]),
                   _fmt(m["macro_auroc"], r.populations[pop]["ci"]), _fmt(m["macro_auprc"]),
                   _fmt(m["micro_auroc"]), _fmt(m["micro_auprc"]), _fmt(m["brier"], digits=4),
                   _fmt(m["ece"], digits=4), _fmt(imp, imp_ci, 1, 1), _fmt(gap, gap_ci, 1, 1)])
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
      if pop == "new_onset" and c in onsets["excluded"]:
        c += " (not in macro)"
      body.append([c, counts] + cells)
    lines += ["Per condition: AUROC / AUPRC.", "", _md_table(header, body), ""]
  return "\n".join(lines)


def chronic_csv(rows: Sequence[ChronicRow], best: dict, path: str) -> None:
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["model", "kind", "data_dir", "split", "members", "num_params", "population",
                "condition", "n", "n_pos", "auroc", "auprc", "brier", "ece", "auroc_lo",
                "auroc_hi", "auroc_improvement_pct", "auroc_improvement_pct_lo",
                "auroc_improvement_pct_hi", "best_baseline", "gap_closed_pct",
                "gap_closed_pct_lo", "gap_closed_pct_hi", "oracle", "headroom_auroc",
                "headroom_auroc_lo", "headroom_auroc_hi", "in_macro"])
    for r in rows:
      head = [r.name, r.meta["kind"], r.meta["data_dir"], r.meta["split"], r.meta["num_members"],
              r.meta["num_params"] if r.meta["num_params"] is not None else ""]
      for pop, _ in POPULATIONS:
        m = r.populations[pop]["metrics"]
        imp, imp_ci = r.improvement[pop]
        gap, gap_ci = r.gap_closed[pop]
        info = best[pop]
        positives = sum(c["n_pos"] for c in m["per_condition"])
        blank = [""] * 13
        w.writerow(head + [pop, "macro", m["n_pairs"], positives, m["macro_auroc"],
                           m["macro_auprc"], m["brier"], m["ece"], *r.populations[pop]["ci"], imp,
                           *(imp_ci or ("", "")), info["best"] or "", gap,
                           *(gap_ci or ("", "")), info["oracle"] or "", info["headroom"],
                           *(info["headroom_ci"] or ("", "")), ""])
        w.writerow(head + [pop, "micro", m["n_pairs"], positives, m["micro_auroc"],
                           m["micro_auprc"], m["brier"], m["ece"], *blank, ""])
        for c in m["per_condition"]:
          w.writerow(head + [pop, c["condition"], c["n"], c["n_pos"], c["auroc"], c["auprc"],
                             c["brier"], c["ece"], *blank, int(c["in_macro"])])


# ----------------------------------------------------------------------------------------------


def _write_text(path: str, text: str) -> None:
  with open(path, "w") as f:
    f.write(text)


def build_report(runs_dir: str, output_dir: str, *,
                 num_samples: int = metrics.DEFAULT_BOOTSTRAP_SAMPLES, seed: int = 0,
                 plots: bool = True, progress: bool = True,
                 min_positives: int = metrics.MIN_NEW_ONSET_POSITIVES) -> dict[str, str]:
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
                                progress=progress, min_positives=min_positives)
    out["chronic"] = chronic_markdown(rows, best, num_samples=num_samples, seed=seed)
    for name, write in (("chronic_table.md", lambda p: _write_text(p, out["chronic"])),
                        ("chronic_table.csv", lambda p: chronic_csv(rows, best, p))):
      write(os.path.join(output_dir, name))
      out["files"].append(name)
    if plots:
      out["files"].append(plots_lib.calibration_plot(rows, output_dir))
      out["files"].append(plots_lib.auroc_plot(rows, output_dir))
  return out
