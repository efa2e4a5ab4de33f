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
from typing import Callable, Sequence

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

# Systems whose codes become vocabulary tokens by count (with a per-system unknown token), in
# the order of their sections in the vocabulary (part of the vocabulary format: token ids).
CODED_SYSTEMS = (CLAIM, POS, ICD10CM, ICD9CM, ICD10PCS, ICD9PCS, CPT, HCPCS, NDC, LAB, OTHER)


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




def _upper(value: str) -> str:
  return value.upper()


def _undotted(value: str) -> str:
  return value.upper().replace(".", "")


def _verbatim(value: str) -> str:
  return value


def _pos_key(value: str) -> str:
  return value.zfill(2) if value.isdigit() else value.upper()


@dataclasses.dataclass(frozen=True)
class CodeSystem:
  """What the builder needs to know of a terminology system.

  A new code system is one entry of SYSTEMS (plus its name in CODED_SYSTEMS when its codes become
  tokens): the regexes that recognize its MEDS code strings, the token kind, the role of its rows,
  and `key`, how a code is normalized into its token `SYSTEM//key`. Systems with their own
  hierarchy or grouping (ICD-10-CM, ICD-9-CM, NDC) or no code (sex, birth, cost, ...) are handled
  by name in `lmm_jax.data.tokenizer.CodeAnalyzer`; every other system is tokenized from its spec.
  """
  kind: TokenKind
  role: int | None                 # Role of its rows; None: decided per code by the tokenizer
  rules: tuple[str, ...] = ()      # default regexes (group 1 = the code), tried in order
  key: Callable[[str], str] | None = None   # generic systems: code -> normalized key
  static_allowed: bool = False     # its rows may carry a null `time` (static facts)


# In the order their default rules are tried (first match wins).
SYSTEMS: dict[str, CodeSystem] = {
    ICD10CM: CodeSystem(TokenKind.DIAGNOSIS, Role.DX, (
        r"^ICD10CM//(.+)$", r"^ICD-10-CM//(.+)$", r"^ICD10//(.+)$",
        r"^(?:DIAGNOSIS//|DX//)?ICD//10(?:CM)?//(.+)$")),
    ICD9CM: CodeSystem(TokenKind.DIAGNOSIS, Role.DX, (
        r"^ICD9CM//(.+)$", r"^ICD-9-CM//(.+)$", r"^ICD9//(.+)$",
        r"^(?:DIAGNOSIS//|DX//)?ICD//9(?:CM)?//(.+)$")),
    ICD10PCS: CodeSystem(TokenKind.PROCEDURE, Role.PROC, (
        r"^ICD10PCS//(.+)$", r"^(?:PROCEDURE|PX)//ICD//10(?:PCS)?//(.+)$"), key=_undotted),
    ICD9PCS: CodeSystem(TokenKind.PROCEDURE, Role.PROC, (
        r"^ICD9PCS//(.+)$", r"^(?:PROCEDURE|PX)//ICD//9(?:PCS)?//(.+)$"), key=_undotted),
    CPT: CodeSystem(TokenKind.PROCEDURE, Role.PROC, (r"^(?:PROCEDURE//|PX//)?CPT-?4?//(.+)$",),
                    key=_upper),
    HCPCS: CodeSystem(TokenKind.PROCEDURE, Role.PROC, (r"^(?:PROCEDURE//|PX//)?HCPCS//(.+)$",),
                      key=_upper),
    NDC: CodeSystem(TokenKind.DRUG, Role.DRUG, (r"^(?:MEDICATION//|DRUG//|RX//)?NDC//(.+)$",)),
    LAB: CodeSystem(TokenKind.OTHER, Role.OTHER, (r"^(?:LAB|LABS|LAB_TEST|MEASUREMENT)//(.+)$",),
                    key=_verbatim),
    GENDER: CodeSystem(TokenKind.DEMOGRAPHIC, Role.GENDER, (r"^(?:GENDER|SEX)//(.+)$",),
                       static_allowed=True),
    BIRTH: CodeSystem(TokenKind.DEMOGRAPHIC, Role.BIRTH, (r"^(MEDS_BIRTH)$",)),
    DEATH: CodeSystem(TokenKind.DEATH, Role.DEATH, (r"^(MEDS_DEATH)$",)),
    CLAIM: CodeSystem(TokenKind.CLAIM, Role.CLAIM, (r"^CLAIM//(.+)$",), key=_upper),
    POS: CodeSystem(TokenKind.CLAIM, Role.POS, (r"^POS//(.+)$",), key=_pos_key),
    COST: CodeSystem(TokenKind.COST, None, (r"^(COST//.+)$",)),
    ENROLLMENT: CodeSystem(TokenKind.DEMOGRAPHIC, None, (r"^ENROLLMENT//((?:START|END)//.+)$",)),
    # Codes no rule matches: generic tokens, never rejected.
    OTHER: CodeSystem(TokenKind.OTHER, Role.OTHER, key=_verbatim),
    # Tokens that do not come from a code string.
    TIME: CodeSystem(TokenKind.TIME, None),
    AGE: CodeSystem(TokenKind.DEMOGRAPHIC, None),
    LOB: CodeSystem(TokenKind.DEMOGRAPHIC, None),
    SPECIAL: CodeSystem(TokenKind.SPECIAL, None),
}

# Tokenized by name in lmm_jax.data.tokenizer (hierarchies, groupings, codes without a token).
TOKENIZED_BY_NAME = frozenset({ICD10CM, ICD9CM, NDC, GENDER, BIRTH, DEATH, COST, ENROLLMENT})


def check_systems() -> None:
  """Every coded system has a role; every matchable system has a key or a tokenizer branch."""
  bad = [s for s in CODED_SYSTEMS if s not in SYSTEMS or SYSTEMS[s].role is None]
  bad += [n for n, spec in SYSTEMS.items() if (spec.rules or n in CODED_SYSTEMS)
          and spec.key is None and n not in TOKENIZED_BY_NAME]
  if bad:
    raise ValueError(f"code systems {sorted(set(bad))}: a coded system needs a SYSTEMS entry "
                     "with a role, and a system without a tokenizer branch needs a `key`")


check_systems()

SYSTEM_KINDS: dict[str, TokenKind] = {name: spec.kind for name, spec in SYSTEMS.items()}

# Default rules: our conventions first, then common spellings of other ETLs. First match wins.
DEFAULT_RULES: tuple[tuple[str, str], ...] = tuple(
    (pattern, name) for name, spec in SYSTEMS.items() for pattern in spec.rules)


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
      if system not in SYSTEMS or not SYSTEMS[system].rules:
        raise ValueError(f"code system rule {pattern!r} names unknown system {system!r}; known: "
                         f"{sorted(n for n, spec in SYSTEMS.items() if spec.rules)}")
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
  return SYSTEMS[system].static_allowed


def default_rules() -> list[tuple[str, str]]:
  return [tuple(r) for r in DEFAULT_RULES]


# The configured cost measure (our convention: the allowed amount).
DEFAULT_COST_CODE = conventions.COST_ALLOWED_CODE
