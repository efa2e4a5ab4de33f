"""Memorization audit of synthetic timelines against the training data.

Compared on event tokens (the timeline after its demographic prefix, without [BOS]/[EOS]/[PAD]):
  exact_share      share of synthetic timelines of at least `ngram` event tokens equal to some train
                   timeline's event tokens (all train timelines): a shorter timeline carries less
                   than the run that counts as copying below, and its codes each occur at least
                   k times in train (the rare-code check), so its copy identifies nobody (short
                   routine timelines, an enrolment and a visit, recur among patients);
                   `exact_share_any` counts copies of every length and is reported beside it
  ngram_share      share sharing at least one exact run of `ngram` event tokens with a reference
                   set; computed against train and against held-out references of EQUAL size, so
                   `ngram_excess` = train - held-out isolates copying from routine sequences that any
                   patient shares (monthly refills)
  nearest-neighbour Jaccard distance over sets of medical tokens (diagnosis, procedure, drug,
                   other) to the closest train and the closest held-out reference;
                   `closer_to_train` = share nearer to train than to held-out (ties count half;
                   about 0.5 when the model generalizes)
  rare_codes       generated code tokens (`decode.CODE_KINDS`) that occur fewer than
                   `min_train_count` times in the train timelines, and [UNK] tokens (they stand
                   for codes below the builder's count): a rare code can identify its patient
The audit fails when exact_share > max_exact_share, ngram_excess > max_ngram_excess,
closer_to_train > max_closer_to_train or any rare code was generated (rare_codes > 0).
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Sequence

import numpy as np

from lmm_jax.conventions import TokenKind
from lmm_jax.data import records
from lmm_jax.sampling import decode

AUDIT_FILE = "memorization_audit"
_MEDICAL = (TokenKind.DIAGNOSIS, TokenKind.PROCEDURE, TokenKind.DRUG, TokenKind.OTHER)
_HASH_BASE = np.uint64(1_000_003)


def event_tokens(tokens: np.ndarray, prefix_len: int, special_ids: np.ndarray) -> np.ndarray:
  t = np.asarray(tokens, np.int64)[int(prefix_len):]
  return t[~np.isin(t, special_ids)]


def ngram_hashes(seq: np.ndarray, n: int) -> np.ndarray:
  """uint64 polynomial hashes of every window of n tokens (wrapping arithmetic)."""
  if len(seq) < n:
    return np.zeros(0, np.uint64)
  win = np.lib.stride_tricks.sliding_window_view(seq.astype(np.uint64) + np.uint64(1), n)
  powers = _HASH_BASE ** np.arange(n - 1, -1, -1, dtype=np.uint64)
  with np.errstate(over="ignore"):
    return (win * powers[None, :]).sum(axis=1, dtype=np.uint64)


def _ngram_set(seqs: Iterable[np.ndarray], n: int) -> np.ndarray:
  parts = [ngram_hashes(s, n) for s in seqs]
  return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)


def _shares_ngram(seqs: Sequence[np.ndarray], ref: np.ndarray, n: int) -> np.ndarray:
  return np.array([bool(np.isin(ngram_hashes(s, n), ref).any()) for s in seqs])


def _token_sets(seqs: Sequence[np.ndarray], medical_V: np.ndarray) -> np.ndarray:
  m = np.zeros((len(seqs), medical_V.size), np.float32)
  for i, s in enumerate(seqs):
    s = s[medical_V[s]]
    m[i, s] = 1.0
  return m


def nearest_jaccard(a_GxV: np.ndarray, b_RxV: np.ndarray, chunk: int = 256) -> np.ndarray:
  """Distance 1 - |A n B| / |A u B| from each row of a to its nearest row of b (1 when empty)."""
  size_b = b_RxV.sum(axis=1)
  out = np.ones(a_GxV.shape[0], np.float64)
  for lo in range(0, a_GxV.shape[0], chunk):
    a = a_GxV[lo:lo + chunk]
    inter = a @ b_RxV.T
    union = a.sum(axis=1)[:, None] + size_b[None, :] - inter
    sim = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    out[lo:lo + chunk] = 1.0 - (sim.max(axis=1) if sim.shape[1] else 0.0)
  return out


def load_references(data_dir: str, split: str, special_ids: np.ndarray) -> list[np.ndarray]:
  return [event_tokens(r["tokens"], int(r["prefix_len"]), special_ids)
          for r in records.read_records(data_dir, records.TIMELINE, split)]


def audit(generated: Sequence[np.ndarray], train: Sequence[np.ndarray],
          held_out: Sequence[np.ndarray], vocab: Any, *, ngram: int, reference_patients: int,
          seed: int, max_exact_share: float, max_ngram_excess: float,
          max_closer_to_train: float, min_train_count: int) -> dict[str, Any]:
  """The audit's figures, thresholds, `passed` and the list of `failures` (event-token inputs).

  min_train_count: a generated code token must occur at least this often in train (vocab counts);
  pass the builder's min_code_count (`min_code_count_of(vocab)`) unless a stricter k is wanted.
  """
  if not generated:
    raise ValueError("no synthetic timelines to audit")
  if not train or not held_out:
    raise ValueError(f"the audit needs train ({len(train)}) and held-out ({len(held_out)}) "
                     "timelines")
  rng = np.random.default_rng(seed)
  k = min(reference_patients, len(train), len(held_out))
  train_ref = [train[i] for i in rng.choice(len(train), k, replace=False)]
  held_ref = [held_out[i] for i in rng.choice(len(held_out), k, replace=False)]

  train_exact = {s.tobytes() for s in train if len(s)}
  exact_any = np.array([len(s) > 0 and s.tobytes() in train_exact for s in generated])
  exact = exact_any & np.array([len(s) >= ngram for s in generated])
  ng_train = _shares_ngram(generated, _ngram_set(train_ref, ngram), ngram)
  ng_held = _shares_ngram(generated, _ngram_set(held_ref, ngram), ngram)
  medical_V = np.isin(vocab.kinds, np.array(_MEDICAL, np.int8))
  g = _token_sets(generated, medical_V)
  d_train = nearest_jaccard(g, _token_sets(train_ref, medical_V))
  d_held = nearest_jaccard(g, _token_sets(held_ref, medical_V))
  closer = float(np.mean((d_train < d_held) + 0.5 * (d_train == d_held)))
  # Counts only, never the code strings: the report must not carry what it guards against.
  rare_V = decode.rare_code_mask(vocab, min_train_count)
  rare = [s[rare_V[s]] for s in generated]
  rare_timelines = int(sum(r.size > 0 for r in rare))
  rare_total = int(sum(r.size for r in rare))
  rare_distinct = int(np.unique(np.concatenate(rare)).size) if rare else 0
  res = {
      "synthetic_timelines": len(generated),
      "train_timelines": len(train), "reference_size": k, "ngram": ngram,
      "shorter_than_ngram": int(sum(len(s) < ngram for s in generated)),
      "exact_share": float(exact.mean()),
      "exact_share_any": float(exact_any.mean()),
      "ngram_share_train": float(ng_train.mean()),
      "ngram_share_held_out": float(ng_held.mean()),
      "ngram_excess": float(ng_train.mean() - ng_held.mean()),
      "nn_jaccard_train": {"mean": float(d_train.mean()), "median": float(np.median(d_train)),
                           "p05": float(np.quantile(d_train, 0.05))},
      "nn_jaccard_held_out": {"mean": float(d_held.mean()), "median": float(np.median(d_held)),
                              "p05": float(np.quantile(d_held, 0.05))},
      "closer_to_train": closer,
      "rare_codes": rare_total, "rare_code_tokens": rare_distinct,
      "timelines_with_rare_codes": rare_timelines,
      "thresholds": {"max_exact_share": max_exact_share, "max_ngram_excess": max_ngram_excess,
                     "max_closer_to_train": max_closer_to_train,
                     "min_train_count": int(min_train_count)},
  }
  failures = []
  if res["exact_share"] > max_exact_share:
    failures.append(f"exact_share {res['exact_share']:.3f} > {max_exact_share}")
  if res["ngram_excess"] > max_ngram_excess:
    failures.append(f"ngram_excess {res['ngram_excess']:.3f} > {max_ngram_excess}")
  if closer > max_closer_to_train:
    failures.append(f"closer_to_train {closer:.3f} > {max_closer_to_train}")
  if rare_total:
    failures.append(f"{rare_total} generated codes ({rare_distinct} distinct tokens, in "
                    f"{rare_timelines} timelines) occur fewer than {min_train_count} times in "
                    "train or are [UNK]")
  res["failures"] = failures
  res["passed"] = not failures
  return res


def write_report(res: dict[str, Any], workdir: str) -> dict[str, str]:
  os.makedirs(workdir, exist_ok=True)
  js = os.path.join(workdir, AUDIT_FILE + ".json")
  with open(js, "w") as f:
    json.dump(res, f, indent=2)
  md = os.path.join(workdir, AUDIT_FILE + ".md")
  t, h = res["nn_jaccard_train"], res["nn_jaccard_held_out"]
  with open(md, "w") as f:
    f.write(f"# Memorization audit: {'PASSED' if res['passed'] else 'FAILED'}\n\n"
            f"{res['synthetic_timelines']} synthetic timelines; references: all "
            f"{res['train_timelines']} train timelines (exact match) and {res['reference_size']} "
            "train vs held-out timelines (n-grams, nearest neighbours).\n\n"
            "| check | value | threshold |\n|---|---:|---:|\n"
            f"| reproduces a train timeline of >= {res['ngram']} event tokens exactly | "
            f"{res['exact_share']:.3f} | <= {res['thresholds']['max_exact_share']} |\n"
            f"| reproduces a train timeline of any length exactly | "
            f"{res['exact_share_any']:.3f} | |\n"
            f"| shares a {res['ngram']}-gram with train | {res['ngram_share_train']:.3f} | |\n"
            f"| shares a {res['ngram']}-gram with held-out | {res['ngram_share_held_out']:.3f} | |\n"
            f"| n-gram excess (train - held-out) | {res['ngram_excess']:.3f} | "
            f"<= {res['thresholds']['max_ngram_excess']} |\n"
            f"| nearer to train than to held-out | {res['closer_to_train']:.3f} | "
            f"<= {res['thresholds']['max_closer_to_train']} |\n"
            f"| generated codes rarer than {res['thresholds']['min_train_count']} in train "
            f"or [UNK] | {res['rare_codes']} | 0 |\n\n"
            "| nearest-neighbour Jaccard distance | mean | median | P05 |\n|---|---:|---:|---:|\n"
            f"| to train | {t['mean']:.3f} | {t['median']:.3f} | {t['p05']:.3f} |\n"
            f"| to held-out | {h['mean']:.3f} | {h['median']:.3f} | {h['p05']:.3f} |\n")
    if res["failures"]:
      f.write("\nFailures: " + "; ".join(res["failures"]) + "\n")
  return {"json": js, "md": md}


def min_code_count_of(vocab: Any) -> int:
  """The builder's min_code_count recorded in vocab.json."""
  return int(vocab.meta["tokenizer"]["min_code_count"])


def special_ids(vocab: Any) -> np.ndarray:
  return np.array([vocab.pad_id, vocab.bos_id, vocab.eos_id], np.int64)


__all__ = ["audit", "event_tokens", "load_references", "min_code_count_of", "nearest_jaccard",
           "ngram_hashes", "special_ids", "write_report"]
