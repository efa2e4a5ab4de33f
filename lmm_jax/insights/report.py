"""The insights report: WORKDIR/insights.md with PNG plots beside it.

    path = write_insights_report(workdir, finetune_workdir, data_dir)

Sections: per-member explanations of the fine-tuned model's predictions (integrated gradients on
the input embeddings, checked against occlusion), code-embedding neighbours and a 2-D map,
condition relationships (the chronic model's counterfactual lift against the empirical lift, with
bootstrap intervals, ranked by their lower bound, with the expected false count), on the synthetic
world the recovery of its true comorbidity links, the risk factors of every head
(`risk_factors`), and with `compare_to` their stability across training seeds. Members appear only as
anonymous ranks ("member #1") with banded figures (dollars, age, days before the index date;
`lmm_jax.report.privacy`); any cell built from fewer than 11 members (a co-occurrence count, a
lift over a small group) is suppressed, in the tables and the plots. The report and everything
per member stay under the workdir, and nothing about a member is printed or logged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Sequence

import numpy as np
import tqdm

from lmm_jax import conditions
from lmm_jax.data import records
from lmm_jax.insights import attribution
from lmm_jax.insights import embeddings as emb_lib
from lmm_jax.insights import interventions
from lmm_jax.insights import loading
from lmm_jax.insights import relationships as rel
from lmm_jax.insights import risk_factors as rf_lib
from lmm_jax.insights import uncertainty as unc
from lmm_jax.report import plots
from lmm_jax.report import privacy

REPORT_NAME = "insights.md"
SYNTHETIC_DATASET_NAME = "lmm_jax_synthetic_claims"
BATCH_SIZE = 16
_AGE_TOKEN = re.compile(r"\bage (\d+)\b")


@dataclasses.dataclass
class _Progress:
  enabled: bool

  def bar(self, iterable, desc: str, total: int | None = None):
    if not self.enabled:
      return iterable
    return tqdm.tqdm(iterable, desc=desc, total=total)


def _predict(predictor: loading.Predictor, rows: Sequence[dict[str, np.ndarray]], name: str,
             progress: _Progress, desc: str) -> np.ndarray:
  """outputs[name] for every row, in fixed-size batches (one compilation)."""
  out = []
  for s in progress.bar(range(0, len(rows), BATCH_SIZE), desc,
                        total=-(-len(rows) // BATCH_SIZE)):
    chunk = list(rows[s:s + BATCH_SIZE])
    n = len(chunk)
    chunk += [chunk[-1]] * (BATCH_SIZE - n)
    out.append(predictor.outputs(loading.stack(chunk))[name][:n])
  return np.concatenate(out)


def is_synthetic(data_dir: str) -> bool:
  """True when the records were built from the lmm_jax synthesizer's MEDS output."""
  try:
    with open(os.path.join(data_dir, records.REPORT_FILE), encoding="utf-8") as f:
      meds_dir = json.load(f)["meds_dir"]
    with open(os.path.join(meds_dir, "metadata", "dataset.json"), encoding="utf-8") as f:
      return json.load(f).get("dataset_name") == SYNTHETIC_DATASET_NAME
  except (OSError, KeyError, ValueError):
    return False


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  def cell(v):
    if isinstance(v, float):
      return "n/a" if not np.isfinite(v) else f"{v:.3g}"
    return str(v).replace("|", "/")
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Sections.


