"""The learned code embeddings: nearest neighbours and a 2-D map.

Neighbours are by cosine similarity of the input embedding rows, among tokens seen on train. The
map projects the embeddings of the coded tokens (diagnoses, procedures, drugs) to 2-D by PCA
(deterministic) or t-SNE, coloured by the ICD-10-CM chapter of diagnoses and by the terminology
system of the others.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Sequence

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from lmm_jax.conventions import TokenKind
from lmm_jax.data import terminology
from lmm_jax.report import plots

CODED_KINDS = (TokenKind.DIAGNOSIS, TokenKind.PROCEDURE, TokenKind.DRUG)


@dataclasses.dataclass
class Neighbour:
  token_id: int
  similarity: float
  text: str


def cosine_neighbours(emb_VxD: np.ndarray, query: int, *, k: int = 8,
                      candidates: np.ndarray | None = None) -> list[tuple[int, float]]:
  """The k most cosine-similar rows to row `query` (itself excluded), among `candidates`."""
  emb = np.asarray(emb_VxD, np.float64)
  norms = np.linalg.norm(emb, axis=1)
  norms = np.where(norms > 0, norms, 1.0)
  sims = emb @ emb[query] / (norms * norms[query])
  pool = np.arange(len(emb)) if candidates is None else np.asarray(candidates)
  pool = pool[pool != query]
  order = pool[np.argsort(-sims[pool], kind="stable")[:k]]
  return [(int(i), float(sims[i])) for i in order]


def find_token(vocab, spellings: Sequence[str]) -> int | None:
  """The first of `spellings` present in the vocabulary (exact token strings)."""
  for s in spellings:
    i = vocab.get(s)
    if i is not None:
      return int(i)
  return None


def find_by_description(vocab, words: Sequence[str], kind: TokenKind) -> int | None:
  """The most frequent token of `kind` whose description mentions any of `words`."""
  best, best_count = None, -1
  for i in vocab.ids_of_kind(kind):
    desc = vocab.describe(int(i)).lower()
    if any(w in desc for w in words) and vocab.counts[i] > best_count:
      best, best_count = int(i), int(vocab.counts[i])
  return best


def default_queries(vocab) -> dict[str, int]:
  """Codes to show neighbours of: type 2 diabetes, heart failure, a statin, and more if present."""
  out: dict[str, int] = {}
  choices = {
      "type 2 diabetes (E11)": ["ICD10CM//E11", "ICD10CM//E11.9"],
      "heart failure (I50)": ["ICD10CM//I50", "ICD10CM//I50.9", "ICD10CM//I50.22"],
      "COPD (J44)": ["ICD10CM//J44", "ICD10CM//J44.9"],
      "breast cancer (C50)": ["ICD10CM//C50", "ICD10CM//C50.919"],
  }
  for label, spellings in choices.items():
    i = find_token(vocab, spellings)
    if i is not None:
      out[label] = i
  statin = find_by_description(vocab, ("statin",), TokenKind.DRUG)
  if statin is not None:
    out["a statin (drug)"] = statin
  insulin = find_by_description(vocab, ("insulin",), TokenKind.DRUG)
  if insulin is not None:
    out["insulin (drug)"] = insulin
  if not out:  # an unfamiliar vocabulary: its most frequent diagnosis
    dx = vocab.ids_of_kind(TokenKind.DIAGNOSIS)
    if len(dx):
      out["most frequent diagnosis"] = int(dx[np.argmax(vocab.counts[dx])])
  return out


def seen_coded_tokens(vocab, min_count: int = 1) -> np.ndarray:
  """Ids of diagnosis, procedure and drug tokens seen at least min_count times on train."""
  kinds = np.asarray(vocab.kinds)
  coded = np.isin(kinds, [int(k) for k in CODED_KINDS])
  unk = np.array(["[UNK]" in t for t in vocab.tokens])
  return np.flatnonzero(coded & ~unk & (np.asarray(vocab.counts) >= min_count))


@functools.lru_cache(maxsize=200_000)
def _icd_chapter(code: str) -> str:
  if code.isdigit():          # a chapter token itself
    return code
  dotted = terminology.icd10cm_valid(code)
  if dotted is None:          # a block ('E08-E13'): its first code's chapter
    first = terminology.icd10cm_valid(code.split("-")[0])
    if first is None:
      return "?"
    dotted = first
  ancestors = terminology.icd10cm_ancestors(dotted)
  return ancestors[-1] if ancestors else "?"


def token_group(vocab, token_id: int) -> str:
  """'ICD-10-CM ch. 9' for diagnoses (by chapter), the terminology system for other tokens."""
  system = vocab.systems[token_id]
  if system == "ICD10CM":
    code = vocab.tokens[token_id].partition("//")[2]
    return f"ICD-10-CM ch. {_icd_chapter(code)}"
  return system or vocab.tokens[token_id].partition("//")[0]


def project_2d(emb_NxD: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
  """float[N, 2] coordinates (PCA, or t-SNE with a perplexity fitted to N)."""
  x = np.asarray(emb_NxD, np.float64)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # cosine geometry
  if method == "pca":
    return PCA(n_components=2, random_state=seed).fit_transform(x)
  if method == "tsne":
    perplexity = float(max(2.0, min(30.0, (len(x) - 1) / 3.0)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                metric="cosine").fit_transform(x)
  raise ValueError(f"method={method!r}: expected 'pca' or 'tsne'")


def plot_map(coords_Nx2: np.ndarray, groups: Sequence[str], path: str, *,
             labels: dict[int, str] | None = None, title: str = "") -> str:
  """Scatter of the 2-D map, one colour per group (the 12 largest; the rest grey)."""
  groups = np.asarray(groups)
  names, counts = np.unique(groups, return_counts=True)
  top = list(names[np.argsort(-counts, kind="stable")][:12])
  cmap = plots.colormap("tab20")
  fig, ax = plots.subplots(figsize=(8, 6.5))
  other = ~np.isin(groups, top)
  if other.any():
    ax.scatter(coords_Nx2[other, 0], coords_Nx2[other, 1], s=6, c="lightgrey", label="other")
  for j, g in enumerate(top):
    m = groups == g
    ax.scatter(coords_Nx2[m, 0], coords_Nx2[m, 1], s=9, color=cmap(j % 20),
               label=f"{g} ({m.sum()})")
  for i, text in (labels or {}).items():
    ax.annotate(text, coords_Nx2[i], fontsize=7, xytext=(3, 3), textcoords="offset points")
  ax.set_title(title or "Code embeddings (2-D projection)")
  ax.legend(fontsize=6, markerscale=1.5, loc="best")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  return plots.save_png(fig, path)
