"""The insights report: WORKDIR/insights.md with PNG plots beside it.

    path = write_insights_report(workdir, finetune_workdir, data_dir)

Sections: per-member explanations of the fine-tuned model's predictions (integrated gradients on
the input embeddings, checked against occlusion), code-embedding neighbours and a 2-D map,
condition relationships (the chronic model's counterfactual lift against the empirical lift), and
on the synthetic world the recovery of its true comorbidity links. Members appear only as
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
                  is_cost: bool) -> tuple[list[str], dict[str, Any]]:
  """Explains the highest-risk members' predictions; returns markdown lines and a summary."""
  vocab = task.vocab
  cond_names = conditions.CONDITION_NAMES
  if is_cost:
    pred = _predict(predictor, rows, "cost", progress, "predict cost")
    order = np.argsort(-pred, kind="stable")[:num_members]
    targets = [attribution.Output("cost")] * len(order)
    what = "predicted mean cost in the next 12 months (dollars)"
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
    if is_cost:
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
                          synthetic: bool, threshold: float) -> tuple[list[str], dict[str, Any]]:
  names = conditions.CONDITION_NAMES
  train_prior, train_next = [], []
  for rec in records.read_records(data_dir, records.TASK, "train"):
    train_prior.append(np.asarray(rec["cond_prior"], np.uint8).reshape(-1))
    train_next.append(np.asarray(rec["cond_next"], np.uint8).reshape(-1))
  emp = rel.empirical_lift(np.stack(train_prior), np.stack(train_next))
  lines = ["## 3. Relationships between conditions", "",
           "For an ordered pair (A, B) and members at risk of a new B (B not coded before the "
           "index date): the **empirical lift** is P(B next year | A prevalent) / P(B next year | "
           f"A not prevalent) over {len(train_prior)} train members; the **model lift** appends a "
           f"same-day claim coding A to the histories of {len(rows)} held-out members without A "
           "and divides the chronic model's mean P(B) by the unedited mean.", ""]
  summary: dict[str, Any] = {}
  if chronic_predictor is None:
    lines += ["The model lift needs a chronic-condition fine-tuning run (pass "
              "`chronic_workdir`); only the empirical lifts are shown.", ""]
    model_lift = None
  else:
    insert = {c: rel.condition_tokens(vocab, c) for c in range(conditions.NUM_CONDITIONS)}

    def prob_fn(rs):
      return _predict(chronic_predictor, rs, "chronic_prob", _Progress(False), "")

    ml = rel.counterfactual_lift(prob_fn, rows, insert, progress=progress.enabled)
    model_lift = ml.lift_CxC
    np.savez(os.path.join(workdir, "insights_lifts.npz"), model_lift=ml.lift_CxC,
             model_delta=ml.delta_CxC, model_n=ml.n_CxC, empirical_lift=emp.lift_CxC,
             empirical_n_with=emp.n_with_CxC, empirical_co_occurrence=emp.n_both_CxC,
             conditions=np.array(names))
  truth = rel.true_link_matrix() if synthetic else None
  if model_lift is not None:
    # Shown lifts: NaN (suppressed) where fewer than 11 members stand behind them.
    shown_model = np.where(privacy.suppress_mask(ml.n_CxC), np.nan, model_lift)
    shown_emp = np.where(privacy.suppress_mask(emp.n_with_CxC), np.nan, emp.lift_CxC)

    def pair_row(p: rel.Pair) -> list[Any]:
      return ([names[p.a], names[p.b], float(shown_model[p.a, p.b]),
               float(shown_emp[p.a, p.b]), privacy.count_cell(p.co_occurrence)]
              + ([p.true_link] if truth is not None else []))

    top = rel.ranked_pairs(shown_model, emp, truth_CxC=truth, top=15)
    header = ["A", "B", "model lift", "empirical lift", "co-occurrence"] + (
        ["true link"] if truth is not None else [])
    lines += [f"Strongest pairs by model lift (cells from fewer than {privacy.MIN_CELL} members "
              "are suppressed: n/a, <11):", "",
              _md_table(header, [pair_row(p) for p in top]), ""]
    novel = rel.novel_candidates(shown_model, emp, min_model_lift=threshold, truth_CxC=truth)
    lines += ["Candidate novel relationships (model lift >= "
              f"{threshold:g} but at most 5 members with A then a new B, or empirical lift < 1):",
              ""]
    lines += ([_md_table(header, [pair_row(p) for p in novel]), ""] if novel else
              ["(none)", ""])
    _lift_scatter(shown_model, shown_emp, truth, os.path.join(workdir, "insights_lifts.png"))
    lines += ["![model vs empirical lift](insights_lifts.png)", ""]
  if truth is not None:
    lines += ["## 4. Recovery of the synthetic world's true comorbidity links", "",
              f"The synthesizer's {int(truth.sum())} directed links between target conditions "
              "(A multiplies the onset hazard of B) against links predicted as lift >= "
              f"{threshold:g}; precision at k ranks all pairs and takes as many as there are "
              "true links.", ""]
    rows_md = []
    for label, lift in (("model (counterfactual)", model_lift), ("empirical", emp.lift_CxC)):
      if lift is None:
        continue
      r = rel.recovery(lift, truth, threshold=threshold)
      summary[label] = r
      rows_md.append([label, r["precision"], r["recall"], r["precision_at_k"],
                      r["average_precision"], r["num_predicted"], r["true_measured"]])
    lines += [_md_table(("lift", "precision", "recall", "precision@k", "average precision",
                         "predicted links", "true links measured"), rows_md), ""]
  return lines, summary


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


# ------------------------------------------------------------------------------------------------
# Entry point.


def write_insights_report(workdir: str, finetune_workdir: str, data_dir: str | None = None, *,
                          chronic_workdir: str | None = None, split: str = "held_out",
                          num_members: int = 5, max_members: int = 256, ig_steps: int = 32,
                          embedding_method: str = "pca", lift_threshold: float = 1.2,
                          progress: bool = True, pretrain_workdir: str | None = None,
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
  chronic_pred = None
  if chronic_workdir:
    chronic_pred, chronic_task, _ = loading.load_finetuned(chronic_workdir, data_dir)
    if chronic_task.vocab.size != task.vocab.size:
      raise ValueError(f"{chronic_workdir} and {finetune_workdir} use different vocabularies")
  elif not is_cost:
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
                          ig_steps=ig_steps, is_cost=is_cost)
  lines += expl
  summary["explanations"] = s
  lines += _embedding_section(predictor, task.vocab, workdir, method=embedding_method)
  rel_lines, s = _relationship_section(chronic_pred, task.vocab, rows, data_dir, workdir, prog,
                                       synthetic=synthetic, threshold=lift_threshold)
  lines += rel_lines
  summary["recovery"] = s
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