def _explanations(predictor, task, rows, workdir, progress, *, num_members: int, ig_steps: int,
                  head: str) -> tuple[list[str], dict[str, Any]]:
  """Explains the highest-risk members' predictions; returns markdown lines and a summary.

  head: the task (`RISK_HEADS`); 'chronic' explains each member's likeliest new condition, the
  others their one scalar output.
  """
  vocab = task.vocab
  cond_names = conditions.CONDITION_NAMES
  is_cost = head == "cost"
  scalar = head != "chronic"
  if scalar:
    out_name = RISK_HEADS[head].output
    pred = _predict(predictor, rows, out_name, progress, f"predict {out_name}")
    order = np.argsort(-pred, kind="stable")[:num_members]
    targets = [attribution.Output(out_name)] * len(order)
    what = ("predicted mean cost in the next 12 months (dollars)" if is_cost else
            f"{RISK_HEADS[head].labels[0]} of {RISK_HEADS[head].title}")
  else:
    prob = _predict(predictor, rows, "chronic_prob", progress, "predict conditions")
    prior = np.stack([r["cond_prior"] for r in rows]) > 0
    at_risk = np.where(prior, -1.0, prob)           # new onsets only: prevalent codes are trivial
    best_c = at_risk.argmax(1)
    order = np.argsort(-at_risk.max(1), kind="stable")[:num_members]
    targets = [int(best_c[i]) for i in order]
    what = "predicted probability of a new onset of the condition named, in the next 12 months"
  lines = ["## 1. Why these members are predicted high-risk", "",
           f"The {len(order)} held-out members with the highest {what} (out of {len(rows)} "
           "examined), as anonymous ranks. Each history event (a claim: its type, place, "
           "codes and cost bin) gets the summed integrated-gradients attribution of its tokens "
           f"({ig_steps} steps; baseline: every event token replaced by [PAD], demographics and "
           "timing kept), in units of the prediction; 'occlusion' is the change when the event "
           "is deleted from the history and the model re-run.", ""]
  gaps, agree = [], []
  member_dir = os.path.join(workdir, "insights_members")
  os.makedirs(member_dir, exist_ok=True)
  for rank, (i, target) in enumerate(zip(order, targets), start=1):
    row = rows[i]
    batch = loading.stack([row])
    mask = attribution.history_mask(batch["length"], batch["prefix_len"], len(row["tokens"]))
    if scalar:
      ig = attribution.integrated_gradients(predictor, batch, mask, target, steps=ig_steps)
    else:
      # One compiled attribution for every condition: a one-hot weight picks the member's.
      onehot = np.eye(conditions.NUM_CONDITIONS, dtype=np.float32)[[target]]
      ig = attribution.integrated_gradients(predictor, batch, mask,
                                            attribution.Output("chronic_prob"),
                                            weights_BxO=onehot, steps=ig_steps)
      target = attribution.Output("chronic_prob", target)
    groups = attribution.event_groups(row["tokens"], vocab.kinds, vocab.systems,
                                      int(row["prefix_len"]), int(row["length"]),
                                      bos_id=vocab.bos_id, eos_id=vocab.eos_id)
    ig_events = attribution.aggregate_events(ig.attributions_BxL[0], groups)
    occ_events, _ = attribution.occlusion(predictor, row, groups, target,
                                          batch_size=BATCH_SIZE)
    gap = float(ig.completeness_gap_B[0])
    gaps.append(abs(gap) / max(abs(float(ig.score_B[0] - ig.baseline_score_B[0])), 1e-9))
    if len(ig_events) > 2 and np.std(ig_events) > 0 and np.std(occ_events) > 0:
      agree.append(float(np.corrcoef(ig_events, occ_events)[0, 1]))
    top = attribution.describe_events(row["tokens"], groups, ig_events, row["days_before_index"],
                                      vocab.describe, vocab.kinds, top=8)
    score, base = float(ig.score_B[0]), float(ig.baseline_score_B[0])
    if is_cost:
      title = (f"### Member #{rank}: predicted {privacy.dollar_band(score)} (history-free "
               f"baseline {privacy.dollar_band(base)}); actual next-year cost "
               f"{privacy.dollar_band(float(row['cost_next']))}")
    elif scalar:
      title = f"### Member #{rank}: {RISK_HEADS[head].labels[0]} {score:.3f} (baseline {base:.3f})"
    else:
      c = target.index
      title = (f"### Member #{rank}: P(new {cond_names[c]}) = {score:.3f} (baseline {base:.3f});"
               f" coded next year: {'yes' if row['cond_next'][c] else 'no'}")
    lines += [title, "", f"Age {privacy.age_band(float(row['age_at_index']))}, "
              f"{int(row['length'])} history "
              f"tokens in {len(ig_events)} events; attributions sum to {ig_events.sum():+.4g} vs "
              f"F(x) - F(baseline) = {score - base:+.4g}.", ""]
    table = [(e.event, privacy.days_band(e.days_before_index), e.contribution,
              float(occ_events[e.event]), _band_ages(e.text)[:160]) for e in top]
    lines += [_md_table(("event", "days before index", "IG", "occlusion", "event"), table), ""]
    plot = _event_plot(top, os.path.join(member_dir, f"member_{rank:02d}.png"),
                       f"Member #{rank}: top events")
    lines += [f"![member {rank}]({os.path.relpath(plot, workdir)})", ""]
  summary = {"members": len(order),
             "median_relative_completeness_gap": float(np.median(gaps)) if gaps else float("nan"),
             "median_ig_occlusion_correlation": float(np.median(agree)) if agree else float("nan")}
  lines += [f"Integrated-gradients completeness: median |sum(attr) - (F(x) - F(x'))| / "
            f"|F(x) - F(x')| = {summary['median_relative_completeness_gap']:.2e}; median "
            f"correlation of per-event IG with occlusion = "
            f"{summary['median_ig_occlusion_correlation']:.2f}.", ""]
  return lines, summary


def _band_ages(text: str) -> str:
  """An event's AGE tokens ('age 67') as bands ('age 65-69')."""
  return _AGE_TOKEN.sub(lambda m: f"age {privacy.age_band(float(m.group(1)))}", text)


def _event_plot(top: Sequence[attribution.EventContribution], path: str, title: str) -> str:
  fig, ax = plots.subplots(figsize=(8, 0.45 * max(len(top), 2) + 1.2))
  labels = [_band_ages(e.text)[:70] for e in top][::-1]
  vals = [e.contribution for e in top][::-1]
  ax.barh(range(len(vals)), vals, color=["tab:red" if v > 0 else "tab:blue" for v in vals])
  ax.set_yticks(range(len(vals)))
  ax.set_yticklabels(labels, fontsize=6)
  ax.axvline(0, color="grey", linewidth=0.8)
  ax.set_xlabel("integrated-gradients attribution")
  ax.set_title(title, fontsize=9)
  return plots.save_png(fig, path, dpi=110)


