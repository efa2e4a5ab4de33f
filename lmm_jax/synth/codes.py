"""Code tables of the synthetic world: every code the simulator can emit, as MEDS code strings.

Diagnoses are billable ICD-10-CM leaves (checked against `simple-icd-10-cm` in tests), chosen so
that `lmm_jax.conditions.conditions_of` maps each condition's codes back to that condition.
Procedures are real CPT/HCPCS codes (no CPT descriptions are shipped: AMA copyright); drugs are
real 11-digit NDCs read from the HHS-HCC drug-class tables that `hccpy` ships.

Codes are interned into one table (`CODES`, ids in registration order), so the simulator works on
int32 ids and the writer turns ids into strings once per shard.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os

import numpy as np
import simple_icd_10_cm as icd

from lmm_jax import conditions as cond_lib
from lmm_jax import conventions as conv

_CODES: list[str] = []
_IDS: dict[str, int] = {}


def cid(code: str) -> int:
  """The id of a full MEDS code string, registering it on first use."""
  i = _IDS.get(code)
  if i is None:
    i = len(_CODES)
    _CODES.append(code)
    _IDS[code] = i
  return i


def dx(icd: str) -> int:
  return cid(f"{conv.ICD10CM}//{icd}")


def cpt(code: str) -> int:
  return cid(f"{conv.CPT}//{code}")


def hcpcs(code: str) -> int:
  return cid(f"{conv.HCPCS}//{code}")


def pcs(code: str) -> int:
  return cid(f"{conv.ICD10PCS}//{code}")


# Member-level and claim-structure codes first, so their ids are small and stable.
FEMALE = cid(conv.FEMALE_CODE)
MALE = cid(conv.MALE_CODE)
BIRTH = cid(conv.BIRTH_CODE)
DEATH = cid(conv.DEATH_CODE)
COST = cid(conv.COST_ALLOWED_CODE)
ENROLL_START = tuple(cid(conv.enrollment_code("START", lob)) for lob in conv.LINES_OF_BUSINESS)
ENROLL_END = tuple(cid(conv.enrollment_code("END", lob)) for lob in conv.LINES_OF_BUSINESS)
CLAIM_TYPE = {t: cid(f"{conv.CLAIM}//{t}") for t in conv.CLAIM_TYPES}
POS = {p: cid(f"{conv.POS}//{p}") for p in conv.PLACES_OF_SERVICE}

# Latent conditions: the 22 target conditions, then three risk states that are not targets but
# are coded and raise hazards (they carry pre-onset signal into the history).
EXTRA_LATENT = ("smoker", "prediabetes", "mild_cognitive_impairment")
LATENT_NAMES: tuple[str, ...] = cond_lib.CONDITION_NAMES + EXTRA_LATENT
NUM_LATENT = len(LATENT_NAMES)
LATENT_INDEX = {n: i for i, n in enumerate(LATENT_NAMES)}

# Alternative (less specific) codes used for a condition at a fraction of codings.
_ALTS = {
    "hypertension": ("I10",),
    "hyperlipidemia": ("E78.5", "E78.00", "E78.2", "E78.1", "E78.49"),
    "diabetes_t2": ("E11.9", "E11.8", "E11.69", "E11.65"),
    "ckd": ("N18.9",),
    "heart_failure": ("I50.9", "I50.32", "I50.22"),
    "ischemic_heart_disease": ("I25.10", "I20.9"),
    "atrial_fibrillation": ("I48.91", "I48.0", "I48.20", "I48.19", "I48.92"),
    "copd": ("J44.9", "J43.9", "J42"),
    "asthma": ("J45.909", "J45.20", "J45.30", "J45.40"),
    "depression": ("F32.9", "F33.1", "F32.A", "F33.0", "F34.1", "F32.1"),
    "anxiety": ("F41.9", "F41.1", "F41.0", "F40.10"),
    "dementia": ("F03.90", "G30.9", "F01.50", "G31.1"),
    "osteoarthritis": ("M17.11", "M17.12", "M17.0", "M16.11", "M16.12", "M19.90"),
    "rheumatoid_arthritis": ("M06.9", "M05.79", "M06.09"),
    "osteoporosis": ("M81.0", "M81.8"),
    "obesity": ("E66.9", "E66.01", "Z68.35", "Z68.41"),
    "hypothyroidism": ("E03.9", "E03.8", "E89.0"),
    "breast_cancer": ("C50.911", "C50.912", "C50.411", "C50.412", "C50.919"),
    "prostate_cancer": ("C61",),
    "colorectal_cancer": ("C18.9", "C18.7", "C20", "C18.2"),
    "lung_cancer": ("C34.90", "C34.11", "C34.31", "C34.12"),
    "stroke": ("I63.9", "I63.50"),
    "smoker": ("F17.210",),
    "prediabetes": ("R73.03",),
    "mild_cognitive_impairment": ("G31.84", "R41.3"),
}
MAX_ALT = max(len(v) for v in _ALTS.values())
ALT_TABLE = np.full((NUM_LATENT, MAX_ALT), -1, np.int32)
ALT_COUNT = np.zeros(NUM_LATENT, np.int32)
for _n, _codes in _ALTS.items():
  for _j, _c in enumerate(_codes):
    ALT_TABLE[LATENT_INDEX[_n], _j] = dx(_c)
  ALT_COUNT[LATENT_INDEX[_n]] = len(_codes)
# Where the alternative pick lands on an unused slot, fall back to the first alternative.
for _k in range(NUM_LATENT):
  ALT_TABLE[_k, ALT_COUNT[_k]:] = ALT_TABLE[_k, 0]

# Code diversity: a coding that does not use the state's primary code draws from every billable
# ICD-10-CM leaf under the condition's categories (simple-icd-10-cm) that counts for that
# condition alone, with a Zipf-like frequency: the curated codes above take the first ranks, the
# other leaves follow in code order; rank r has weight r^-ZIPF_S.
ZIPF_S = 1.1
_EXTRA_POOL_ROOTS = {"smoker": ("F17.2",), "prediabetes": ("R73.0",),
                     "mild_cognitive_impairment": ()}


def _dotted(prefix: str) -> str:
  return prefix if len(prefix) <= 3 else f"{prefix[:3]}.{prefix[3:]}"


def _leaves(roots) -> list[str]:
  out = []
  for root in roots:
    root = _dotted(root)
    if not icd.is_valid_item(root):
      continue
    out += [root] if icd.is_leaf(root) else [d for d in icd.get_descendants(root)
                                              if icd.is_leaf(d)]
  return sorted(set(out))


def _condition_pool(name: str) -> list[str]:
  curated = list(_ALTS[name])
  if name in _EXTRA_POOL_ROOTS:
    leaves = _leaves(_EXTRA_POOL_ROOTS[name])
  else:
    k = cond_lib.CONDITION_NAMES.index(name)
    leaves = [c for c in _leaves(cond_lib.CONDITIONS[k].icd10cm_prefixes)
              if cond_lib.conditions_of(c) == (k,)]
    if name == "breast_cancer":   # no male breast codes (C50.x2x) in the pool
      leaves = [c for c in leaves if not (c.startswith("C50.") and c[5:6] == "2")]
  return curated + [c for c in leaves if c not in curated]


def zipf_weights(m: int) -> np.ndarray:
  w = 1.0 / np.arange(1, m + 1) ** ZIPF_S
  return w / w.sum()


@dataclasses.dataclass(frozen=True)
class Pools:
  """Code pools in one flat table: pool k holds ids[offset[k]:offset[k + 1]] with the Zipf CDF
  k + cumulative weight, so one searchsorted draws from many pools at once."""
  ids: np.ndarray      # int32 [total]
  cdf: np.ndarray      # float64 [total]
  offset: np.ndarray   # int64 [num pools + 1]

  @classmethod
  def of(cls, pools: list[list[int]]) -> "Pools":
    ids, cdf = [], []
    for k, pool in enumerate(pools):
      c = np.cumsum(zipf_weights(len(pool)))
      c[-1] = 1.0
      ids.append(np.asarray(pool, np.int32))
      cdf.append(k + c)
    offset = np.concatenate([[0], np.cumsum([len(p) for p in pools])]).astype(np.int64)
    return cls(np.concatenate(ids), np.concatenate(cdf), offset)

  def draw(self, pool: np.ndarray | int, u: np.ndarray) -> np.ndarray:
    """Code ids of pool(s) `pool` at uniform draws u in [0, 1)."""
    pool = np.broadcast_to(np.asarray(pool, np.int64), np.shape(u))
    j = np.searchsorted(self.cdf, pool + u, side="right")
    return self.ids[np.clip(j, self.offset[pool], self.offset[pool + 1] - 1)]

  def pool(self, k: int) -> np.ndarray:
    return self.ids[self.offset[k]:self.offset[k + 1]]


ALT_POOLS = Pools.of([[dx(c) for c in _condition_pool(n)] for n in LATENT_NAMES])

# State-dependent primary codes.
HTN = {k: dx(v) for k, v in dict(plain="I10", hf="I11.0", ckd="I12.9", esrd="I12.0", hf_ckd="I13.0",
                                  hf_esrd="I13.2").items()}
DM = {k: dx(v) for k, v in dict(plain="E11.9", hyper="E11.65", ckd="E11.22", neuro="E11.40",
                                 retino="E11.319").items()}
CKD_STAGE = np.array([dx("N18.9"), dx("N18.1"), dx("N18.2"), dx("N18.30"), dx("N18.4"), dx("N18.5"),
                      dx("N18.6")], np.int32)  # index = stage (6 = on dialysis)
HF_SEV = np.array([dx("I50.9"), dx("I50.9"), dx("I50.22"), dx("I50.42")], np.int32)
HF_ACUTE = np.array([dx("I50.23"), dx("I50.33"), dx("I50.43")], np.int32)
IHD = dx("I25.10")
OLD_MI = dx("I25.2")
BREAST_MALE = dx("C50.921")
HISTORY = {  # personal-history codes, which do not count for the condition
    "breast_cancer": dx("Z85.3"), "prostate_cancer": dx("Z85.46"),
    "colorectal_cancer": dx("Z85.038"), "lung_cancer": dx("Z85.118"),
    "stroke": dx("Z86.73"),
}
STROKE_SEQUELA = dx("I69.351")
Z_DIALYSIS = dx("Z99.2")
Z_INSULIN = dx("Z79.4")
Z_ORAL_DM = dx("Z79.84")

# Diagnoses of visits that are not about a chronic condition.
ACUTE_MINOR = np.array([dx(c) for c in ("J06.9", "M54.50", "R05.9", "J02.9", "R51.9", "K21.9",
                                        "N39.0", "L03.90", "R53.83", "H66.90")], np.int32)
ER_COMPLAINT = np.array([dx(c) for c in ("R07.9", "R10.9", "S93.401A", "R55", "R06.02", "N39.0",
                                         "J06.9", "R51.9", "L03.90")], np.int32)
# Their long tails: the leaves of common acute categories (injuries: initial encounters only),
# after the curated codes above, with the same Zipf-like frequency.
_MINOR_ROOTS = ("J00", "J01", "J02", "J03", "J06", "J20", "J30", "J32", "M25", "M54", "M79", "R05",
                "R10", "R11", "R19", "R21", "R42", "R50", "R51", "R53", "K21", "K29", "K30", "K52",
                "K58", "K59", "N30", "N39", "L02", "L03", "L08", "L20", "L23", "L30", "L50", "L70",
                "H10", "H60", "H65", "H66", "B34", "B35", "B36", "G43", "G44", "G47", "E55", "D50")
_ER_ROOTS = ("R07", "R10", "R06", "R55", "R42", "S01", "S06.0", "S13", "S20", "S22", "S39", "S42",
             "S52", "S60", "S61", "S62", "S63", "S80", "S81", "S82", "S83", "S90", "S91", "S93",
             "T78.4", "N39", "J06", "R51")


def _tail_pool(curated: np.ndarray, roots) -> list[int]:
  have = set(int(i) for i in curated)
  leaves = [c for c in _leaves(roots) if not cond_lib.conditions_of(c)
            and (c[0] not in "ST" or c.endswith("A"))]
  return list(curated) + [i for i in (dx(c) for c in leaves) if i not in have]


MINOR_POOLS = Pools.of([_tail_pool(ACUTE_MINOR, _MINOR_ROOTS), _tail_pool(ER_COMPLAINT, _ER_ROOTS)])
POOL_MINOR, POOL_ER = 0, 1
WELL_ADULT = np.array([dx("Z00.00"), dx("Z00.01")], np.int32)
WELL_CHILD = dx("Z00.129")
VACCINE = dx("Z23")
PRENATAL = dx("Z34.90")
SCREEN_MAMMO = dx("Z12.31")
SCREEN_COLON = dx("Z12.11")
# Rule-out diagnoses: coded on tests and imaging whether or not the condition is present.
RULE_OUT = np.array([dx(c) for c in ("E11.9", "I25.10", "C50.919", "C18.9", "C34.90", "G45.9",
                                     "I48.91", "J44.9", "N18.9", "I50.9", "F03.90", "C61", "E03.9")],
                    np.int32)
RULE_OUT_P = np.array([0.2, 0.12, 0.12, 0.05, 0.06, 0.08, 0.07, 0.06, 0.06, 0.06, 0.03, 0.04, 0.05])
RULE_OUT_P = RULE_OUT_P / RULE_OUT_P.sum()

# Acute events: principal diagnoses.
MI = np.array([dx("I21.4"), dx("I21.4"), dx("I21.19"), dx("I21.09")], np.int32)
STROKE_ACUTE = np.array([dx("I63.9"), dx("I63.50"), dx("I63.9"), dx("I61.9")], np.int32)
TIA = dx("G45.9")
PNEUMONIA = dx("J18.9")
SEPSIS = dx("A41.9")
SEVERE_SEPSIS = dx("R65.20")
DM_CRISIS = np.array([dx("E11.65"), dx("E11.649"), dx("E11.65"), dx("E11.00")], np.int32)
HIP_FRACTURE = np.array([dx("S72.001A"), dx("S72.002A")], np.int32)
COPD_EXAC = dx("J44.1")
ASTHMA_EXAC = dx("J45.901")
DELIVERY = dx("O80")
CESAREAN = dx("O82")
LIVEBORN = dx("Z37.0")
# Other medical and surgical admissions (cellulitis, infections, bleeding, obstruction, ...).
OTHER_ADMISSION = np.array([dx(c) for c in ("L03.90", "N10", "K92.2", "K35.80", "E86.0", "K57.92",
                                            "R07.89", "R55", "K56.609", "J96.01")], np.int32)
KNEE_OA = np.array([dx("M17.11"), dx("M17.12")], np.int32)
AFTERCARE_JOINT = dx("Z47.1")

# Procedures (CPT / HCPCS / ICD-10-PCS) and their base allowed amounts in dollars (Medicare-like).
EM_OFFICE = np.array([cpt("99212"), cpt("99213"), cpt("99214"), cpt("99215")], np.int32)
EM_OFFICE_COST = np.array([60.0, 95.0, 135.0, 185.0])
PREVENTIVE = np.array([cpt(c) for c in ("99391", "99392", "99393", "99394", "99395", "99396",
                                        "99397")], np.int32)
PSYCHOTHERAPY = cpt("90834")
EM_ER = np.array([cpt("99283"), cpt("99284"), cpt("99285")], np.int32)
EM_INPATIENT = np.array([cpt("99223"), cpt("99232"), cpt("99233")], np.int32)
LAB = {k: cpt(v) for k, v in dict(cmp="80053", cbc="85025", a1c="83036", lipid="80061", tsh="84443",
                                  microalb="82043", bnp="83880").items()}
LAB_COST = {"cmp": 11.0, "cbc": 8.0, "a1c": 10.0, "lipid": 13.0, "tsh": 17.0, "microalb": 6.0,
            "bnp": 35.0}
IMAGING = {k: cpt(v) for k, v in dict(cxr="71046", echo="93306", mammo="77067", dxa="77080",
                                      mri_knee="73721", ct_head="70450", ct_chest="71250",
                                      ct_abd="74177", ecg="93000").items()}
IMAGING_COST = {"cxr": 40.0, "echo": 230.0, "mammo": 140.0, "dxa": 80.0, "mri_knee": 420.0,
                "ct_head": 190.0, "ct_chest": 260.0, "ct_abd": 380.0, "ecg": 17.0}
COLONOSCOPY = cpt("45378")
CARDIAC_CATH = cpt("93458")
PCI = cpt("92928")
CHEMO_ADMIN = cpt("96413")
RADIATION = cpt("77412")
JOINT_INJECTION = cpt("20610")
TRIAMCINOLONE = hcpcs("J3301")
INFLIXIMAB = hcpcs("J1745")
PHYSICAL_THERAPY = cpt("97110")
OB_ULTRASOUND = cpt("76805")
HOME_HEALTH_RN = hcpcs("G0299")
DIALYSIS_SESSION = cpt("90935")
ESRD_MONTHLY = cpt("90960")
CANCER_DRUGS = {  # per cancer: HCPCS J-codes of typical regimens
    "breast_cancer": (hcpcs("J9355"), hcpcs("J9267")),     # trastuzumab, paclitaxel
    "prostate_cancer": (hcpcs("J9217"), -1),               # leuprolide
    "colorectal_cancer": (hcpcs("J9035"), hcpcs("J9263")),  # bevacizumab, oxaliplatin
    "lung_cancer": (hcpcs("J9271"), hcpcs("J9305")),       # pembrolizumab, pemetrexed
}
CANCER_SURGERY = {
    "breast_cancer": cpt("19303"), "prostate_cancer": cpt("55866"),
    "colorectal_cancer": cpt("44140"), "lung_cancer": cpt("32480"),
}
PCS_PCI = pcs("027034Z")
PCS_KNEE = np.array([pcs("0SRC0J9"), pcs("0SRD0J9")], np.int32)
PCS_HIP = pcs("0SR9019")
PCS_VAGINAL = pcs("10E0XZZ")
PCS_CESAREAN = pcs("10D00Z1")
PCS_VENT = pcs("5A1955Z")
PCS_TPA = pcs("3E03317")

# Drug classes of the HHS-HCC RXC tables shipped with hccpy: (table file, class number).
_NDC_TABLES = {
    "oral_antidiabetic": ("CY22F07A_NDC8_1_22_04.TXT", "7"),
    "insulin": ("CY22F07A_NDC8_1_22_04.TXT", "6"),
    "antiarrhythmic": ("CY22F07A_NDC8_1_22_04.TXT", "3"),
    "phosphate_binder": ("CY22F07A_NDC8_1_22_04.TXT", "4"),
    "immunosuppressant": ("CY22F07A_NDC8_1_22_04.TXT", "9"),
    "loop_diuretic": ("H0519F3_NDC.4_4.1812.TXT", "12"),
}
DRUG_CLASSES = tuple(_NDC_TABLES)
NDCS_PER_CLASS = 400   # products per class; a person's product is drawn Zipf-like (ndc_of)


def _hccpy_data_dir() -> str:
  spec = importlib.util.find_spec("hccpy")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("hccpy is required for the NDC tables of the synthesizer (pip install hccpy)")
  return os.path.join(list(spec.submodule_search_locations)[0], "data")


@functools.lru_cache(maxsize=None)
def _read_ndc_table(filename: str) -> dict[str, list[str]]:
  path = os.path.join(_hccpy_data_dir(), filename)
  by_class: dict[str, list[str]] = {}
  with open(path, encoding="latin-1") as f:
    for line in f:
      parts = line.rstrip("\n").split("\t")
      if len(parts) < 2:
        continue
      ndc, klass = parts[0].strip(), parts[1].strip()
      if len(ndc) != 11 or not ndc.isdigit():
        continue  # a few entries carry letters (placeholder products); only real NDCs are used
      by_class.setdefault(klass, []).append(ndc)
  return by_class


def _ndc_ids(drug_class: str) -> np.ndarray:
  filename, klass = _NDC_TABLES[drug_class]
  ndcs = sorted(set(_read_ndc_table(filename).get(klass, [])))
  if not ndcs:
    raise ValueError(f"hccpy table {filename} has no NDC of class {klass} ({drug_class})")
  # An evenly spaced, deterministic subset: many products per class, a bounded vocabulary.
  take = np.linspace(0, len(ndcs) - 1, min(NDCS_PER_CLASS, len(ndcs))).round().astype(int)
  # Market-share ranks in a fixed shuffled order (not by labeler code).
  take = np.random.default_rng(len(ndcs)).permutation(sorted(set(take)))
  return np.array([cid(f"{conv.NDC}//{ndcs[i]}") for i in take], np.int32)


NDC_IDS: dict[str, np.ndarray] = {c: _ndc_ids(c) for c in DRUG_CLASSES}
NDC_TABLE = np.full((len(DRUG_CLASSES), max(len(v) for v in NDC_IDS.values())), -1, np.int32)
NDC_COUNT = np.array([len(NDC_IDS[c]) for c in DRUG_CLASSES], np.int32)
for _j, _c in enumerate(DRUG_CLASSES):
  NDC_TABLE[_j, :NDC_COUNT[_j]] = NDC_IDS[_c]
NDC_POOLS = Pools.of([list(NDC_IDS[c]) for c in DRUG_CLASSES])


def ndc_of(drug_class: int, u: np.ndarray) -> np.ndarray:
  """The product (NDC id) of drug class `drug_class` for people with product draws u."""
  return NDC_POOLS.draw(drug_class, u)

CODES: tuple[str, ...] = tuple(_CODES)
NUM_CODES = len(CODES)


def _condition_bits() -> np.ndarray:
  """int32[NUM_CODES + 1]: bit c set when the code counts for target condition c (last = padding)."""
  bits = np.zeros(NUM_CODES + 1, np.int64)
  prefix = conv.ICD10CM + conv.SEP
  for i, code in enumerate(CODES):
    if code.startswith(prefix):
      for c in cond_lib.conditions_of(code[len(prefix):]):
        bits[i] |= 1 << c
  return bits.astype(np.int32)


CONDITION_BITS = _condition_bits()


def _case_single_bits() -> np.ndarray:
  """int32[NUM_CODES]: at a claim-type code, the conditions one such claim makes a case of."""
  if any(c.rule.other_claims != 2 for c in cond_lib.CONDITIONS):
    raise ValueError("the simulator counts 'other' claims on two different days; a CaseRule "
                     "with other_claims != 2 needs lmm_jax.synth.sim.Sink extended")
  bits = np.zeros(NUM_CODES, np.int64)
  for ctype, i in CLAIM_TYPE.items():
    for k, c in enumerate(cond_lib.CONDITIONS):
      if ctype in c.rule.single_claim_types:
        bits[i] |= 1 << k
  return bits.astype(np.int32)


CASE_SINGLE_BITS = _case_single_bits()


def diagnosis_codes() -> list[str]:
  """All ICD-10-CM codes (without prefix) the simulator can emit."""
  prefix = conv.ICD10CM + conv.SEP
  return [c[len(prefix):] for c in CODES if c.startswith(prefix)]
