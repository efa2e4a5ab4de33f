"""The predictions files: round trips, metadata and clear errors on bad input."""

import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from lmm_jax import conditions
from lmm_jax.eval import predictions as P

META = {"kind": "finetuned", "data_dir": "/data", "split": "held_out", "num_params": 1234,
        "description": "test model"}
C = conditions.NUM_CONDITIONS


def test_cost_round_trip(tmp_path):
  ids = np.array([5, 3, 9])
  path = P.write_cost_predictions(str(tmp_path), "m1", ids, [1.0, 2.0, 3.0], [1.5, 2.5, 3.5],
                                  meta=META, y_pred_capped=[1.0, 2.0, 3.0],
                                  quantiles={"p10": [0.1, 0.2, 0.3], "p90": [9.0, 9.0, 9.0]})
  assert path == os.path.join(str(tmp_path), "predictions", "cost", "m1.parquet")
  schema = pq.read_schema(path)
  assert schema.field("subject_id").type == "int64"
  assert schema.field("y_pred").type == "double"
  p = P.read_cost_predictions(path)
  assert p.model == "m1"
  assert p.meta["num_members"] == 3 and p.meta["task"] == "cost"
  assert p.meta["num_params"] == 1234 and p.meta["kind"] == "finetuned"
  np.testing.assert_array_equal(p.subject_id, ids)
  np.testing.assert_allclose(p.y_pred, [1.5, 2.5, 3.5])
  np.testing.assert_allclose(p.y_pred_capped, [1.0, 2.0, 3.0])
  assert sorted(p.quantiles) == ["p10", "p90"]
  assert not [f for f in os.listdir(os.path.dirname(path)) if ".tmp" in f]


def test_chronic_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  y = rng.integers(0, 2, (4, C))
  prior = rng.integers(0, 2, (4, C))
  p = rng.random((4, C))
  path = P.write_chronic_predictions(str(tmp_path), "m2", [1, 2, 3, 4], y, p, prior,
                                     meta=dict(META, num_params=None))
  names = pq.read_schema(path).names
  assert names[:4] == ["subject_id", "hypertension_true", "hypertension_pred",
                       "hypertension_prior"]
  r = P.read_chronic_predictions(path)
  assert r.conditions == conditions.CONDITION_NAMES
  np.testing.assert_array_equal(r.y_true, y)
  np.testing.assert_array_equal(r.y_prior, prior)
  np.testing.assert_allclose(r.y_pred, p)
  assert r.meta["num_params"] is None


@pytest.mark.parametrize("kwargs,match", [
    ({"subject_id": [1, 1]}, "duplicate"),
    ({"y_pred": [1.0, np.inf]}, "non-finite"),
    ({"y_true": [1.0]}, "shape"),
    ({"meta": dict(META, kind="magic")}, "kind"),
    ({"meta": {"kind": "baseline"}}, "lacks"),
    ({"model": "../escape"}, "model name"),
])
def test_cost_writer_rejects(tmp_path, kwargs, match):
  args = {"model": "m", "subject_id": [1, 2], "y_true": [1.0, 2.0], "y_pred": [1.0, 2.0],
          "meta": META}
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    P.write_cost_predictions(str(tmp_path), args.pop("model"), args.pop("subject_id"),
                             args.pop("y_true"), args.pop("y_pred"), **args)


def test_chronic_writer_rejects(tmp_path):
  y = np.zeros((2, C), int)
  with pytest.raises(ValueError, match="probabilities.*hypertension_pred"):
    P.write_chronic_predictions(str(tmp_path), "m", [1, 2], y, np.full((2, C), 1.5), y, meta=META)
  with pytest.raises(ValueError, match="0/1"):
    P.write_chronic_predictions(str(tmp_path), "m", [1, 2], y + 2, np.zeros((2, C)), y, meta=META)
  with pytest.raises(ValueError, match="shape"):
    P.write_chronic_predictions(str(tmp_path), "m", [1, 2], y[:, :3], np.zeros((2, C)), y,
                                meta=META)


def test_reader_rejects_foreign_parquet(tmp_path):
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "x.parquet")
  pq.write_table(pa.table({"subject_id": [1]}), path)
  with pytest.raises(ValueError, match="no `lmm_jax` metadata"):
    P.read_cost_predictions(path)


def test_find_predictions(tmp_path):
  P.write_cost_predictions(str(tmp_path / "run_a"), "x", [1], [1.0], [1.0], meta=META)
  P.write_cost_predictions(str(tmp_path / "deep" / "run_b"), "y", [1], [1.0], [1.0], meta=META)
  P.write_chronic_predictions(str(tmp_path / "run_a"), "x", [1], np.zeros((1, C)),
                              np.zeros((1, C)), np.zeros((1, C)), meta=META)
  found = P.find_predictions(str(tmp_path))
  assert sorted(os.path.basename(p) for p in found["cost"]) == ["x.parquet", "y.parquet"]
  assert len(found["chronic"]) == 1
  with pytest.raises(FileNotFoundError):
    P.find_predictions(str(tmp_path / "missing"))
