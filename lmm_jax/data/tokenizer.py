"""MEDS code strings -> vocabulary tokens, and the vocabulary's construction from train counts.

Two stages. `CodeAnalyzer.analyze(code)` needs no vocabulary: it resolves the code's system (by
the configured regex rules), normalizes it (dotted ICD-10-CM, ICD-9-CM mapped through the GEMs,
11-digit NDC grouped by `drug_grouping`, ...) and gives the row's role in a timeline plus the key
that is counted on train. `Tokenizer` then maps a code to token ids with the built vocabulary: an
ICD-10-CM code becomes its nearest in-vocabulary node among [code, subcategories..., category,
block, chapter] (the vocabulary holds exactly the nodes whose train count, summed over
descendants, reaches `min_code_count`), optionally preceded by its 3-character category token;
codes of other systems become their own token when frequent enough, else the system's [UNK].
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import functools
import math
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from lmm_jax import conventions
from lmm_jax.conventions import TokenKind, TOKEN_KIND_NAMES
from lmm_jax.data import code_systems as cs
from lmm_jax.data import terminology
from lmm_jax.data import vocab as vocab_lib
from lmm_jax.data.code_systems import Role

MAX_AGE = 120
UNK = "[UNK]"
DRUG_GROUPINGS = ("ndc", "ndc9", "hhs_class")
TOKENIZER_CONFIG_KEYS = ("code_system_rules", "min_code_count", "icd10_category_tokens",
                         "map_icd9_to_icd10", "drug_grouping", "cost_code", "time_gap_edges_days")


@dataclasses.dataclass(frozen=True)
class CodeInfo:
  role: int
  system: str
  key: Optional[str] = None       # token string counted on train (ICD-10-CM: the dotted code)
  icd10: Optional[str] = None     # dotted ICD-10-CM code for targets (ICD-9 via the GEMs)
  value: str = ""                 # sex (F/M/UNKNOWN) or line of business


def tokenizer_config(config: Mapping[str, Any]) -> dict[str, Any]:
  """The part of the build config that the code -> token mapping depends on (plain JSON)."""
  out = {k: config[k] for k in TOKENIZER_CONFIG_KEYS}
  out["code_system_rules"] = [list(r) for r in out["code_system_rules"]]
  out["time_gap_edges_days"] = [int(e) for e in out["time_gap_edges_days"]]
  if out["drug_grouping"] not in DRUG_GROUPINGS:
    raise ValueError(f"drug_grouping must be one of {DRUG_GROUPINGS}, got {out['drug_grouping']!r}")
  return out


class CodeAnalyzer:
  """Code string -> CodeInfo (system, role, normalized key); cached per distinct string."""

  def __init__(self, tok_config: Mapping[str, Any]):
    self.config = dict(tok_config)
    self.resolver = cs.CodeResolver(self.config["code_system_rules"])
    self.analyze = functools.lru_cache(maxsize=1_000_000)(self._analyze)

  def _analyze(self, code: str) -> CodeInfo:
    r = self.resolver.resolve(code)
    system, value = r.system, r.code
    if system == cs.ICD9CM:
      code9 = terminology.normalize_icd9(value)
      mapped = terminology.icd9_to_icd10cm(code9)
      if self.config["map_icd9_to_icd10"] and mapped:
        return CodeInfo(Role.DX, cs.ICD10CM, mapped, mapped)
      return CodeInfo(Role.DX, cs.ICD9CM, f"{cs.ICD9CM}//{code9}", mapped)
    if system == cs.ICD10CM:
      dotted = terminology.icd10cm_nearest_valid(value)
      return CodeInfo(Role.DX, cs.ICD10CM, dotted, dotted)
    if system == cs.NDC:
      return CodeInfo(Role.DRUG, cs.NDC, self._drug_key(value))
    if system == cs.GENDER:
      return CodeInfo(Role.GENDER, system, value=cs.sex_of(value))
    if system == cs.BIRTH:
      return CodeInfo(Role.BIRTH, system)
    if system == cs.DEATH:
      return CodeInfo(Role.DEATH, system)
    if system == cs.COST:
      role = Role.COST if value == self.config["cost_code"] else Role.COST_OTHER
      return CodeInfo(role, system)
    if system == cs.ENROLLMENT:
      boundary, _, lob = value.partition("//")
      role = Role.ENROLL_START if boundary == "START" else Role.ENROLL_END
      return CodeInfo(role, system, value=cs.lob_of(lob))
    # Every other system (procedures, claim types, places of service, labs, unmatched codes).
    spec = cs.SYSTEMS[system]
    return CodeInfo(spec.role, system, f"{system}//{spec.key(value)}")

  def _drug_key(self, value: str) -> str:
    ndc11 = cs.normalize_ndc(value)
    if not ndc11:
      return f"{cs.NDC}//{value.upper()}"
    grouping = self.config["drug_grouping"]
    if grouping == "hhs_class":
      cls = terminology.ndc_class(ndc11)
      if cls:
        return f"{cs.NDC}//{cls[0]}"
    if grouping in ("ndc9", "hhs_class"):
      return f"{cs.NDC}//{ndc11[:9]}"
    return f"{cs.NDC}//{ndc11}"


# ---------------------------------------------------------------------------------------------
# Fixed token families.


def time_gap_bounds(edges_days: Sequence[int]) -> np.ndarray:
  """Lower bounds (days) of the time-gap buckets: [1, e1), [e1, e2), ..., [ek, inf)."""
  return np.array(sorted({1} | {int(e) for e in edges_days if int(e) > 1}), np.int64)


def time_gap_labels(edges_days: Sequence[int]) -> list[str]:
  lo = time_gap_bounds(edges_days)
  return [f"{a}-{b}d" for a, b in zip(lo[:-1], lo[1:])] + [f"{lo[-1]}d+"]


def _dollars(x: float) -> str:
  if x >= 1000:
    return f"${x / 1000:.3g}k"
  return f"${x:.3g}" if x < 100 else f"${x:.0f}"


def cost_bin_labels(edges: Sequence[float]) -> list[str]:
  if not len(edges):
    return ["any cost"]
  labels = [f"<{_dollars(edges[0])}"]
  labels += [f"{_dollars(a)}-{_dollars(b)}" for a, b in zip(edges[:-1], edges[1:])]
  labels.append(f">={_dollars(edges[-1])}")
  return labels


def cost_edges_from_sample(costs: np.ndarray, num_bins: int) -> list[float]:
  """Interior quantile edges of claim cost (deduplicated): bins are [e_{i-1}, e_i)."""
  if costs.size == 0 or num_bins < 2:
    return []
  q = np.quantile(costs.astype(np.float64), np.arange(1, num_bins) / num_bins)
  edges = np.unique(np.round(q, 2))
  edges = edges[edges > 0] if edges.size > 1 else edges
  return [float(e) for e in edges]


COST_BIN_SPACINGS = ("log", "quantile")


def log_cost_edges(num_bins: int, low: float, high: float) -> list[float]:
  """Interior edges of num_bins cost bins: [0, low), log-spaced up to high, [high, inf).

  Fixed (no data needed), so a $50k admission never shares a bin with a $900 ER visit: each
  bin spans a factor (high / low) ** (1 / (num_bins - 2)).
  """
  if num_bins < 3 or not 0 < low < high:
    raise ValueError(f"log cost bins need num_cost_bins >= 3 and 0 < cost_bin_low < "
                     f"cost_bin_high, got {num_bins}, {low}, {high}")
  return [float(e) for e in np.round(np.geomspace(low, high, num_bins - 1), 2)]


def cost_edges(spacing: str, num_bins: int, sample: np.ndarray, low: float = 1.0,
               high: float = 500_000.0) -> list[float]:
  """The cost-bin edges of the build config: 'log' (fixed) or 'quantile' (of the train sample)."""
  if spacing == "log":
    return log_cost_edges(num_bins, low, high)
  if spacing == "quantile":
    return cost_edges_from_sample(sample, num_bins)
  raise ValueError(f"cost_bin_spacing={spacing!r}: expected one of {COST_BIN_SPACINGS}")


def _entry(token: str, kind: TokenKind, system: str, description: str = "",
           value: float = 0.0) -> dict[str, Any]:
  return {"token": token, "kind": TOKEN_KIND_NAMES[kind], "system": system, "count": 0,
          "sources": [], "description": description, "value": value}


def build_vocabulary(tok_config: Mapping[str, Any], code_counts: Mapping[str, int],
                     cost_edges: Sequence[float], lobs: Iterable[str]) -> vocab_lib.Vocabulary:
  """The vocabulary from train code counts (raw MEDS code string -> rows). Deterministic.

  Counts, sources and the numeric values (mean cost / gap days) are filled in by `finalize`
  from the tokenized train timelines.
  """
  analyzer = CodeAnalyzer(tok_config)
  min_count = int(tok_config["min_code_count"])
  entries = [_entry(vocab_lib.PAD, TokenKind.SPECIAL, cs.SPECIAL, "padding"),
             _entry(vocab_lib.BOS, TokenKind.SPECIAL, cs.SPECIAL, "start of sequence"),
             _entry(vocab_lib.EOS, TokenKind.SPECIAL, cs.SPECIAL, "end of sequence"),
             _entry("DEATH", TokenKind.DEATH, cs.DEATH, "death")]
  for sex, desc in (("F", "female"), ("M", "male"), ("UNKNOWN", "sex unknown")):
    entries.append(_entry(f"GENDER//{sex}", TokenKind.DEMOGRAPHIC, cs.GENDER, desc))
  for lob in sorted(set(conventions.LINES_OF_BUSINESS) | set(lobs)):
    entries.append(_entry(f"LOB//{lob}", TokenKind.DEMOGRAPHIC, cs.LOB))
  for age in range(MAX_AGE + 1):
    entries.append(_entry(f"AGE//{age}", TokenKind.DEMOGRAPHIC, cs.AGE, f"age {age}", age))
  for label in time_gap_labels(tok_config["time_gap_edges_days"]):
    entries.append(_entry(f"TIME//{label}", TokenKind.TIME, cs.TIME, f"+{label}"))
  for i, label in enumerate(cost_bin_labels(cost_edges)):
    entries.append(_entry(f"COST//BIN{i:02d}", TokenKind.COST, cs.COST, f"cost {label}"))

  # Key counts per system; ICD-10-CM node totals summed over descendants.
  key_counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  icd_counts: collections.Counter = collections.Counter()
  for code in sorted(code_counts):
    info = analyzer.analyze(code)
    n = int(code_counts[code])
    if info.key is None:
      continue
    if info.system == cs.ICD10CM:
      icd_counts[info.key] += n
      for a in terminology.icd10cm_ancestors(info.key):
        icd_counts[a] += n
    else:
      key_counts[info.system][info.key] += n
  icd_nodes = set()
  for code in sorted(code_counts):
    info = analyzer.analyze(code)
    if info.system != cs.ICD10CM or info.key is None:
      continue
    starts = [info.key]
    if tok_config["icd10_category_tokens"]:
      starts.append(terminology.icd10cm_category(info.key))
    for start in starts:
      chain = (start,) + terminology.icd10cm_ancestors(start)
      hit = next((n for n in chain if icd_counts[n] >= min_count), None)
      if hit is not None:
        icd_nodes.add(hit)

  for system in cs.CODED_SYSTEMS:
    kind = cs.SYSTEM_KINDS[system]
    entries.append(_entry(f"{system}//{UNK}", kind, system, f"rare or unknown {system} code"))
    if system == cs.ICD10CM:
      for node in sorted(icd_nodes, key=_icd_sort_key):
        entries.append(_entry(f"{system}//{node}", kind, system,
                              terminology.icd10cm_description(node)))
      continue
    for key in sorted(k for k, n in key_counts[system].items() if n >= min_count):
      entries.append(_entry(key, kind, system, _describe_key(system, key)))
  meta = {"tokenizer": dict(tok_config), "cost_edges": [float(e) for e in cost_edges]}
  return vocab_lib.Vocabulary(entries, meta)


def _icd_sort_key(node: str) -> tuple[int, str]:
  # Chapters ('4', '19') first in numeric order, then blocks and codes alphabetically.
  return (0, f"{int(node):03d}") if node.isdigit() else (1, node)


def _describe_key(system: str, key: str) -> str:
  code = key.partition("//")[2]
  if system == cs.POS:
    return conventions.PLACES_OF_SERVICE.get(code, "place of service")
  if system == cs.ICD9CM:
    return terminology.icd9_description(code)
  if system == cs.NDC:
    if code.startswith("RXC"):
      return terminology.ndc_class_names().get(code, "drug class")
    if len(code) == 9:
      return "NDC labeler and product"
  return ""


class Tokenizer:
  """Code strings -> token ids with a built vocabulary; time-gap, age and cost-bin ids."""

  def __init__(self, vocab: vocab_lib.Vocabulary):
    self.vocab = vocab
    self.config = dict(vocab.meta["tokenizer"])
    self.analyzer = CodeAnalyzer(self.config)
    self.category_tokens = bool(self.config["icd10_category_tokens"])
    self._icd_unk = vocab.id_of(f"{cs.ICD10CM}//{UNK}")
    self.gap_bounds = time_gap_bounds(self.config["time_gap_edges_days"])
    self.gap_ids = np.array([vocab.id_of(f"TIME//{label}") for label in
                             time_gap_labels(self.config["time_gap_edges_days"])], np.int32)
    self.cost_edges = np.array(vocab.meta["cost_edges"], np.float64)
    self.cost_ids = np.array([vocab.id_of(f"COST//BIN{i:02d}")
                              for i in range(len(self.cost_edges) + 1)], np.int32)
    self._gap_bounds = self.gap_bounds.tolist()
    self._gap_ids = self.gap_ids.tolist()
    self._cost_edges = self.cost_edges.tolist()
    self.age_ids = np.array([vocab.id_of(f"AGE//{a}") for a in range(MAX_AGE + 1)], np.int32)
    self._age_ids = self.age_ids.tolist()
    self.sex_ids = {s: vocab.id_of(f"GENDER//{s}") for s in ("F", "M", "UNKNOWN")}
    self.death_id = vocab.id_of("DEATH")
    self.bos_id, self.eos_id = vocab.bos_id, vocab.eos_id
    self.code_token_ids = functools.lru_cache(maxsize=1_000_000)(self._code_token_ids)

  def lob_id(self, lob: str) -> Optional[int]:
    return self.vocab.get(f"LOB//{lob}") if lob else None

  def _icd_node_id(self, start: str) -> int:
    for node in (start,) + terminology.icd10cm_ancestors(start):
      i = self.vocab.get(f"{cs.ICD10CM}//{node}")
      if i is not None:
        return i
    return self._icd_unk

  def _code_token_ids(self, code: str) -> tuple[int, ...]:
    """Token ids a code's row contributes inside its claim (empty for non-token roles)."""
    info = self.analyzer.analyze(code)
    if info.role not in (Role.CLAIM, Role.POS, Role.DX, Role.PROC, Role.DRUG, Role.OTHER):
      return ()
    if info.system == cs.ICD10CM:
      if info.key is None:
        return (self._icd_unk,)
      full = self._icd_node_id(info.key)
      if not self.category_tokens:
        return (full,)
      cat = self._icd_node_id(terminology.icd10cm_category(info.key))
      return (cat,) if cat == full else (cat, full)
    i = self.vocab.get(info.key)
    if i is None:
      i = self.vocab.id_of(f"{info.system}//{UNK}")
    return (i,)

  def gap_token(self, gap_days: int) -> int:
    return self._gap_ids[bisect.bisect_right(self._gap_bounds, gap_days) - 1]

  def gap_index(self, gap_days: int) -> int:
    return bisect.bisect_right(self._gap_bounds, gap_days) - 1

  def cost_index(self, cost: float) -> int:
    return bisect.bisect_right(self._cost_edges, cost)

  def gap_bucket(self, gap_days: np.ndarray) -> np.ndarray:
    return np.searchsorted(self.gap_bounds, gap_days, side="right") - 1

  def cost_bin(self, cost: np.ndarray) -> np.ndarray:
    return np.searchsorted(self.cost_edges, cost, side="right")

  def age_token(self, age_years: int) -> int:
    return self._age_ids[min(max(int(age_years), 0), MAX_AGE)]


