r"""The dataset builder's config (`python -m data_prep.build_dataset`), documented field by field
in docs/data.md.

  python -m data_prep.build_dataset --meds_dir=DIR --output_dir=OUT --config.drug_grouping=ndc9

The config is locked: a misspelled --config.KEY is an error.
"""

from __future__ import annotations

import os

import ml_collections

from lmm_jax.data import code_metadata
from lmm_jax.data import code_systems


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg  # one configuration; its fields are the knobs
  c = ml_collections.ConfigDict()
  c.code_system_rules = code_systems.default_rules()
  c.cost_code = code_systems.DEFAULT_COST_CODE
  c.claim_id_column = "claim_id"
  c.min_code_count = 5
  c.icd10_category_tokens = True
  c.map_icd9_to_icd10 = True
  c.drug_grouping = "ndc"          # 'ndc' | 'ndc9' | 'hhs_class'
  c.time_gap_edges_days = (1, 7, 30, 91, 182, 365)
  c.num_cost_bins = 40              # claim-cost tokens: [0, low), log-spaced to high, [high, inf)
  c.cost_bin_spacing = "log"       # 'log' (fixed edges below) | 'quantile' (of the train sample)
  c.cost_bin_low = 1.0             # dollars ('log' spacing)
  c.cost_bin_high = 500_000.0
  c.cost_sample_size = 200_000     # claims kept (bounded) to fit the cost-bin quantiles ('quantile')
  c.index_date = "auto"            # 'auto' = Jan 1 of the last calendar year in the data
  c.min_history_days = 365
  c.require_full_target_year = True
  c.keep_decedents = True
  c.hash_split_fractions = (0.8, 0.1, 0.1)
  c.num_workers = os.cpu_count() or 1
  c.memory_budget_mb = 256.0       # input rows all workers hold at once (see lmm_jax.data.build.BYTES_PER_ROW)
  c.progress = True
  c.max_timeline_tokens = ml_collections.config_dict.placeholder(int)
  # Absurd values: rows outside these are dropped and counted (docs/data.md, "Absurd values").
  c.max_claim_cost = 10_000_000.0  # dollars per cost row (claim line)
  c.min_date = "1900-01-01"        # dated rows before this day are dropped
  c.max_date = "2399-12-31"        # and after it: accepts date-shifted data (MIMIC-IV: 2110-2214),
                                   # rejects the 9999-12-31 'open-ended' sentinel
  # The build fails (one sentence with the figures) when one of these splits or its task is
  # empty, or when fewer than min_share_with_target_year_data of the task examples have any claim
  # in the target year (0 turns that check off).
  c.required_splits = ("train", "tuning", "held_out")
  c.min_share_with_target_year_data = 0.05
  # The task: where prediction times come from (lmm_jax.data.meds_tasks, docs/data.md "Tasks").
  c.task = "claims"                # 'claims' (index_date above) | 'labels' | 'aces' | 'none'
  c.task_labels_dir = ""           # task='labels': a folder of MEDS label parquet files
  c.task_aces_config = ""          # task='aces': an ACES task config (experiments/configs/aces/)
  c.split_source = "metadata"      # 'metadata': subject_splits.parquet when present | 'hash'
  c.max_share_empty_histories = 0.5  # a label task with more histories empty is refused
  # metadata/codes.parquet: descriptions, and parents for generic (LAB / OTHER) codes
  # (lmm_jax.data.code_metadata): (family in parent_codes, our spelling, 'always' | 'backoff').
  c.use_code_metadata = True
  c.codes_parquet_parents = code_metadata.DEFAULT_PARENTS
  # Numeric values of generic (LAB / OTHER) rows -> per-code quantile-bin tokens fit on train
  # (lmm_jax.data.values); 0 turns them off.
  c.num_value_bins = 10
  c.value_sample_size = 2000       # train values kept per code (bounded) to fit the quantiles
  # Text values of generic rows without a numeric value -> `CODE//_T_<text>` category tokens: per
  # code its texts with >= min_code_count train rows, at most this many (the most frequent); 0
  # turns them off.
  c.max_text_values_per_code = 20
  c.numeric_text_values = True     # a text_value that is a plain number, on a row without
                                   # numeric_value, is read as its value (value bins apply)
  c.lock()
  return c
