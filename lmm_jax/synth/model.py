"""The latent world: population, disease process, acute events, mortality, enrollment and claims.

Everything is simulated in monthly steps, vectorized with numpy over patients (rows of the state
arrays). The same `step` runs the observed history and the oracle's roll-outs (the state repeated
once per roll-out), so the oracle is the simulator's own expectation.

Rates are annual unless named otherwise; a monthly event probability is 1 - exp(-rate / 12).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lmm_jax.synth import codes as code_lib

NUM_LATENT = code_lib.NUM_LATENT
LATENT_INDEX = code_lib.LATENT_INDEX
NUM_TARGET = 22
NEVER = np.int32(-100_000)  # onset month of an absent condition
COMMERCIAL, MEDICARE, MEDICAID = 0, 1, 2

# ----------------------------------------------------------------------------------------------
# Disease onset: (annual incidence at age 60, log-slope per year of age, min age, max age,
#                 female multiplier, male multiplier, annual remission probability)
# Incidences were tuned so that prevalence by age band is of the order of the CMS Chronic
# Conditions Warehouse (65+) and NHANES/MEPS (younger adults) figures; see docs/synthetic_world.md.
ONSET = {
    "hypertension": (0.026, 0.035, 18, 200, 1.0, 1.1, 0.0),
    "hyperlipidemia": (0.024, 0.025, 20, 200, 0.9, 1.1, 0.0),
    "diabetes_t2": (0.0050, 0.025, 20, 200, 0.9, 1.1, 0.0),
    "ckd": (0.0030, 0.075, 25, 200, 1.0, 1.0, 0.0),
    "heart_failure": (0.0015, 0.085, 35, 200, 0.9, 1.1, 0.0),
    "ischemic_heart_disease": (0.0025, 0.055, 30, 200, 0.7, 1.4, 0.0),
    "atrial_fibrillation": (0.0018, 0.09, 35, 200, 0.8, 1.25, 0.0),
    "copd": (0.0022, 0.05, 35, 200, 1.0, 1.0, 0.0),
    "asthma": (0.004, -0.012, 2, 200, 1.2, 0.8, 0.08),
    "depression": (0.022, -0.004, 12, 200, 1.45, 0.7, 0.15),
    "anxiety": (0.017, -0.010, 10, 200, 1.45, 0.7, 0.18),
    "dementia": (0.0009, 0.14, 50, 200, 1.1, 0.9, 0.0),
    "osteoarthritis": (0.011, 0.05, 30, 200, 1.25, 0.8, 0.0),
    "rheumatoid_arthritis": (0.0010, 0.02, 18, 200, 1.6, 0.5, 0.0),
    "osteoporosis": (0.0030, 0.09, 40, 200, 1.75, 0.3, 0.0),
    "obesity": (0.012, -0.015, 8, 200, 1.05, 0.95, 0.04),
    "hypothyroidism": (0.0060, 0.03, 12, 200, 1.65, 0.35, 0.0),
    "breast_cancer": (0.0017, 0.02, 25, 200, 1.98, 0.02, 0.0),
    "prostate_cancer": (0.0030, 0.06, 40, 200, 0.0, 2.0, 0.0),
    "colorectal_cancer": (0.0006, 0.055, 25, 200, 0.9, 1.1, 0.0),
    "lung_cancer": (0.0004, 0.07, 30, 200, 0.9, 1.1, 0.0),
    "stroke": (0.0, 0.0, 200, 200, 1.0, 1.0, 0.0),  # set by the acute stroke event below
    "smoker": (0.05, 0.0, 14, 30, 0.85, 1.15, 0.035),
    "prediabetes": (0.015, 0.015, 18, 200, 0.9, 1.1, 0.05),
    "mild_cognitive_impairment": (0.0018, 0.12, 50, 200, 1.0, 1.0, 0.0),
}
_P = np.array([ONSET[n] for n in code_lib.LATENT_NAMES], np.float64)
ONSET_RATE60, ONSET_SLOPE, ONSET_MIN, ONSET_MAX = _P[:, 0], _P[:, 1], _P[:, 2], _P[:, 3]
ONSET_SEX = np.stack([_P[:, 5], _P[:, 4]], 1)  # [K, 2]: column 0 male, 1 female
REMISSION = _P[:, 6]
REMITTING = np.nonzero(REMISSION > 0)[0]
with np.errstate(divide="ignore"):
  _ONSET_LOG60 = np.log(ONSET_RATE60).astype(np.float32)
  _ONSET_SEX_LOG = np.log(ONSET_SEX.T).astype(np.float32)   # [2, K]: male, female
_ONSET_SLOPE32 = ONSET_SLOPE.astype(np.float32)
_ONSET_MIN32 = ONSET_MIN.astype(np.float32)
_ONSET_MAX32 = ONSET_MAX.astype(np.float32)

# The true comorbidity structure: (from_condition, to_condition, hazard_ratio). Having
# `from_condition` multiplies the onset hazard of `to_condition` by `hazard_ratio`. Exported for the
# insights issue, which measures how well a model recovers these links.
TRUE_COMORBIDITY_LINKS: tuple[tuple[str, str, float], ...] = (
    ("obesity", "diabetes_t2", 2.5),
    ("prediabetes", "diabetes_t2", 4.0),
    ("obesity", "hypertension", 1.8),
    ("diabetes_t2", "hypertension", 1.5),
    ("diabetes_t2", "hyperlipidemia", 1.6),
    ("obesity", "hyperlipidemia", 1.3),
    ("diabetes_t2", "ckd", 2.6),
    ("hypertension", "ckd", 2.0),
    ("heart_failure", "ckd", 1.6),
    ("hypertension", "heart_failure", 2.0),
    ("ischemic_heart_disease", "heart_failure", 2.6),
    ("atrial_fibrillation", "heart_failure", 2.0),
    ("diabetes_t2", "heart_failure", 1.7),
    ("ckd", "heart_failure", 1.6),
    ("hypertension", "ischemic_heart_disease", 1.8),
    ("hyperlipidemia", "ischemic_heart_disease", 1.9),
    ("diabetes_t2", "ischemic_heart_disease", 2.0),
    ("smoker", "ischemic_heart_disease", 2.0),
    ("hypertension", "atrial_fibrillation", 1.5),
    ("heart_failure", "atrial_fibrillation", 2.5),
    ("obesity", "atrial_fibrillation", 1.5),
    ("smoker", "copd", 6.0),
    ("asthma", "copd", 2.5),
    ("anxiety", "depression", 2.5),
    ("depression", "anxiety", 2.5),
    ("stroke", "depression", 1.8),
    ("heart_failure", "depression", 1.5),
    ("mild_cognitive_impairment", "dementia", 8.0),
    ("stroke", "dementia", 2.0),
    ("diabetes_t2", "dementia", 1.5),
    ("obesity", "osteoarthritis", 1.8),
    ("rheumatoid_arthritis", "osteoporosis", 1.8),
    ("smoker", "lung_cancer", 9.0),
    ("copd", "lung_cancer", 2.0),
    ("obesity", "colorectal_cancer", 1.3),
    ("obesity", "breast_cancer", 1.2),
    ("stroke", "mild_cognitive_impairment", 1.8),
)
LINK_LOG = np.zeros((NUM_LATENT, NUM_LATENT), np.float32)  # [from, to]
for _a, _b, _hr in TRUE_COMORBIDITY_LINKS:
  LINK_LOG[LATENT_INDEX[_a], LATENT_INDEX[_b]] = np.log(_hr)

# ----------------------------------------------------------------------------------------------
# Acute events: (annual rate at 60, log-slope per year, min age, {latent condition: hazard ratio}).
ACUTE = {
    "mi": (0.0018, 0.055, 30, {"ischemic_heart_disease": 3.0, "diabetes_t2": 1.5,
                               "hypertension": 1.3, "smoker": 1.8, "hyperlipidemia": 1.3}),
    "stroke": (0.0022, 0.075, 30, {"atrial_fibrillation": 3.0, "hypertension": 2.0,
                                   "diabetes_t2": 1.5, "smoker": 1.8, "stroke": 2.0}),
    "pneumonia": (0.004, 0.06, 0, {"copd": 3.0, "heart_failure": 2.0, "dementia": 2.0,
                                   "asthma": 1.5, "lung_cancer": 2.0}),
    "sepsis": (0.0012, 0.07, 0, {"ckd": 2.0, "diabetes_t2": 1.7, "dementia": 2.5,
                                 "heart_failure": 1.5, "lung_cancer": 2.5,
                                 "colorectal_cancer": 2.0}),
    "hip_fracture": (0.0006, 0.11, 45, {"osteoporosis": 3.0, "dementia": 2.0}),
    "joint_replacement": (0.0, 0.03, 45, {}),   # only osteoarthritis (rate below)
}
ACUTE_NAMES = tuple(ACUTE)
ACUTE_INDEX = {n: i for i, n in enumerate(ACUTE_NAMES)}
_AP = np.array([ACUTE[n][:3] for n in ACUTE_NAMES], np.float64)
ACUTE_RATE60, ACUTE_SLOPE, ACUTE_MIN = _AP[:, 0], _AP[:, 1], _AP[:, 2]
with np.errstate(divide="ignore"):
  _ACUTE_LOG60 = np.log(ACUTE_RATE60).astype(np.float32)
_ACUTE_SLOPE32 = ACUTE_SLOPE.astype(np.float32)
_ACUTE_MIN32 = ACUTE_MIN.astype(np.float32)
ACUTE_LOG = np.zeros((NUM_LATENT, len(ACUTE)), np.float32)
for _e, (_, _, _, _hrs) in ACUTE.items():
  for _c, _hr in _hrs.items():
    ACUTE_LOG[LATENT_INDEX[_c], ACUTE_INDEX[_e]] = np.log(_hr)
JOINT_REPLACEMENT_RATE = 0.018  # among osteoarthritis patients 45+
FATALITY = {"mi": 0.07, "stroke": 0.09, "pneumonia": 0.03, "sepsis": 0.16, "hip_fracture": 0.04,
            "joint_replacement": 0.002}

# Mortality: annual Gompertz baseline times hazard ratios of the latent state.
MORT_A, MORT_B = -10.9, 0.094
MORT_LOG = np.zeros(NUM_LATENT, np.float32)
for _c, _hr in {"heart_failure": 2.0, "ckd": 1.5, "dementia": 2.6, "copd": 1.9, "diabetes_t2": 1.3,
                "ischemic_heart_disease": 1.3, "atrial_fibrillation": 1.2, "smoker": 1.6,
                "stroke": 1.5, "lung_cancer": 2.0}.items():
  MORT_LOG[LATENT_INDEX[_c]] = np.log(_hr)
CANCERS = ("breast_cancer", "prostate_cancer", "colorectal_cancer", "lung_cancer")
CANCER_IDX = np.array([LATENT_INDEX[c] for c in CANCERS])
ADVANCED_FRACTION = np.array([0.07, 0.06, 0.2, 0.45])    # stage IV at diagnosis, per cancer
ADVANCED_MORT_HR = np.array([6.0, 4.0, 8.0, 14.0])
CANCER_MONTHLY_COST = np.array([4000.0, 1500.0, 4500.0, 8000.0])  # chemo/immunotherapy month
CANCER_SURGERY_COST = np.array([14000.0, 22000.0, 38000.0, 42000.0])

# Office-visit rate increments (visits per month) and coding probabilities per latent condition.
VISIT_ADD = np.zeros(NUM_LATENT)
for _c, _v in {"hypertension": 0.05, "hyperlipidemia": 0.03, "diabetes_t2": 0.10, "ckd": 0.06,
               "heart_failure": 0.15, "ischemic_heart_disease": 0.08, "atrial_fibrillation": 0.08,
               "copd": 0.09, "asthma": 0.05, "depression": 0.08, "anxiety": 0.06, "dementia": 0.10,
               "osteoarthritis": 0.06, "rheumatoid_arthritis": 0.10, "osteoporosis": 0.03,
               "obesity": 0.02, "hypothyroidism": 0.03, "breast_cancer": 0.05,
               "prostate_cancer": 0.05, "colorectal_cancer": 0.05, "lung_cancer": 0.08,
               "stroke": 0.06, "mild_cognitive_impairment": 0.05}.items():
  VISIT_ADD[LATENT_INDEX[_c]] = _v
P_CODE_OFFICE = np.zeros(NUM_LATENT)
for _c, _v in {"hypertension": 0.62, "hyperlipidemia": 0.5, "diabetes_t2": 0.75, "ckd": 0.42,
               "heart_failure": 0.68, "ischemic_heart_disease": 0.55, "atrial_fibrillation": 0.62,
               "copd": 0.62, "asthma": 0.5, "depression": 0.5, "anxiety": 0.45, "dementia": 0.55,
               "osteoarthritis": 0.42, "rheumatoid_arthritis": 0.7, "osteoporosis": 0.38,
               "obesity": 0.25, "hypothyroidism": 0.45, "breast_cancer": 0.6,
               "prostate_cancer": 0.6, "colorectal_cancer": 0.6, "lung_cancer": 0.75,
               "stroke": 0.35, "smoker": 0.25, "prediabetes": 0.35,
               "mild_cognitive_impairment": 0.4}.items():
  P_CODE_OFFICE[LATENT_INDEX[_c]] = _v
P_CODE_FACILITY = np.minimum(0.95, P_CODE_OFFICE * 1.3)   # inpatient coding is thorough
P_CODE_ER = P_CODE_OFFICE * 0.55
P_CODE_LAB = np.zeros(NUM_LATENT)
for _c, _v in {"diabetes_t2": 0.85, "hyperlipidemia": 0.7, "ckd": 0.6, "hypothyroidism": 0.7,
               "prediabetes": 0.6, "hypertension": 0.3, "heart_failure": 0.3}.items():
  P_CODE_LAB[LATENT_INDEX[_c]] = _v
P_MISSING_CLAIM = 0.02
P_ALT_CODE = 0.25
P_RULE_OUT = {"lab": 0.02, "imaging": 0.04, "er": 0.02}

# ----------------------------------------------------------------------------------------------
# Temporal dynamics (docs/synthetic_world.md gives each one's source and measured value).
# Health: log frailty = a persistent personal level + a mean-reverting monthly AR(1) part, with
# the total spread of the former lifelong frailty (sd 0.8), so that high spending persists but
# fewer than half of the top decile stay in it the next year (MEPS).
FRAIL_SD_BASE = 0.45          # persistent part (sd of the log)
FRAIL_SD_AR = float(np.sqrt(0.8 ** 2 - FRAIL_SD_BASE ** 2))   # stationary sd of the AR(1) part
FRAIL_RHO_MONTH = 0.85        # monthly autocorrelation of the AR(1) part
# Readmissions: after a discharge, a readmission within 90 days with probability READMIT_P90 by
# age band (x frailty^0.3, x (1 + 0.08 chronic conditions), x 2 in terminal decline), at a gap of
# 1 + Exponential(READMIT_GAP_MEAN) days: about 20% of Medicare-age discharges are readmitted
# within 30 days (Jencks et al., NEJM 2009).
READMIT_P90 = np.array([0.045, 0.075])   # under 65, 65+
READMIT_GAP_MEAN = 20.0
# Medication adherence: per-person propensity (the proportion of days covered, PDC) ~ Beta; a
# month on a maintenance drug without its fill is a refill gap. Recent gaps (decayed count)
# raise the hazards of the condition's exacerbations and admissions (Sokol et al., Med Care
# 2005: diabetes hospitalization risk 30% at low vs 13% at high adherence; Roebuck et al.,
# Health Affairs 2011).
ADHERENCE_BETA = (3.0, 1.2)   # mean PDC 0.71
GAP_DECAY = 0.6               # per month
GAP_CONDITIONS = ("diabetes_t2", "heart_failure", "atrial_fibrillation", "rheumatoid_arthritis")
GAP_LOG_HR = np.array([0.9, 0.6, 0.5, 0.5])   # per unit of the decayed gap count
DM_CRISIS_RATE = 0.012        # annual hyper/hypoglycemia admissions of an adherent diabetic
# Complications rise with disease duration: progression hazards x (0.5 + years / DURATION_YEARS),
# capped at 2.5.
DURATION_YEARS = 8.0
# End of life: the mortality hazard is the hazard of entering a terminal decline, in which
# utilization multiplies and death follows at DECLINE_DEATH_MONTH a month (mean 5 months); acute
# case fatality stays immediate. About a quarter of Medicare spending is in the last year of life
# (Riley and Lubitz, Health Serv Res 2010).
DECLINE_DEATH_MONTH = 0.2
DECLINE_UTIL = 5.5
# Winter seasonality: rate x (1 + amplitude cos(2 pi month / 12)), peak in January.
SEASON_AMPLITUDE = {"respiratory": 0.35, "heart_failure": 0.15}


def season(t: int, kind: str) -> float:
  """The seasonal multiplier of month t (0 = January of the first year)."""
  return 1.0 + SEASON_AMPLITUDE[kind] * float(np.cos(2 * np.pi * (t % 12) / 12.0))


def duration_factor(t, onset: np.ndarray) -> np.ndarray:
  years = np.maximum(np.asarray(t) - onset, 0) / 12.0
  return np.minimum(0.5 + years / DURATION_YEARS, 2.5)


LOB_PRICE = np.array([1.45, 1.0, 0.72])       # professional / pharmacy price level by LOB
LOB_FACILITY = np.array([1.6, 1.0, 0.85])     # hospital price level by LOB
INFLATION = 0.03


@dataclasses.dataclass
class State:
  """The latent state of a batch of simulated people (one row each)."""
  birth_mi: np.ndarray      # int32: birth month index (0 = January of first_year)
  birth_day: np.ndarray     # int64: birth date, days since 1970-01-01
  female: np.ndarray        # bool
  frail: np.ndarray         # float32: current frailty, exp(frail_base + frail_ar) normalized
  frail_base: np.ndarray    # float32: persistent part of log frailty
  frail_ar: np.ndarray      # float32: mean-reverting AR(1) part of log frailty
  adherence: np.ndarray     # float32: medication adherence propensity (PDC)
  rx_gap: np.ndarray        # float32 [n, len(GAP_CONDITIONS)]: decayed count of refill gaps
  readmit_day: np.ndarray   # int64: day of a scheduled readmission (0: none)
  readmit_code: np.ndarray  # int32: its principal diagnosis
  decline: np.ndarray       # bool: in terminal decline
  present: np.ndarray       # bool [n, K]
  onset: np.ndarray         # int32 [n, K]: onset month (NEVER if absent)
  severity_u: np.ndarray    # float32 [n, K]: per-condition draw (cancer stage, RA biologic, ...)
  drug_u: np.ndarray        # float32 [n, num drug classes]: which product each person is on
  ckd_stage: np.ndarray     # int8: 0 none, 1-5, 6 dialysis
  dm_sev: np.ndarray        # int8: 0 none, 1 uncomplicated, 2 complicated
  insulin: np.ndarray       # bool
  hf_sev: np.ndarray        # int8: 0 none, 1-3
  last_admit: np.ndarray    # int32: month of the last inpatient stay
  last_mi: np.ndarray       # int32
  preg_start: np.ndarray    # int32: month a pregnancy began (NEVER if not pregnant)
  alive: np.ndarray         # bool
  death_day: np.ndarray     # int64 days since epoch (0 if alive)
  enrolled: np.ndarray      # bool: covered in the current month
  lob: np.ndarray           # int8 line of business
  join_mi: np.ndarray       # int32: first month of coverage
  gone: np.ndarray          # bool: left the plan for good

  def take(self, idx: np.ndarray) -> "State":
    return State(**{f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)})


def set_frailty(st: State) -> None:
  var = FRAIL_SD_BASE ** 2 + FRAIL_SD_AR ** 2
  st.frail = np.exp(st.frail_base + st.frail_ar - 0.5 * var).astype(np.float32)


def evolve_health(st: State, months: int, rng: np.random.Generator) -> None:
  """Advances the AR(1) part of log frailty by `months` months."""
  rho = FRAIL_RHO_MONTH ** months
  st.frail_ar = (rho * st.frail_ar + np.sqrt(1 - rho * rho) * FRAIL_SD_AR *
                 rng.standard_normal(len(st.frail_ar))).astype(np.float32)
  set_frailty(st)


def annual_to_month(rate: np.ndarray) -> np.ndarray:
  return 1.0 - np.exp(-np.asarray(rate) / 12.0)


def onset_rates(st: State, age: np.ndarray) -> np.ndarray:
  """Annual onset hazards float32 [n, K] given age (years) and the present conditions."""
  age_k = age[:, None]
  log_rate = (_ONSET_LOG60 + _ONSET_SLOPE32 * (np.minimum(age_k, 95.0) - 60.0)
              + np.where(st.female[:, None], _ONSET_SEX_LOG[1], _ONSET_SEX_LOG[0])
              + st.present.astype(np.float32) @ LINK_LOG + 0.5 * np.log(st.frail)[:, None])
  rate = np.exp(np.minimum(log_rate, np.float32(np.log(0.6))))
  return rate * ((age_k >= _ONSET_MIN32) & (age_k < _ONSET_MAX32))


def progress(st: State, years: float, rng: np.random.Generator, t) -> None:
  """Severity progression over `years` (1/12 in the monthly step, 1 in the burn-in) at month t
  (an int, or one per person); complications rise with the duration of the disease."""
  n = len(st.female)
  alive = st.alive
  has_dm = st.present[:, LATENT_INDEX["diabetes_t2"]]
  has_htn = st.present[:, LATENT_INDEX["hypertension"]]
  stage = st.ckd_stage
  prog = np.array([0.0, 0.02, 0.03, 0.04, 0.06, 0.08, 0.0])[stage]
  prog = prog * np.where(has_dm, 1.8, 1.0) * np.where(has_htn, 1.3, 1.0)
  up = alive & (stage > 0) & (rng.random(n) < 1 - np.exp(-prog * years))
  st.ckd_stage = (stage + up).astype(np.int8)
  dm_dur = duration_factor(t, st.onset[:, LATENT_INDEX["diabetes_t2"]])
  dm_up = alive & (st.dm_sev == 1) & (rng.random(n) < 1 - np.exp(-0.06 * years * dm_dur * np.where(
      stage > 0, 1.5, 1.0)))
  st.dm_sev = (st.dm_sev + dm_up).astype(np.int8)
  ins = alive & has_dm & ~st.insulin & (rng.random(n) < 1 - np.exp(
      -np.where(st.dm_sev == 2, 0.08, 0.025) * years))
  st.insulin |= ins
  hf_dur = duration_factor(t, st.onset[:, LATENT_INDEX["heart_failure"]])
  hf_up = alive & (st.hf_sev > 0) & (st.hf_sev < 3) & (rng.random(n) < 1 - np.exp(
      -0.12 * years * hf_dur))
  st.hf_sev = (st.hf_sev + hf_up).astype(np.int8)


def new_population(n: int, first_year: int, rng: np.random.Generator) -> State:
  """People at January of first_year, with their disease history simulated by a yearly burn-in."""
  # Age mix of a US insured population (Census-like bands), then line of business by age.
  bands = np.array([[0, 18], [18, 35], [35, 50], [50, 65], [65, 75], [75, 85], [85, 100]], float)
  band_p = np.array([0.22, 0.23, 0.19, 0.19, 0.10, 0.05, 0.02])
  b = rng.choice(len(band_p), size=n, p=band_p)
  age0 = bands[b, 0] + rng.random(n) * (bands[b, 1] - bands[b, 0])
  female = rng.random(n) < np.where(age0 >= 65, 0.55, 0.51)
  birth_mi = -np.ceil(age0 * 12).astype(np.int32)
  epoch_first = (np.datetime64(f"{first_year}-01-01", "D") - np.datetime64("1970-01-01", "D"))
  epoch_first = int(epoch_first.astype(np.int64))
  birth_day = (epoch_first + np.floor(birth_mi * 30.4375 + rng.random(n) * 30)).astype(np.int64)
  st = State(
      birth_mi=birth_mi, birth_day=birth_day, female=female, frail=np.ones(n, np.float32),
      frail_base=(FRAIL_SD_BASE * rng.standard_normal(n)).astype(np.float32),
      frail_ar=(FRAIL_SD_AR * rng.standard_normal(n)).astype(np.float32),
      adherence=rng.beta(*ADHERENCE_BETA, n).astype(np.float32),
      rx_gap=np.zeros((n, len(GAP_CONDITIONS)), np.float32),
      readmit_day=np.zeros(n, np.int64), readmit_code=np.full(n, -1, np.int32),
      decline=np.zeros(n, bool),
      present=np.zeros((n, NUM_LATENT), bool), onset=np.full((n, NUM_LATENT), NEVER, np.int32),
      severity_u=rng.random((n, NUM_LATENT), dtype=np.float32),
      drug_u=rng.random((n, len(code_lib.DRUG_CLASSES)), dtype=np.float32),
      ckd_stage=np.zeros(n, np.int8), dm_sev=np.zeros(n, np.int8), insulin=np.zeros(n, bool),
      hf_sev=np.zeros(n, np.int8), last_admit=np.full(n, NEVER, np.int32),
      last_mi=np.full(n, NEVER, np.int32), preg_start=np.full(n, NEVER, np.int32),
      alive=np.ones(n, bool), death_day=np.zeros(n, np.int64), enrolled=np.zeros(n, bool),
      lob=np.zeros(n, np.int8), join_mi=np.zeros(n, np.int32), gone=np.zeros(n, bool))
  # Yearly burn-in from birth to the current age: onsets, remissions, progression, strokes/MIs.
  set_frailty(st)
  latent = np.arange(NUM_LATENT)
  for year in range(int(np.ceil(age0.max())) + 1):
    active = age0 > year
    if not active.any():
      break
    age = np.full(n, float(year), np.float32)
    t_mid = (birth_mi + 12 * year).astype(np.int32)
    rate = onset_rates(st, age)
    new = active[:, None] & ~st.present & (rng.random((n, NUM_LATENT), dtype=np.float32) <
                                           1 - np.exp(-rate))
    on_onset(st, new, t_mid, rng)
    ev = acute_rates(st, age)
    stroke = active & (rng.random(n) < 1 - np.exp(-ev[:, ACUTE_INDEX["stroke"]]))
    mi = active & (rng.random(n) < 1 - np.exp(-ev[:, ACUTE_INDEX["mi"]]))
    on_onset(st, stroke[:, None] & (latent == LATENT_INDEX["stroke"]) & ~st.present, t_mid, rng)
    on_onset(st, mi[:, None] & (latent == LATENT_INDEX["ischemic_heart_disease"]) & ~st.present,
             t_mid, rng)
    st.last_mi[mi] = t_mid[mi]
    _remit_masked(st, active, rng)
    alive_save = st.alive
    st.alive = active   # progress() acts on the rows flagged alive: here, those this old already
    progress(st, 1.0, rng, t_mid)
    st.alive = alive_save
    evolve_health(st, 12, rng)
  # People already in a terminal decline at the start, at its steady-state share (entry hazard x
  # mean duration), so the first months carry no wave of new declines.
  age_now = age0.astype(np.float32)
  active_cancer = st.present[:, CANCER_IDX] & (-st.onset[:, CANCER_IDX] < 12)
  mort = chronic_mortality(st, age_now, is_advanced(st), active_cancer)
  st.decline = rng.random(n) < np.minimum(
      annual_to_month(mort) / DECLINE_DEATH_MONTH, 0.9)
  # Enrollment: most members are covered from the start, others join later.
  join = np.where(rng.random(n) < 0.75, 0, rng.integers(1, 84, n)).astype(np.int32)
  st.join_mi = join
  st.lob = initial_lob(age0, rng)
  return st


def _remit_masked(st: State, active: np.ndarray, rng: np.random.Generator) -> None:
  p = 1 - np.exp(-REMISSION)
  off = active[:, None] & st.present & (rng.random(st.present.shape, dtype=np.float32) < p)
  st.present &= ~off
  st.onset[off] = NEVER


def on_onset(st: State, new: np.ndarray, t_row: np.ndarray, rng: np.random.Generator) -> None:
  """Bookkeeping of new onsets (bool [n, K]); t_row is each person's onset month."""
  if not new.any():
    return
  rows, _ = np.nonzero(new)
  st.present |= new
  st.onset[new] = t_row[rows]
  n = len(st.female)
  ckd_new = new[:, LATENT_INDEX["ckd"]]
  u = rng.random(n)
  st.ckd_stage[ckd_new] = np.where(u < 0.3, 2, np.where(u < 0.92, 3, 4))[ckd_new]
  st.dm_sev[new[:, LATENT_INDEX["diabetes_t2"]]] = 1
  st.present[new[:, LATENT_INDEX["diabetes_t2"]], LATENT_INDEX["prediabetes"]] = False
  st.hf_sev[new[:, LATENT_INDEX["heart_failure"]]] = 1
  st.present[new[:, LATENT_INDEX["dementia"]], LATENT_INDEX["mild_cognitive_impairment"]] = False
  st.severity_u[new] = rng.random(int(new.sum()), dtype=np.float32)


