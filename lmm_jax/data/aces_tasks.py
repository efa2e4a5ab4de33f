"""ACES task configs -> MEDS label files (the `aces` task source of `meds_tasks`).

Kept apart from `meds_tasks` (which every record reader imports) because es-aces brings polars and
hydra; only the builder imports this module.
"""

from __future__ import annotations

import os
import pathlib

from aces import config as aces_config_lib
from aces import predicates, query
from aces.run import get_and_validate_label_schema
from omegaconf import DictConfig
import pyarrow.parquet as pq

from lmm_jax.data import meds_tasks


def extract_aces(aces_config: str, data_paths: list[str], out_dir: str) -> str:
  """Runs the ACES task config on every MEDS data file (es-aces, as `aces-cli data=sharded`
  does) and writes one MEDS label file per input file under out_dir; returns out_dir."""
  if not os.path.isfile(aces_config):
    raise meds_tasks.TaskDefinitionError(f"task_aces_config={aces_config}: no such file")
  try:
    cfg = aces_config_lib.TaskExtractorConfig.load(config_path=pathlib.Path(aces_config))
  except Exception as e:  # ACES raises ValueError / KeyError / OmegaConf errors on a bad config
    raise meds_tasks.TaskDefinitionError(f"{aces_config}: not a valid ACES task config: {e}") from e
  os.makedirs(out_dir, exist_ok=True)
  for i, path in enumerate(data_paths):
    df = predicates.get_predicates_df(cfg, DictConfig({"path": path, "standard": "meds"}))
    result = query.query(cfg, df)
    result = result.rename({k: v for k, v in (("index_timestamp", "prediction_time"),
                                              ("label", "boolean_value"))
                            if k in result.columns})
    if "subject_id" not in result.columns:  # ACES's empty result has no columns
      continue
    table = get_and_validate_label_schema(result)
    pq.write_table(table, os.path.join(out_dir, f"{i:05d}.parquet"))
  return out_dir