def _embedding_section(predictor, vocab, workdir, *, method: str, k: int = 8) -> list[str]:
  emb = predictor.embedding_matrix_VxD
  seen = emb_lib.seen_coded_tokens(vocab)
  lines = ["## 2. What the model learned about codes", "",
           "Nearest neighbours (cosine similarity of the input embeddings) among the "
           f"{len(seen)} diagnosis, procedure and drug tokens seen in training.", ""]
  queries = emb_lib.default_queries(vocab)
  for label, q in queries.items():
    nbrs = emb_lib.cosine_neighbours(emb, q, k=k, candidates=seen)
    lines += [f"**{label}** — {vocab.describe(q)}", ""]
    lines += [_md_table(("similarity", "token"), [(s, vocab.describe(i)[:120]) for i, s in nbrs]),
              ""]
  if len(seen) >= 3:
    coords = emb_lib.project_2d(emb[seen], method=method)
    groups = [emb_lib.token_group(vocab, int(i)) for i in seen]
    pos = {int(t): j for j, t in enumerate(seen)}
    labels = {pos[q]: label.split(" (")[0] for label, q in queries.items() if q in pos}
    emb_lib.plot_map(coords, groups, os.path.join(workdir, "insights_embedding_map.png"),
                     labels=labels, title=f"Code embeddings ({method.upper()}), by chapter/system")
    lines += ["![embedding map](insights_embedding_map.png)", ""]
  return lines


