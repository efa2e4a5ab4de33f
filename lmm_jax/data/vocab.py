"""The vocabulary: one entry per token, saved as plain JSON (`OUT/vocab.json`).

Each token records its string (`ICD10CM//E11.9`, `AGE//67`, `TIME//30-91d`, `COST//BIN07`), kind
(`lmm_jax.conventions.TokenKind`), system, count on the train split, the raw MEDS codes merged into
it that meet min_code_count (capped; none for [UNK] tokens, which record `folded_codes`, how many
distinct codes they absorb), a readable description, and a numeric value: the mean dollars of a
cost bin, the mean days of a time-gap bucket, or the years of an AGE token. `meta` holds what the tokenizer needs to
rebuild the code -> token mapping (its config, the time-gap edges, the cost-bin edges).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from lmm_jax import conditions
from lmm_jax.conventions import TokenKind, TOKEN_KIND_NAMES
from lmm_jax.data import terminology

PAD, BOS, EOS = "[PAD]", "[BOS]", "[EOS]"
FORMAT = "lmm_jax.vocab/1"
MAX_SOURCES = 20


class Vocabulary:
  """Token table with per-token metadata as numpy arrays (index = token id)."""

  def __init__(self, entries: Sequence[dict[str, Any]], meta: Optional[dict[str, Any]] = None):
    if not entries or entries[0]["token"] != PAD:
      raise ValueError("vocabulary must start with the padding token [PAD] (id 0)")
    self.entries = [dict(e) for e in entries]
    self.meta = dict(meta or {})
    self.tokens: list[str] = [e["token"] for e in self.entries]
    self._ids = {t: i for i, t in enumerate(self.tokens)}
    if len(self._ids) != len(self.tokens):
      raise ValueError("vocabulary has duplicate token strings")
    self.kinds = np.array([TOKEN_KIND_NAMES.index(e["kind"]) for e in self.entries], np.int8)
    self.systems: list[str] = [e.get("system", "") for e in self.entries]
    self.counts = np.array([e.get("count", 0) for e in self.entries], np.int64)
    values = np.array([e.get("value", 0.0) or 0.0 for e in self.entries], np.float64)
    self.cost_value = np.where(self.kinds == TokenKind.COST, values, 0.0).astype(np.float32)
    self.time_gap_days = np.where(self.kinds == TokenKind.TIME, values, 0.0).astype(np.float32)
    is_age = np.array([t.startswith("AGE//") for t in self.tokens])
    self.age_years = np.where(is_age, values, -1).astype(np.int16)
    self.token_conditions = self._conditions()
    self.pad_id = 0
    self._described: dict[int, str] = {}
    self.bos_id = self._ids[BOS]
    self.eos_id = self._ids[EOS]

  def _conditions(self) -> np.ndarray:
    out = np.zeros((len(self.tokens), conditions.NUM_CONDITIONS), np.uint8)
    for i, (tok, system) in enumerate(zip(self.tokens, self.systems)):
      code = tok.partition("//")[2]
      if system == "ICD10CM" and not code.startswith("[") and "-" not in code and len(code) >= 3:
        icd10 = code                     # full code, subcategory or 3-character category
      elif system == "ICD9CM" and not code.startswith("["):
        icd10 = terminology.icd9_to_icd10cm(code) or ""
      else:
        continue
      for c in conditions.conditions_of(icd10):
        out[i, c] = 1
    return out

  @property
  def size(self) -> int:
    return len(self.tokens)

  def __len__(self) -> int:
    return len(self.tokens)

  def padded_size(self, multiple: int) -> int:
    return int(math.ceil(self.size / multiple) * multiple)

  def id_of(self, token: str) -> int:
    try:
      return self._ids[token]
    except KeyError:
      raise KeyError(f"token {token!r} is not in the vocabulary") from None

  def get(self, token: str, default: Optional[int] = None) -> Optional[int]:
    return self._ids.get(token, default)

  def __contains__(self, token: str) -> bool:
    return token in self._ids

  def ids_of_kind(self, kind: TokenKind) -> np.ndarray:
    return np.flatnonzero(self.kinds == kind)

  def describe(self, token_id: int) -> str:
    """A readable description: 'ICD10CM E11.9 Type 2 diabetes mellitus without complications'."""
    token_id = int(token_id)
    if not 0 <= token_id < self.size:
      return f"<id {token_id} out of range>"
    if token_id not in self._described:
      self._described[token_id] = self._describe(token_id)
    return self._described[token_id]

  def _describe(self, token_id: int) -> str:
    e = self.entries[token_id]
    tok = e["token"]
    desc = e.get("description", "")
    if e["kind"] in ("time", "cost") or tok.startswith(("AGE//", "[")):
      return desc or tok
    system, _, code = tok.partition("//")
    label = f"{system} {code}" if system else tok
    return f"{label} {desc}".strip()

  def decode(self, ids: Iterable[int]) -> list[str]:
    """Token ids -> readable lines, one per claim (or special event), e.g.

    '+30-91d | CLAIM OUTPATIENT | ICD10CM E11.9 Type 2 diabetes ... | cost $120-$250'.
    Padding is skipped.
    """
    lines: list[str] = []
    cur: list[str] = []
    cur_has_event = False
    for i in ids:
      i = int(i)
      if i == self.pad_id:
        continue
      kind = int(self.kinds[i]) if 0 <= i < self.size else -1
      text = self.describe(i)
      new_line = (kind == TokenKind.TIME or i in (self.bos_id, self.eos_id) or
                  (kind == TokenKind.CLAIM and self.systems[i] == "CLAIM" and cur_has_event) or
                  kind == TokenKind.DEATH)
      if new_line and cur:
        lines.append(" | ".join(cur))
        cur, cur_has_event = [], False
      cur.append(text)
      if kind not in (TokenKind.TIME, TokenKind.SPECIAL) and not self.tokens[i].startswith("AGE//"):
        cur_has_event = True
    if cur:
      lines.append(" | ".join(cur))
    return lines

  def to_json(self) -> dict[str, Any]:
    return {"format": FORMAT, "size": self.size, "meta": self.meta, "tokens": self.entries}

  def save(self, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(self.to_json(), f, indent=1, sort_keys=True)
      f.write("\n")
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str) -> "Vocabulary":
    if os.path.isdir(path):
      path = os.path.join(path, "vocab.json")
    with open(path) as f:
      data = json.load(f)
    if data.get("format") != FORMAT:
      raise ValueError(f"{path}: not an lmm_jax vocabulary (format {data.get('format')!r})")
    return cls(data["tokens"], data.get("meta", {}))