def finalize(vocab: vocab_lib.Vocabulary, token_counts: np.ndarray, cost_sums: np.ndarray,
             cost_counts: np.ndarray, gap_sums: np.ndarray, gap_counts: np.ndarray,
             code_counts: Mapping[str, int]) -> vocab_lib.Vocabulary:
  """Fills counts (train timeline occurrences), sources and mean cost / gap values.

  A token's `sources` are the raw code strings merged into it that occur at least
  `min_code_count` times on train: a rarer string (a mistyped name, an identifier in a code
  column) is never stored. `[UNK]` tokens get no sources, only `folded_codes`, the number of
  distinct raw codes mapped to them.
  """
  tok = Tokenizer(vocab)
  min_count = int(tok.config["min_code_count"])
  entries = [dict(e) for e in vocab.entries]
  for i, e in enumerate(entries):
    e["count"] = int(token_counts[i])
  # A bin no train claim fell in is worth its geometric midpoint (zero-shot may still sample it).
  edges = tok.cost_edges.tolist()
  for b, i in enumerate(tok.cost_ids):
    lo_e = edges[b - 1] if b > 0 else 0.0
    hi_e = edges[b] if b < len(edges) else lo_e
    empty = math.sqrt(lo_e * hi_e) if lo_e > 0 else hi_e / 2
    entries[i]["value"] = float(cost_sums[b] / cost_counts[b]) if cost_counts[b] else empty
  for b, i in enumerate(tok.gap_ids):
    entries[i]["value"] = float(gap_sums[b] / gap_counts[b]) if gap_counts[b] else 0.0
  unk = {i for i, t in enumerate(vocab.tokens) if t.endswith(f"//{UNK}")}
  folded: collections.Counter = collections.Counter()
  sources: dict[int, list[tuple[int, str]]] = collections.defaultdict(list)
  for code in sorted(code_counts):
    for i in set(tok.code_token_ids(code)):
      if i in unk:
        folded[i] += 1
      elif int(code_counts[code]) >= min_count:
        sources[i].append((-int(code_counts[code]), code))
  for i in unk:
    entries[i]["folded_codes"] = int(folded[i])
  for i, lst in sources.items():
    entries[i]["sources"] = [c for _, c in sorted(lst)[:vocab_lib.MAX_SOURCES]]
  return vocab_lib.Vocabulary(entries, vocab.meta)