def _relationship_section(chronic_predictor, vocab, rows, data_dir, workdir, progress, *,
                          synthetic: bool, threshold: float, num_bootstrap: int, edit: str,
                          reference: str, seed: int) -> tuple[list[str], dict[str, Any]]:
  names = conditions.CONDITION_NAMES
  train_prior, train_next = [], []
  for rec in records.read_records(data_dir, records.TASK, "train"):
    if "cond_prior" not in rec:
      return (["## 3. Relationships between conditions", "",
               "These records carry no chronic-condition labels (`cond_prior`/`cond_next`): "
               "no condition relationships to measure.", ""], {})
    train_prior.append(np.asarray(rec["cond_prior"], np.uint8).reshape(-1))
    train_next.append(np.asarray(rec["cond_next"], np.uint8).reshape(-1))
  prior_TxC, next_TxC = np.stack(train_prior), np.stack(train_next)
  emp = rel.empirical_lift(prior_TxC, next_TxC)
  emp_reps = rel.empirical_lift_replicates(
      prior_TxC, next_TxC, unc.bootstrap_weights(len(prior_TxC), num_bootstrap, seed + 1))
  emp_iv = unc.ratio_interval(emp.lift_CxC, emp_reps)
  edit_text = {"case": "two professional claims coding A on different days (a case under the "
                       "world's CCW rule: a single claim is a rule-out diagnosis)",
               "claim": "one same-day professional claim coding A"}[edit]
  placebo = rel.placebo_tokens(vocab, edit) if reference == "placebo" else []
  if reference == "placebo" and not placebo:
    raise ValueError("lift reference 'placebo' needs a full ICD-10-CM code outside every "
                     "condition in the vocabulary; pass reference='none'")
  ref_text = (f"the mean after the same edit coding {vocab.describe(placebo[-1])[:60]!r} "
              "instead (a negative control: what any such claim does cancels)" if placebo else
              "the unedited mean")
  lines = ["## 3. Relationships between conditions", "",
           "For an ordered pair (A, B) and members at risk of a new B (B not coded before the "
           "index date): the **empirical lift** is P(B next year | A prevalent) / P(B next year | "
           f"A not prevalent) over {len(train_prior)} train members"
           + ("; the **model lift** appends "
              f"{edit_text} to the histories of {len(rows)} held-out members without A and "
              f"divides the chronic model's mean P(B) by {ref_text}"
              if chronic_predictor is not None else "") + ". Intervals: 95% percentile "
           f"bootstrap over members ({num_bootstrap} resamples; paired: the same resampled members "
           "for the edited and unedited histories; one training seed). Pairs are ranked by the "
           "interval's **lower bound**; p-values of 'lift <= 1' (normal on the log scale with the "
           "bootstrap standard error) give Benjamini-Hochberg q-values and the expected number "
           "of false links in the top k (at most m x the largest p-value among them, m tested "
           "pairs). That null is the estimate's own lift = 1: it counts links due to the member "
           "sample, not links the model learned from confounded data.", ""]
  summary: dict[str, Any] = {"num_bootstrap": num_bootstrap, "edit": edit,
                             "reference": reference}
  if chronic_predictor is None:
    lines += ["The model lift needs a chronic-condition fine-tuning run (pass "
              "`chronic_workdir`); only the empirical lifts are shown.", ""]
    ml = model_iv = model_reps = None
  else:
    insert = {c: rel.condition_tokens(vocab, c, edit) for c in range(conditions.NUM_CONDITIONS)}

    def prob_fn(rs):
      return _predict(chronic_predictor, rs, "chronic_prob", _Progress(False), "")

    ml = rel.counterfactual_lift(prob_fn, rows, insert, reference=placebo or None,
                                 progress=progress.enabled)
    model_reps = rel.model_lift_replicates(ml, unc.bootstrap_weights(len(rows), num_bootstrap,
                                                                     seed))
    model_iv = unc.ratio_interval(ml.lift_CxC, model_reps)
    np.savez(os.path.join(workdir, "insights_lifts.npz"), model_lift=ml.lift_CxC,
             model_lower=model_iv.lower, model_upper=model_iv.upper, model_p=model_iv.p_value,
             model_delta=ml.delta_CxC, model_n=ml.n_CxC, empirical_lift=emp.lift_CxC,
             empirical_lower=emp_iv.lower, empirical_upper=emp_iv.upper,
             empirical_n_with=emp.n_with_CxC, empirical_co_occurrence=emp.n_both_CxC,
             conditions=np.array(names))
  truth = rel.true_link_matrix() if synthetic else None
  # Shown figures: NaN (suppressed) where fewer than 11 members stand behind them.
  small_emp = privacy.suppress_mask(emp.n_with_CxC)
  ranked = model_iv if model_iv is not None else emp_iv
  small = privacy.suppress_mask(ml.n_CxC) if ml is not None else small_emp
  lower_shown = np.where(small, np.nan, ranked.lower)
  q = unc.benjamini_hochberg(np.where(small, np.nan, ranked.p_value))
  order = unc.rank_by_lower_bound(lower_shown)
  c = len(names)

  def iv(x, k):
    a, b = divmod(int(k), c)
    return "n/a" if not np.isfinite(x.lower[a, b]) else f"{x.lower[a, b]:.3g}-{x.upper[a, b]:.3g}"

  def pair_row(k) -> list[Any]:
    a, b = divmod(int(k), c)
    out = [names[a], names[b]]
    if model_iv is not None:
      out += [float(model_iv.estimate[a, b]), iv(model_iv, k)]
    out += [float(q[a, b]),
            float(np.where(small_emp, np.nan, emp.lift_CxC)[a, b]),
            iv(emp_iv, k) if not small_emp[a, b] else "n/a",
            privacy.count_cell(int(emp.n_both_CxC[a, b]))]
    return out + ([bool(truth[a, b])] if truth is not None else [])

  header = (["A", "B"] + (["model lift", "95% interval"] if model_iv is not None else [])
            + ["q (BH)", "empirical lift", "95% interval", "co-occurrence"]
            + (["true link"] if truth is not None else []))
  top_n = 15
  top = order[:top_n]
  m_tested = int(np.isfinite(np.where(small, np.nan, ranked.p_value)).sum())
  expected = unc.expected_false(np.where(small, np.nan, ranked.p_value), top)
  disc = {f"q<={a:g}": int((q <= a).sum()) for a in (0.05, 0.1)}
  summary.update({"tested_pairs": m_tested, "expected_false_in_top": expected, "top": len(top),
                  "bh_discoveries": disc})
  which = "model" if model_iv is not None else "empirical"
  lines += [f"The {len(top)} pairs with the highest lower bound of the {which} lift (cells "
            f"from fewer than {privacy.MIN_CELL} members suppressed: n/a, <11). Of these, at most "
            f"**{expected:.1f} are expected to be false** (sampling noise; {m_tested} pairs "
            f"tested); Benjamini-Hochberg keeps {disc['q<=0.05']} pairs at q <= 0.05 and "
            f"{disc['q<=0.1']} at q <= 0.1.", "", _md_table(header, [pair_row(k) for k in top]),
            ""]
  if truth is not None:
    false_top = int(sum(not truth[divmod(int(k), c)] for k in top))
    summary["actual_false_in_top"] = false_top
    lines += [f"Against the synthetic world's truth, {false_top} of these {len(top)} are not "
              "true links (the bound above counts sampling noise only).", ""]
  if model_iv is not None:
    shown_model = np.where(small, np.nan, ml.lift_CxC)
    shown_emp = np.where(small_emp, np.nan, emp.lift_CxC)
    novel = rel.novel_candidates(np.where(small, np.nan, model_iv.lower), emp,
                                 min_model_lift=threshold, truth_CxC=truth)
    lines += ["Candidate novel relationships (lower bound of the model lift >= "
              f"{threshold:g} but at most 5 members with A then a new B, or empirical lift < 1):",
              ""]
    novel_flat = [p.a * c + p.b for p in novel]
    lines += ([_md_table(header, [pair_row(k) for k in novel_flat]), ""] if novel else
              ["(none)", ""])
    _lift_scatter(shown_model, shown_emp, truth, os.path.join(workdir, "insights_lifts.png"))
    lines += ["![model vs empirical lift](insights_lifts.png)", ""]
  _ranked_plot(ranked, lower_shown, order[:25], names, truth,
               os.path.join(workdir, "insights_ranked_links.png"), which)
  lines += ["![ranked links with intervals](insights_ranked_links.png)", ""]
  if truth is not None:
    hr = rel.hazard_ratio_matrix()
    lines += ["## 4. Recovery of the synthetic world's true comorbidity links", "",
              f"The synthesizer's {int(truth.sum())} directed links between target conditions "
              "(A multiplies the onset hazard of B) against each ranking: precision and recall "
              f"of the links with lift >= {threshold:g} (point estimate), precision at k "
              "(k = number of true links) and average precision of the ranking by the point "
              "estimate and by the interval's lower bound, and the Spearman rank correlation of "
              "the estimated lift with the true hazard ratio over the true links. Each lift "
              "also **specificity-adjusted** (`relationships.ADJUSTMENTS`, on the log scale, "
              "the same for both lifts; intervals from the adjusted replicates): *row* divides "
              "by A's geometric-mean lift over every B (an edit that raises every onset is no "
              "evidence of a link to one B), *double* is double centering (row and column "
              "geometric means removed, the grand mean restored).", ""]
    rows_md = []
    variants = []
    for how in rel.ADJUSTMENTS:
      suffix = "" if how == "none" else f", {how}-centred"
      for label, est, reps, sm in (("model (counterfactual)",
                                    None if ml is None else ml.lift_CxC, model_reps, small),
                                   ("empirical", emp.lift_CxC, emp_reps, small_emp)):
        if est is None:
          continue
        # Suppressed cells leave the centring too: they are not shown, so they shape nothing.
        est, reps = np.where(sm, np.nan, est), np.where(sm, np.nan, reps)
        variants.append((label + suffix, unc.ratio_interval(
            rel.specificity_adjust(est, how), rel.specificity_adjust(reps, how)), sm))
    for label, x, sm in variants:
      point = np.where(sm, np.nan, x.estimate)
      lower = np.where(sm, np.nan, x.lower)
      r = rel.recovery(point, truth, threshold=threshold)
      r_lo = rel.recovery(lower, truth, threshold=threshold)
      corr = rel.effect_size_correlation(point, hr)
      r.update({"precision_at_k_lower_bound": r_lo["precision_at_k"],
                "average_precision_lower_bound": r_lo["average_precision"],
                "spearman_vs_hazard_ratio": corr["spearman"], "spearman_n": corr["n"],
                "spearman_p": corr["p_value"]})
      summary[label] = r
      rows_md.append([label, r["precision"], r["recall"], r["precision_at_k"],
                      r["average_precision"], r_lo["precision_at_k"], r_lo["average_precision"],
                      corr["spearman"], r["true_measured"]])
    base = float(truth.sum() / max(1, (~np.eye(c, dtype=bool)).sum()))
    lines += [_md_table(("lift", "precision", "recall", "precision@k", "AP",
                         "precision@k (lower bound)", "AP (lower bound)",
                         "Spearman vs true HR", "true links measured"), rows_md), "",
              f"Base rate (AP of a random ranking): {base:.3f}.", ""]
    _hr_scatter(model_iv, emp_iv, small, small_emp, hr,
                os.path.join(workdir, "insights_effect_vs_truth.png"))
    lines += ["![effect size vs true hazard ratio](insights_effect_vs_truth.png)", ""]
  return lines, summary


