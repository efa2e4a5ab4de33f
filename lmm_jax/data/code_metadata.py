"""`metadata/codes.parquet` (MEDS CodeMetadataSchema): descriptions and parent codes feeding the
vocabulary.

A raw code of a generic system (LAB, OTHER: what the code-system rules do not resolve further)
is rewritten to one of its `parent_codes` before it is counted and tokenized:

  NDC    always (drug grouping: the NDC token, grouped by `drug_grouping`)   NDC//<ndc>
  LOINC  always (the lab standard; a lab's value bins are then per LOINC)  LAB//LOINC//<loinc>
  RxNorm, ATC, SNOMED  only as a back-off, when the raw code is rarer than min_code_count
         on train and the parent (summed over its children) is not   <SYS>//<code> (an OTHER token)

`codes_parquet_parents` (the builder's config) lists the families and their policy. A code with
no usable parent keeps its own string (its token when frequent, else its system's [UNK]).
Descriptions of raw codes (at least min_code_count train rows) become the description of the
generic or parent token they map to (the most frequent code's), unless it has one already.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional, Sequence

import pyarrow as pa

from lmm_jax.data import code_systems as cs
from lmm_jax.data import tokenizer as tokenizer_lib
from lmm_jax.data import meds_io
from lmm_jax.data.meds_io import MEDSFormatError

CODES_FILE = os.path.join("metadata", "codes.parquet")
ALWAYS, BACKOFF = "always", "backoff"
# family in parent_codes ("NDC/0002..."): (our code spelling, policy). Order = preference.
DEFAULT_PARENTS = (("NDC", "NDC//{}", ALWAYS), ("LOINC", "LAB//LOINC//{}", ALWAYS),
                   ("RxNorm", "RXNORM//{}", BACKOFF), ("ATC", "ATC//{}", BACKOFF),
                   ("SNOMED", "SNOMED//{}", BACKOFF))
GENERIC_SYSTEMS = (cs.LAB, cs.OTHER)


@dataclasses.dataclass
class CodeMetadata:
  description: dict[str, str]             # raw code -> description
  parents: dict[str, tuple[str, ...]]     # raw code -> parent_codes as given ("NDC/0002...")


def read_code_metadata(meds_dir: str) -> Optional[CodeMetadata]:
  """metadata/codes.parquet, or None when absent; an error naming the file and column when a
  column is of the wrong type."""
  path = os.path.join(meds_dir, CODES_FILE)
  if not os.path.exists(path):
    return None
  table = meds_io.read_table(path)
  if "code" not in table.column_names:
    raise MEDSFormatError(path, "required column is missing", "code")
  codes = table.column("code").to_pylist()
  desc: dict[str, str] = {}
  if "description" in table.column_names:
    if not pa.types.is_string(table.schema.field("description").type):
      raise MEDSFormatError(path, "expected strings", "description")
    for c, d in zip(codes, table.column("description").to_pylist()):
      if c and d:
        desc[c] = d
  parents: dict[str, tuple[str, ...]] = {}
  if "parent_codes" in table.column_names:
    typ = table.schema.field("parent_codes").type
    if not (pa.types.is_list(typ) or pa.types.is_large_list(typ)):
      raise MEDSFormatError(path, f"expected a list of strings, got {typ}", "parent_codes")
    for c, ps in zip(codes, table.column("parent_codes").to_pylist()):
      if c and ps:
        parents[c] = tuple(p for p in ps if p)
  return CodeMetadata(desc, parents)


def parent_rules(config_rules: Sequence[Sequence[str]]) -> dict[str, tuple[str, str]]:
  out = {}
  for family, spelling, policy in config_rules:
    if policy not in (ALWAYS, BACKOFF) or "{}" not in spelling:
      raise ValueError(f"codes_parquet_parents entry ({family!r}, {spelling!r}, {policy!r}): "
                       f"the spelling needs '{{}}' and the policy is {ALWAYS!r} or {BACKOFF!r}")
    out[family] = (spelling, policy)
  return out


def _spelled(parent: str, rules: Mapping[str, tuple[str, str]]) -> Optional[tuple[str, str]]:
  family, _, value = parent.partition("/")
  if family not in rules or not value:
    return None
  spelling, policy = rules[family]
  return spelling.format(value.strip()), policy


def code_mapping(meta: Optional[CodeMetadata], counts: Mapping[str, int], analyzer: Any,
                 min_count: int, config_rules: Sequence[Sequence[str]]) -> dict[str, str]:
  """Raw code -> the parent code string it is tokenized as (only codes that change).

  counts: train rows per raw code (pass 1); every code of codes.parquet is mapped, also those
  seen only outside train (count 0). Deterministic: codes and parents in sorted order.
  """
  if meta is None:
    return {}
  rules = parent_rules(config_rules)
  order = {family: i for i, family in enumerate(rules)}
  candidates: dict[str, list[tuple[str, str]]] = {}
  totals: dict[str, int] = {}
  for code in sorted(meta.parents):
    ps = meta.parents[code]
    if analyzer.analyze(code).system not in GENERIC_SYSTEMS:
      continue
    spelled = [s for s in (_spelled(p, rules) for p in sorted(
        ps, key=lambda p: (order.get(p.partition("/")[0], len(order)), p))) if s]
    if spelled:
      candidates[code] = spelled
      for parent, _ in spelled:
        totals[parent] = totals.get(parent, 0) + int(counts.get(code, 0))
  out = {}
  for code, spelled in candidates.items():
    always = [p for p, policy in spelled if policy == ALWAYS]
    if always:
      out[code] = always[0]
    elif int(counts.get(code, 0)) < min_count:
      backoff = [p for p, _ in spelled if totals[p] >= min_count]
      if backoff:
        out[code] = backoff[0]
  return out


def mapped_counts(counts: Mapping[str, int], mapping: Mapping[str, str]) -> dict[str, int]:
  out: dict[str, int] = {}
  for code, n in counts.items():
    key = mapping.get(code, code)
    out[key] = out.get(key, 0) + int(n)
  return out


def describe(vocab: Any, meta: CodeMetadata, counts: Mapping[str, int],
             mapping: Mapping[str, str], min_count: int) -> int:
  """Gives tokens without a description the codes.parquet description of the most frequent
  raw code (at least min_count train rows) mapped to them; returns how many were filled."""
  tok = tokenizer_lib.Tokenizer(vocab)
  filled = 0
  for code in sorted(counts, key=lambda c: (-int(counts[c]), c)):
    if int(counts[code]) < min_count:
      break
    desc = meta.description.get(code)
    if not desc:
      continue
    ids = tok.code_token_ids(mapping.get(code, code))
    if not ids:
      continue
    entry = vocab.entries[ids[-1]]
    # Generic tokens and those reached through a parent only: the others have their own tables.
    if code not in mapping and entry["system"] not in GENERIC_SYSTEMS:
      continue
    if not entry.get("description") and not entry["token"].endswith("//[UNK]"):
      entry["description"] = desc
      filled += 1
  return filled
