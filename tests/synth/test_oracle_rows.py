"""lmm_jax.baselines.oracle on a synthesized world: the v2 columns load and the median row."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from lmm_jax import conventions
from lmm_jax.baselines import features
from lmm_jax.baselines import oracle as oracle_lib


def test_oracle_rows_carry_median_and_standard_errors(tiny_data_dir, tmp_path):
  path = oracle_lib.oracle_path(tiny_data_dir)
  assert path is not None
  held = features.load_split(tiny_data_dir, conventions.HELD_OUT, progress=False)
  o = oracle_lib.load(path, held)
  assert len(o.rows) > 0
  for arr in (o.median_cost, o.expected_cost_se, o.median_cost_se):
    assert arr is not None and arr.shape == o.expected_cost.shape and np.all(arr >= 0)
  assert o.p_se_MxC.shape == o.p_MxC.shape and np.all(o.p_se_MxC <= 0.5 / np.sqrt(255) + 1e-6)
  # Costs are right-skewed: the conditional median lies below the mean for most members.
  assert np.mean(o.median_cost < o.expected_cost) > 0.7
  meta = {"kind": "oracle", "data_dir": tiny_data_dir, "split": conventions.HELD_OUT,
          "num_params": 0, "description": "conditional median of the synthetic world"}
  out = oracle_lib.write_median_row(str(tmp_path), held, o, meta)
  table = pq.read_table(out)
  assert table.num_rows == len(o.rows) and oracle_lib.ORACLE_MEDIAN in out


def test_old_oracle_files_still_load(tiny_data_dir, tmp_path):
  path = oracle_lib.oracle_path(tiny_data_dir)
  table = pq.read_table(path)
  old = table.select([c for c in table.column_names
                      if not (c.endswith("_se") or c in ("median_cost", "oracle_rollouts"))])
  pq.write_table(old, tmp_path / "old.parquet")
  held = features.load_split(tiny_data_dir, conventions.HELD_OUT, progress=False)
  o = oracle_lib.load(str(tmp_path / "old.parquet"), held)
  assert o.median_cost is None and o.p_se_MxC is None
  assert oracle_lib.write_median_row(str(tmp_path), held, o, {}) is None