def _ranked_plot(x: unc.Interval, lower_CxC, flat, names, truth_CxC, path: str, which: str
                 ) -> str:
  c = len(names)
  pairs = [divmod(int(k), c) for k in flat][::-1]
  fig, ax = plots.subplots(figsize=(7, 0.28 * max(len(pairs), 2) + 1.2))
  for y, (a, b) in enumerate(pairs):
    color = ("tab:red" if truth_CxC[a, b] else "tab:grey") if truth_CxC is not None else "tab:blue"
    ax.plot([x.lower[a, b], x.upper[a, b]], [y, y], color=color, lw=1.5)
    ax.plot([x.estimate[a, b]], [y], "o", color=color, ms=3)
  ax.set_yticks(range(len(pairs)))
  ax.set_yticklabels([f"{names[a]} -> {names[b]}" for a, b in pairs], fontsize=6)
  ax.axvline(1, color="grey", lw=0.7)
  ax.set_xscale("log")
  ax.set_xlabel(f"{which} lift (95% bootstrap interval)")
  ax.set_title("Links ranked by the interval's lower bound"
               + (" (red: true link)" if truth_CxC is not None else ""), fontsize=9)
  return plots.save_png(fig, path)


def _hr_scatter(model_iv, emp_iv, small, small_emp, hr_CxC, path: str) -> str:
  fig, ax = plots.subplots(figsize=(6, 5))
  for x, sm, label, color, dx in ((model_iv, small, "model lift", "tab:red", 0.02),
                                  (emp_iv, small_emp, "empirical lift", "tab:blue", -0.02)):
    if x is None:
      continue
    ok = np.isfinite(hr_CxC) & ~sm & np.isfinite(x.estimate) & np.isfinite(x.lower)
    h = hr_CxC[ok] * np.exp(dx)
    ax.errorbar(h, x.estimate[ok], yerr=[x.estimate[ok] - x.lower[ok], x.upper[ok] -
                                          x.estimate[ok]], fmt="o", ms=3, lw=0.8, color=color,
                label=label)
  lim = [1.0, float(np.nanmax(hr_CxC)) * 1.1]
  ax.plot(lim, lim, color="grey", lw=0.7, ls="--")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("true hazard ratio (synthetic world)")
  ax.set_ylabel("estimated lift (95% interval)")
  ax.legend(fontsize=8)
  ax.set_title("Effect size vs truth, true links")
  return plots.save_png(fig, path)


