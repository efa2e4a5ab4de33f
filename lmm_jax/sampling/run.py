"""The generate binary's library: load a pretrained model, predict zero-shot, synthesize, audit.

    result = generate_and_evaluate(config, workdir)   # experiments/configs/generate.py

Returns {'zero_shot': summary or None, 'synthetic': summary or None, 'audit': result or None,
'passed': bool}; `passed` is False when the memorization audit fails (the binary exits 1).
"""

from __future__ import annotations

import json
import os
from typing import Any

from absl import logging
import jax
import ml_collections

from lmm_jax import conventions as conv
from lmm_jax import runs
from lmm_jax import sharding
from lmm_jax.eval import meds_outputs
from lmm_jax.sampling import audit as audit_lib
from lmm_jax.sampling import decode
from lmm_jax.sampling import synthetic
from lmm_jax.sampling import zero_shot
from lmm_jax.tasks.pretrain import PretrainTask

MODES = ("zero_shot", "synthesize", "all")


def _context_len(config: ml_collections.ConfigDict, train_cfg: ml_collections.ConfigDict) -> int:
  if config.sampling.context_len > 0:
    return int(config.sampling.context_len)
  seq = int(train_cfg.seq_len)
  # Keep history + future within the positions seen in training where possible.
  return max(seq - int(config.sampling.max_new_tokens), seq // 2)


def generate_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  if config.mode not in MODES:
    raise ValueError(f"config.mode={config.mode!r}: expected one of {MODES}")
  if not config.init_from:
    raise ValueError("config.init_from is empty: pass --config.init_from=<pretraining workdir>")
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  runs.write_config(workdir, config)
  mesh = sharding.make_mesh(config.mesh_shape, config.mesh_axes)
  rules = tuple(tuple(r) for r in config.logical_rules)
  run = runs.load_run(config.init_from, data_dir=config.data_dir, mesh=mesh, rules=rules,
                      hint=f"config.init_from={config.init_from!r}")
  if not isinstance(run.task, PretrainTask):
    raise ValueError(f"config.init_from={config.init_from!r} is a {run.config.task!r} run; "
                     "sampling needs a pretraining run (its language-model head)")
  vocab, model, num_params, train_cfg = run.task.vocab, run.model, run.num_params, run.config
  logging.info("restored %s parameters from %s (step %d); mesh %s", f"{num_params:,}",
               config.init_from, run.step, dict(mesh.shape))
  s = config.sampling
  # Generation never emits [PAD], [UNK] or a code rarer than the audit's k (docs/generation.md).
  min_count = int(config.audit.min_train_count) or audit_lib.min_code_count_of(vocab)
  banned = decode.banned_token_ids(vocab, min_count)
  out: dict[str, Any] = {"zero_shot": None, "synthetic": None, "audit": None, "passed": True}

  if config.mode in ("zero_shot", "all"):
    sc = decode.SamplingConfig(num_samples=s.num_samples, max_new_tokens=s.max_new_tokens,
                               temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
    sampler = decode.Sampler(model, vocab.time_gap_days, vocab.eos_id, sc,
                             context_len=_context_len(config, train_cfg), mesh=mesh, rules=rules,
                             banned_ids=banned)
    desc = (f"zero-shot: mean of {s.num_samples} sampled 12-month futures (T={s.temperature}, "
            f"top_k={s.top_k}, top_p={s.top_p}) of the pretrained model at step "
            f"{run.step}")
    futures = (meds_outputs.FuturesWriter(os.path.join(workdir, meds_outputs.FUTURES_DIR),
                                          config.split, vocab, int(config.futures_samples))
               if config.futures_samples > 0 else None)
    out["zero_shot"] = zero_shot.run(
        sampler, vocab, data_dir=config.data_dir, split=config.split, workdir=workdir,
        model_name=config.model_name, num_params=num_params, description=desc,
        curve_ns=s.curve_ns, batch_patients=s.batch_patients, seed=config.seed,
        max_patients=s.max_patients, progress=config.progress, on_futures=futures)
    if futures is not None:
      out["zero_shot"]["futures"] = futures.close()
    for row in out["zero_shot"]["curve"]:
      print(f"zero-shot N={row['n']:>3}: NMAE {row['nmae']:.3f}  macro AUROC "
            f"{row['macro_auroc']:.3f}  (new onset {row['macro_auroc_new_onset']:.3f})", flush=True)

  if config.mode in ("synthesize", "all"):
    y = config.synth
    sc = decode.SamplingConfig(num_samples=1, max_new_tokens=y.max_new_tokens,
                               temperature=y.temperature, top_k=y.top_k, top_p=y.top_p)
    sampler = decode.Sampler(model, vocab.time_gap_days, vocab.eos_id, sc, context_len=32,
                             mesh=mesh, rules=rules, banned_ids=banned)
    horizon = float(y.horizon_days) if y.horizon_days > 0 else decode.NO_HORIZON
    cohort = synthetic.generate_cohort(
        _WithHorizon(sampler, horizon), vocab, config.data_dir,
        os.path.join(workdir, "synthetic_meds"), num_patients=y.num_patients, seed=config.seed,
        start_date=y.start_date, split=y.split, first_subject_id=y.first_subject_id,
        batch_patients=max(s.batch_patients * 4, 1))
    out["synthetic"] = cohort["summary"]
    special = audit_lib.special_ids(vocab)
    gen = [audit_lib.event_tokens(q, p, special)
           for q, p in zip(cohort["sequences"], cohort["prefix_lens"])]
    a = config.audit
    res = audit_lib.audit(
        gen, audit_lib.load_references(config.data_dir, conv.TRAIN, special),
        audit_lib.load_references(config.data_dir, conv.HELD_OUT, special), vocab,
        ngram=a.ngram, reference_patients=a.reference_patients, seed=config.seed,
        max_exact_share=a.max_exact_share, max_ngram_excess=a.max_ngram_excess,
        max_closer_to_train=a.max_closer_to_train, min_train_count=min_count)
    res["files"] = audit_lib.write_report(res, workdir)
    out["audit"] = res
    out["passed"] = res["passed"]
    with open(os.path.join(workdir, "synthetic_summary.json"), "w") as f:
      json.dump(cohort["summary"], f, indent=2)
    print(f"synthetic: {y.num_patients} patients, {cohort['summary']['rows']} MEDS rows; "
          f"memorization audit {'passed' if res['passed'] else 'FAILED: ' + '; '.join(res['failures'])}",
          flush=True)
  jax.effects_barrier()
  return out


class _WithHorizon:
  """A sampler whose histories all get the same horizon (synthetic timelines)."""

  def __init__(self, sampler: decode.Sampler, horizon_days: float):
    self.sampler, self.horizon_days = sampler, horizon_days
    self.sc = sampler.sc

  def generate(self, histories, patient_index=None, seed=0):
    for h in histories:
      h.horizon_days = self.horizon_days
    return self.sampler.generate(histories, patient_index=patient_index, seed=seed)
