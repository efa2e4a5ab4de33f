"""Which terminology system a MEDS code string belongs to, and its normalized code.

Our own datasets follow `lmm_jax.conventions` (`ICD10CM//E11.9`, `CPT//99213`, ...). Other ETLs
spell codes differently (`DIAGNOSIS//ICD//10//E1165`, `ICD9CM//250.00`, `MEDICATION//NDC//...`,
lab names as codes). A list of (regex, system) rules, tried in order, maps a code string onto a
system; the regex's group 1 is the code within that system. A code no rule matches belongs to
system OTHER and is tokenized generically (never rejected).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Sequence

from lmm_jax import conventions
from lmm_jax.conventions import TokenKind

# Systems (the first part of a vocabulary token's string).
ICD10CM = "ICD10CM"
ICD9CM = "ICD9CM"
ICD10PCS = "ICD10PCS"
ICD9PCS = "ICD9PCS"
CPT = "CPT"
HCPCS = "HCPCS"
NDC = "NDC"
LAB = "LAB"
OTHER = "OTHER"
GENDER = "GENDER"
BIRTH = "BIRTH"
DEATH = "DEATH"
CLAIM = "CLAIM"
POS = "POS"
COST = "COST"
ENROLLMENT = "ENROLLMENT"
# Systems of tokens that do not come from a code string.
SPECIAL = "SPECIAL"
AGE = "AGE"
TIME = "TIME"
LOB = "LOB"

# Systems whose codes become vocabulary tokens by count (with a per-system unknown token).
CODED_SYSTEMS = (CLAIM, POS, ICD10CM, ICD9CM, ICD10PCS, ICD9PCS, CPT, HCPCS, NDC, LAB, OTHER)

SYSTEM_KINDS: dict[str, TokenKind] = {
    ICD10CM: TokenKind.DIAGNOSIS, ICD9CM: TokenKind.DIAGNOSIS,
    ICD10PCS: TokenKind.PROCEDURE, ICD9PCS: TokenKind.PROCEDURE, CPT: TokenKind.PROCEDURE,
    HCPCS: TokenKind.PROCEDURE, NDC: TokenKind.DRUG, LAB: TokenKind.OTHER, OTHER: TokenKind.OTHER,
    CLAIM: TokenKind.CLAIM, POS: TokenKind.CLAIM, COST: TokenKind.COST, TIME: TokenKind.TIME,
    GENDER: TokenKind.DEMOGRAPHIC, AGE: TokenKind.DEMOGRAPHIC, LOB: TokenKind.DEMOGRAPHIC,
    DEATH: TokenKind.DEATH, SPECIAL: TokenKind.SPECIAL,
}


class Role:
  """What a MEDS row does in a timeline (int8 codes; the order is the order within a claim)."""
  CLAIM = 0       # claim type token, first in its claim
  POS = 1
  DX = 2
  PROC = 3
  DRUG = 4
  OTHER = 5       # labs and codes of unknown systems: generic tokens
  COST = 6        # the claim's cost (numeric_value); becomes the claim's cost-bin token, last
  GENDER = 7      # static sex row
  BIRTH = 8
  DEATH = 9
  ENROLL_START = 10
  ENROLL_END = 11
  COST_OTHER = 12  # a cost measure other than the configured one (counted, not used)
  STATIC_OTHER = 13  # a static (null-time) row of any other system (counted, not used)


SYSTEM_ROLES = {
    CLAIM: Role.CLAIM, POS: Role.POS, ICD10CM: Role.DX, ICD9CM: Role.DX, ICD10PCS: Role.PROC,
    ICD9PCS: Role.PROC, CPT: Role.PROC, HCPCS: Role.PROC, NDC: Role.DRUG, LAB: Role.OTHER,
    OTHER: Role.OTHER, GENDER: Role.GENDER, BIRTH: Role.BIRTH, DEATH: Role.DEATH,
}

# Default rules: our conventions first, then common spellings of other ETLs. First match wins.
DEFAULT_RULES: tuple[tuple[str, str], ...] = (
    (r"^ICD10CM//(.+)$", ICD10CM),
    (r"^ICD-10-CM//(.+)$", ICD10CM),
    (r"^ICD10//(.+)$", ICD10CM),
    (r"^(?:DIAGNOSIS//|DX//)?ICD//10(?:CM)?//(.+)$", ICD10CM),
    (r"^ICD9CM//(.+)$", ICD9CM),
    (r"^ICD-9-CM//(.+)$", ICD9CM),
    (r"^ICD9//(.+)$", ICD9CM),
    (r"^(?:DIAGNOSIS//|DX//)?ICD//9(?:CM)?//(.+)$", ICD9CM),
    (r"^ICD10PCS//(.+)$", ICD10PCS),
    (r"^(?:PROCEDURE|PX)//ICD//10(?:PCS)?//(.+)$", ICD10PCS),
    (r"^ICD9PCS//(.+)$", ICD9PCS),
    (r"^(?:PROCEDURE|PX)//ICD//9(?:PCS)?//(.+)$", ICD9PCS),
    (r"^(?:PROCEDURE//|PX//)?CPT-?4?//(.+)$", CPT),
    (r"^(?:PROCEDURE//|PX//)?HCPCS//(.+)$", HCPCS),
    (r"^(?:MEDICATION//|DRUG//|RX//)?NDC//(.+)$", NDC),
    (r"^(?:LAB|LABS|LAB_TEST|MEASUREMENT)//(.+)$", LAB),
    (r"^(?:GENDER|SEX)//(.+)$", GENDER),
    (r"^(MEDS_BIRTH)$", BIRTH),
    (r"^(MEDS_DEATH)$", DEATH),
    (r"^CLAIM//(.+)$", CLAIM),
    (r"^POS//(.+)$", POS),
    (r"^(COST//.+)$", COST),
    (r"^ENROLLMENT//((?:START|END)//.+)$", ENROLLMENT),
)


@dataclasses.dataclass(frozen=True)
class Resolved:
  system: str
  code: str   # the code within the system as the rule's group 1 gives it (not yet normalized)


class CodeResolver:
  """Maps a MEDS code string to (system, code) by ordered regex rules (cached per string)."""

  def __init__(self, rules: Sequence[Sequence[str]]):
    self._rules = []
    for rule in rules:
      if len(rule) != 2:
        raise ValueError(f"a code_system_rules entry must be (regex, system), got {rule!r}")
      pattern, system = rule
      compiled = re.compile(pattern)
      if compiled.groups < 1:
        raise ValueError(f"code system rule {pattern!r} needs a capture group (group 1 = code)")
      if system not in SYSTEM_ROLES and system not in (COST, ENROLLMENT):
        raise ValueError(f"code system rule {pattern!r} names unknown system {system!r}; known: "
                         f"{sorted(set(SYSTEM_ROLES) | {COST, ENROLLMENT})}")
      self._rules.append((compiled, system))
    self.resolve = functools.lru_cache(maxsize=1_000_000)(self._resolve)

  def _resolve(self, code: str) -> Resolved:
    for pattern, system in self._rules:
      m = pattern.match(code)
      if m:
        return Resolved(system, m.group(1).strip())
    return Resolved(OTHER, code.strip())


def normalize_ndc(code: str) -> str:
  """An NDC in any common spelling -> 11 digits (5-4-2), or '' if it is not an NDC."""
  code = code.strip()
  if "-" in code:
    parts = code.split("-")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
      widths = (5, 4, 2)
      return "".join(p.zfill(w) for p, w in zip(parts, widths)) if all(
          len(p) <= w for p, w in zip(parts, widths)) else ""
    return ""
  if code.isdigit() and len(code) <= 11:
    return code.zfill(11)
  return ""


def sex_of(code: str) -> str:
  """GENDER code value -> 'F', 'M' or 'UNKNOWN'."""
  value = code.strip().upper()
  if value in ("F", "FEMALE", "W", "WOMAN", "2"):
    return "F"
  if value in ("M", "MALE", "MAN", "1"):
    return "M"
  return "UNKNOWN"


def lob_of(value: str) -> str:
  return value.strip().upper().replace(" ", "_")


def is_static_allowed(system: str) -> bool:
  """Systems whose rows may carry a null `time` (static facts)."""
  return system == GENDER


def default_rules() -> list[tuple[str, str]]:
  return [tuple(r) for r in DEFAULT_RULES]


# The configured cost measure (our convention: the allowed amount).
DEFAULT_COST_CODE = conventions.COST_ALLOWED_CODE