def _lift_scatter(model_CxC, emp_CxC, truth_CxC, path: str) -> str:
  ok = np.isfinite(model_CxC) & np.isfinite(emp_CxC) & (model_CxC > 0) & (emp_CxC > 0)
  fig, ax = plots.subplots(figsize=(6, 5))
  if truth_CxC is None:
    ax.scatter(emp_CxC[ok], model_CxC[ok], s=10)
  else:
    for mask, label, color in ((ok & ~truth_CxC, "no true link", "tab:grey"),
                               (ok & truth_CxC, "true link", "tab:red")):
      ax.scatter(emp_CxC[mask], model_CxC[mask], s=12, label=label, color=color)
    ax.legend(fontsize=8)
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.axhline(1, color="grey", lw=0.7)
  ax.axvline(1, color="grey", lw=0.7)
  ax.set_xlabel("empirical lift of new B given prevalent A")
  ax.set_ylabel("model lift (add A to the history)")
  ax.set_title("Condition pairs (A -> B)")
  return plots.save_png(fig, path)


@dataclasses.dataclass(frozen=True)
class _Head:
  """A head whose risk factors are measured: the predictor output and what it means."""
  title: str                     # 'next-year cost'
  output: str                    # the predictor's named output (dollars or probabilities)
  labels: tuple[str, ...]        # one per output column
  at_risk: bool                  # count only members without the condition (onset heads)


# Task -> the head measured for risk factors (a registry: add a task's head here).
RISK_HEADS: dict[str, _Head] = {
    "cost": _Head("next-year cost", "cost", ("predicted next-year cost",), False),
    "chronic": _Head("new onset of each chronic condition", "chronic_prob",
                     conditions.CONDITION_NAMES, True),
    "binary": _Head("the task's binary label", "binary_prob", ("predicted probability",), False),
}


def _risk_factor_section(heads, vocab, rows, workdir, progress, *, per_kind: int,
                         num_bootstrap: int, seed: int, top: int = 10
                         ) -> tuple[list[str], dict[str, Any]]:
  """Section 5: counterfactual risk factors of every head (`risk_factors`)."""
  cands = rf_lib.candidates(vocab, per_kind=per_kind)
  lines = ["## 5. Risk factors of any kind", "",
           f"For {len(cands)} candidate events (the {per_kind} most frequent train tokens of each "
           "kind: diagnoses, procedures, drugs, other codes, each appended as one claim; and "
           "utilization events: a claim of that type and its place of service, no diagnosis) "
           f"appended to the histories of {len(rows)} held-out members: the ratio of the head's "
           "mean output with the event to its mean without (onset heads: members without the "
           "condition only), with a paired 95% bootstrap interval over members "
           f"({num_bootstrap} resamples), ranked by the lower bound. 'members with it' counts "
           "the sampled members whose history already holds the token (<11 suppressed); a "
           "head's output counted on fewer than 11 members is not shown.", ""]
  summary: dict[str, Any] = {"candidates": len(cands), "members": len(rows)}
  for name, predictor, head in heads:
    def outputs_fn(rs, predictor=predictor, head=head):
      return _predict(predictor, rs, head.output, _Progress(False), "")

    counted = None
    if head.at_risk:
      counted = ~(np.stack([np.asarray(r["cond_prior"]) for r in rows]) > 0)
    res = rf_lib.risk_factors(outputs_fn, rows, cands, counted_NxO=counted,
                              num_bootstrap=num_bootstrap, seed=seed + 2,
                              progress=progress.enabled)
    lines += [f"### Risk factors of {head.title} ({name} model)", ""]
    table, kept = [], {}
    for o, label in enumerate(head.labels):
      if privacy.is_small(int(res.members_counted_O[o])) or res.members_counted_O[o] == 0:
        continue
      order = rf_lib.top_factors(res, o, top=top if len(head.labels) == 1 else 3)
      kept[label] = [{"kind": cands[k].kind, "event": cands[k].description,
                      "ratio": float(res.ratio.estimate[k, o]),
                      "lower": float(res.ratio.lower[k, o]),
                      "upper": float(res.ratio.upper[k, o])} for k in order]
      for k in order:
        table.append(([label] if len(head.labels) > 1 else []) + [
            cands[k].kind, cands[k].description[:90], float(res.ratio.estimate[k, o]),
            f"{res.ratio.lower[k, o]:.3g}-{res.ratio.upper[k, o]:.3g}",
            float(res.delta_KxO[k, o]), privacy.count_cell(int(res.members_with_K[k]))])
    summary[name] = kept
    np.savez(os.path.join(workdir, f"insights_risk_factors_{name}.npz"),
             estimate=res.ratio.estimate, lower=res.ratio.lower, upper=res.ratio.upper,
             p_value=res.ratio.p_value, members_with=res.members_with_K,
             members_counted=res.members_counted_O, labels=np.array(head.labels),
             events=np.array([f"{c.kind}: {c.description}" for c in cands]))
    header = ((["output"] if len(head.labels) > 1 else []) +
              ["kind", "event", "ratio", "95% interval", "mean change", "members with it"])
    lines += [_md_table(header, table) if table else "(no output counted on enough members)", ""]
    png = f"insights_risk_factors_{name}.png"
    _risk_plot(res, cands, head, os.path.join(workdir, png), top=top)
    lines += [f"![risk factors of {head.title}]({png})", ""]
  return lines, summary