def initial_lob(age: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  u = rng.random(len(age))
  medicaid_p = np.where(age < 18, 0.42, 0.2)
  lob = np.where(u < medicaid_p, MEDICAID, COMMERCIAL)
  return np.where(age >= 65, MEDICARE, lob).astype(np.int8)


def acute_rates(st: State, age: np.ndarray) -> np.ndarray:
  """Annual acute-event hazards float32 [n, E]."""
  age_e = age[:, None]
  log_rate = (_ACUTE_LOG60 + _ACUTE_SLOPE32 * (np.minimum(age_e, 95.0) - 60.0)
              + st.present.astype(np.float32) @ ACUTE_LOG + np.log(st.frail)[:, None])
  rate = np.exp(np.minimum(log_rate, np.float32(np.log(2.0)))) * (age_e >= _ACUTE_MIN32)
  oa = st.present[:, LATENT_INDEX["osteoarthritis"]] & (age >= 45)
  rate[:, ACUTE_INDEX["joint_replacement"]] = np.where(oa, JOINT_REPLACEMENT_RATE, 0.0)
  rate[:, ACUTE_INDEX["hip_fracture"]] *= np.where(st.female, 1.5, 1.0)
  return rate


def current_codes(st: State, t: int) -> tuple[np.ndarray, np.ndarray]:
  """Per person and latent condition: the primary diagnosis code now (int32 [n, K]) and the
  probability that a coding uses an alternative code of the condition instead (float32 [n, K])."""
  n = len(st.female)
  code = np.broadcast_to(code_lib.ALT_TABLE[:, 0], (n, NUM_LATENT)).copy()
  p_alt = np.full((n, NUM_LATENT), P_ALT_CODE, np.float32)
  has = st.present
  hf = has[:, LATENT_INDEX["heart_failure"]]
  ckd = has[:, LATENT_INDEX["ckd"]]
  esrd = st.ckd_stage >= 5
  htn = np.where(hf & ckd, np.where(esrd, code_lib.HTN["hf_esrd"], code_lib.HTN["hf_ckd"]),
                 np.where(ckd, np.where(esrd, code_lib.HTN["esrd"], code_lib.HTN["ckd"]),
                          np.where(hf, code_lib.HTN["hf"], code_lib.HTN["plain"])))
  code[:, LATENT_INDEX["hypertension"]] = htn
  dm = np.where(st.dm_sev == 2, np.where(ckd, code_lib.DM["ckd"], np.where(
      st.severity_u[:, LATENT_INDEX["diabetes_t2"]] < 0.5, code_lib.DM["hyper"],
      code_lib.DM["neuro"])), code_lib.DM["plain"])
  code[:, LATENT_INDEX["diabetes_t2"]] = dm
  code[:, LATENT_INDEX["ckd"]] = code_lib.CKD_STAGE[st.ckd_stage]
  code[:, LATENT_INDEX["heart_failure"]] = code_lib.HF_SEV[st.hf_sev]
  ihd = LATENT_INDEX["ischemic_heart_disease"]
  code[:, ihd] = np.where((t - st.last_mi > 2) & (t - st.last_mi < 36) &
                          (st.severity_u[:, ihd] < 0.4), code_lib.OLD_MI, code_lib.IHD)
  breast = LATENT_INDEX["breast_cancer"]
  code[:, breast] = np.where(st.female, code[:, breast], code_lib.BREAST_MALE)
  # Cancers: after the first-year treatment phase, a non-advanced cancer is mostly coded as
  # personal history (Z85.x), which does not count for the condition.
  for j, c in enumerate(CANCERS):
    k = LATENT_INDEX[c]
    advanced = st.severity_u[:, k] < ADVANCED_FRACTION[j]
    survivor = has[:, k] & ~advanced & (t - st.onset[:, k] >= 12)
    code[:, k] = np.where(survivor, code_lib.HISTORY[c], code[:, k])
    p_alt[:, k] = np.where(survivor, np.where(t - st.onset[:, k] >= 60, 0.05, 0.2), P_ALT_CODE)
  # Stroke: the acute code for about three months, then sequelae or history codes.
  k = LATENT_INDEX["stroke"]
  late = (t - st.onset[:, k]) >= 3
  code[:, k] = np.where(late, np.where(st.severity_u[:, k] < 0.4, code_lib.STROKE_SEQUELA,
                                       code_lib.HISTORY["stroke"]), code[:, k])
  p_alt[:, k] = np.where(late, 0.0, P_ALT_CODE)
  return code.astype(np.int32), p_alt


def chronic_mortality(st: State, age: np.ndarray, advanced: np.ndarray,
                      active_cancer: np.ndarray) -> np.ndarray:
  """Annual hazard of entering the terminal decline, float [n]: a Gompertz baseline times the
  hazard ratios of the latent state."""
  mort = np.exp(MORT_A + MORT_B * np.minimum(age, 105.0)) * np.exp(
      st.present.astype(np.float32) @ MORT_LOG) * np.sqrt(st.frail)
  mort *= np.where(st.ckd_stage == 6, 3.5, np.where(st.ckd_stage >= 4, 1.5, 1.0))
  mort *= np.array([1.0, 1.0, 1.5, 2.5])[st.hf_sev]
  mort *= np.prod(np.where(advanced, ADVANCED_MORT_HR, 1.0), axis=1)
  return mort * np.where(active_cancer.any(1), 1.5, 1.0)


def is_advanced(st: State) -> np.ndarray:
  """bool [n, 4]: advanced (stage IV) cancer, per cancer of CANCERS."""
  return st.present[:, CANCER_IDX] & (st.severity_u[:, CANCER_IDX] < ADVANCED_FRACTION)