def _risk_plot(res: rf_lib.RiskFactors, cands, head: _Head, path: str, *, top: int) -> str:
  if len(head.labels) == 1:
    order = rf_lib.top_factors(res, 0, top=top)[::-1]
    fig, ax = plots.subplots(figsize=(7, 0.3 * max(len(order), 2) + 1.2))
    for y, k in enumerate(order):
      ax.plot([res.ratio.lower[k, 0], res.ratio.upper[k, 0]], [y, y], color="tab:blue", lw=1.5)
      ax.plot([res.ratio.estimate[k, 0]], [y], "o", color="tab:blue", ms=3)
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([f"{cands[k].kind}: {cands[k].description[:50]}" for k in order],
                       fontsize=6)
    ax.axvline(1, color="grey", lw=0.7)
    ax.set_xlabel(f"ratio of {head.labels[0]} with / without the event (95% interval)")
  else:
    shown = ~privacy.suppress_mask(res.members_counted_O)
    z_KxO = np.log2(np.where(shown[None, :], res.ratio.estimate, np.nan))
    fig, ax = plots.subplots(figsize=(9, 0.22 * len(cands) + 2))
    lim = float(np.nanmax(np.abs(z_KxO))) if np.isfinite(z_KxO).any() else 1.0
    im = ax.imshow(z_KxO, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    sig = (res.ratio.lower > 1) & shown[None, :]
    ys, xs = np.nonzero(sig)
    ax.plot(xs, ys, "k.", ms=2)
    ax.set_xticks(range(len(head.labels)))
    ax.set_xticklabels(head.labels, rotation=90, fontsize=6)
    ax.set_yticks(range(len(cands)))
    ax.set_yticklabels([f"{c.kind}: {c.description[:40]}" for c in cands], fontsize=5)
    fig.colorbar(im, ax=ax, label="log2 ratio (dot: interval above 1)")
  ax.set_title(f"Risk factors of {head.title}", fontsize=9)
  return plots.save_png(fig, path)


def _seed_stability_section(workdir: str, other: str, names: Sequence[str]
                            ) -> tuple[list[str], dict[str, Any]]:
  """Section 6: the risk factors (and lifts) of this report against another report's (the same
  data, another training seed): rank agreement and replication of the intervals above 1."""
  lines = ["## 6. Stability across training seeds", "",
           f"Against the report in `{os.path.abspath(other)}` (another training seed; same data "
           "and member sample): Spearman correlation of the log ratios over the cells both "
           "show, and of the cells whose interval lies above 1 here, the share whose interval "
           "lies above 1 there too.", ""]
  rows, summary = [], {}
  files = [(n, f"insights_risk_factors_{n}.npz") for n in names] + [("lifts", "insights_lifts.npz")]
  for name, fname in files:
    a_path, b_path = os.path.join(workdir, fname), os.path.join(other, fname)
    if not (os.path.exists(a_path) and os.path.exists(b_path)):
      continue
    a, b = np.load(a_path), np.load(b_path)
    est, lo = ("model_lift", "model_lower") if name == "lifts" else ("estimate", "lower")
    r = rf_lib.agreement(a[est], a[lo], b[est], b[lo])
    summary[name] = r
    rows.append([name, r["spearman"], r["cells"], r["above_1_here"], r["replicated_share"]])
  lines += ([_md_table(("figures", "Spearman (log ratio)", "cells", "interval > 1 here",
                        "replicated there"), rows), ""] if rows else
            ["(the other report has none of these figures)", ""])
  return lines, summary


# ------------------------------------------------------------------------------------------------
# Entry point.


def write_insights_report(workdir: str, finetune_workdir: str, data_dir: str | None = None, *,
                          chronic_workdir: str | None = None, split: str = "held_out",
                          num_members: int = 5, max_members: int = 256, ig_steps: int = 32,
                          embedding_method: str = "pca", lift_threshold: float = 1.2,
                          num_bootstrap: int = 200, edit: str = "case",
                          lift_reference: str = "placebo", risk_members: int = 128,
                          risk_tokens_per_kind: int = 6, seed: int = 0,
                          compare_to: str | None = None, progress: bool = True,
                          pretrain_workdir: str | None = None,
                          intervention_sizes: interventions.Sizes | None = None,
                          intervention_max_new_tokens: int = 512) -> str:
  """Writes WORKDIR/insights.md (and its PNGs); returns its path.

  Args:
    workdir: output directory (created).
    finetune_workdir: a fine-tuning run (cost or chronic) whose predictions are explained.
    data_dir: the records (default: the run's config.data_dir).
    chronic_workdir: the chronic run for the relationship section (default: finetune_workdir
      when that is a chronic run).
    split: the members examined (held_out by default).
    num_members: members explained in section 1.
    max_members: members read from the split (predictions, counterfactual lifts).
    ig_steps: integration steps of integrated gradients.
    embedding_method: 'pca' or 'tsne' for the 2-D map.
    lift_threshold: lift at or above which a pair counts as a recovered link.
    num_bootstrap: member resamples of every bootstrap interval.
    edit: how the counterfactual edit codes condition A ('case' or 'claim';
      `relationships.condition_tokens`).
    lift_reference: the model lift's denominator: 'placebo' (the same edit with a diagnosis of
      no condition, `relationships.placebo_tokens`) or 'none' (the unedited history).
    risk_members: the first members of those read on which risk factors are measured (each costs
      one model call per candidate event and head).
    risk_tokens_per_kind: candidate tokens of each kind for the risk factors.
    seed: of the bootstrap resamples.
    compare_to: another insights report's workdir (same data, another training seed): adds the
      seed-stability section.
    progress: tqdm bars.
    pretrain_workdir: a pretraining run: adds the intervention-effects section (sampled futures
      of edited histories; on the synthetic world against the simulator's true effects).
    intervention_sizes, intervention_max_new_tokens: that section's sample sizes and the token
      budget of a future.
  """
  prog = _Progress(progress)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  predictor, task, config = loading.load_finetuned(finetune_workdir, data_dir)
  data_dir = config.data_dir
  is_cost = config.task == "cost"
  if config.task not in RISK_HEADS:
    raise ValueError(f"{finetune_workdir}: task={config.task!r}; the report knows the heads "
                     f"{sorted(RISK_HEADS)}")
  chronic_pred = None
  if chronic_workdir:
    chronic_pred, chronic_task, _ = loading.load_finetuned(chronic_workdir, data_dir)
    if chronic_task.vocab.size != task.vocab.size:
      raise ValueError(f"{chronic_workdir} and {finetune_workdir} use different vocabularies")
  elif config.task == "chronic":
    chronic_pred = predictor
  rows = [r for r in loading.read_rows(data_dir, split, int(config.seq_len), limit=max_members)
          if int(r["length"]) > int(r["prefix_len"])]
  if not rows:
    raise ValueError(f"no {split} task records with history events in {data_dir}")
  synthetic = is_synthetic(data_dir)

  lines = ["# Insights: what the fine-tuned model has learned", "",
           f"Model: `{os.path.abspath(finetune_workdir)}` ({config.task} fine-tuning"
           + (f"; relationships from `{os.path.abspath(chronic_workdir)}`" if chronic_workdir
              else "") + f"); data: `{data_dir}`, split `{split}`"
           + (" (the synthetic world: true links known)." if synthetic else "."), ""]
  summary: dict[str, Any] = {"task": config.task, "split": split, "members_read": len(rows),
                             "synthetic": synthetic}
  expl, s = _explanations(predictor, task, rows, workdir, prog, num_members=num_members,
                          ig_steps=ig_steps, head=config.task)
  lines += expl
  summary["explanations"] = s
  lines += _embedding_section(predictor, task.vocab, workdir, method=embedding_method)
  rel_lines, s = _relationship_section(chronic_pred, task.vocab, rows, data_dir, workdir, prog,
                                       synthetic=synthetic, threshold=lift_threshold,
                                       num_bootstrap=num_bootstrap, edit=edit,
                                       reference=lift_reference, seed=seed)
  lines += rel_lines
  summary["recovery"] = s
  heads = [(config.task, predictor, RISK_HEADS[config.task])]
  if chronic_pred is not None and config.task != "chronic":
    heads.append(("chronic", chronic_pred, RISK_HEADS["chronic"]))
  risk_lines, s = _risk_factor_section(heads, task.vocab, rows[:risk_members], workdir, prog,
                                       per_kind=risk_tokens_per_kind,
                                       num_bootstrap=num_bootstrap, seed=seed)
  lines += risk_lines
  summary["risk_factors"] = s
  if compare_to:
    stab_lines, s = _seed_stability_section(workdir, compare_to, [h[0] for h in heads])
    lines += stab_lines
    summary["seed_stability"] = s
  # --- Intervention effects (lmm_jax.insights.interventions) ----------------------------------
  if pretrain_workdir:
    iv_lines, s = interventions.run_section(
        pretrain_workdir, data_dir, workdir, intervention_sizes or interventions.Sizes(),
        meds_dir=interventions.meds_dir_of(data_dir) if synthetic else None,
        max_new_tokens=intervention_max_new_tokens, split=split)
    lines += iv_lines
    summary["interventions"] = s
  # --------------------------------------------------------------------------------------------
  path = os.path.join(workdir, REPORT_NAME)
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(workdir, "insights_summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1, default=float)
  return path
