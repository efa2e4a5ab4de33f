"""Sharding: parameters placed as the logical rules say; sharded step == single-device step."""

import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from lmm_jax import sharding
from lmm_jax.train import trainer as trainer_lib
from tests.train import helpers

# Computed once with seed 0 on the tiny preset (vocabulary 100 padded to 128) and the first
# RandomBatches batch of seed 0; see test_golden_one_step_loss.
GOLDEN_STEP0_LOSS = 4.61471


def _trainer(mesh_shape, devices=None, **overrides):
  overrides.setdefault("num_train_steps", 12)  # the schedule of the other tests: cache hits
  config = helpers.tiny_config(mesh_shape=mesh_shape, **overrides)
  mesh = sharding.make_mesh(config.mesh_shape, config.mesh_axes, devices=devices)
  return trainer_lib.Trainer(config, helpers.RandomPretrainTask(config), mesh=mesh)


@pytest.fixture(scope="module")
def single():
  return _trainer((1, 1, 1), devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def sharded():
  return _trainer((2, 2, 2))


def _batch(seed=0):
  return next(helpers.RandomBatches(seed, 8, 64, 100))


def _loss(out) -> float:
  return float(out["sums"]["loss"]) / float(out["weights"]["loss"])


def test_make_mesh_fills_minus_one_and_validates():
  mesh = sharding.make_mesh((-1, 2, 1))
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  with pytest.raises(ValueError, match="at most one"):
    sharding.make_mesh((-1, -1, 2))
  with pytest.raises(ValueError, match="devices"):
    sharding.make_mesh((3, 1, 1))


def test_params_and_optimizer_state_sharded_by_rules(sharded):
  state = sharded.init_state(0)
  p = state["params"]
  assert p["embedding"].sharding.spec == P("tensor", "fsdp")
  assert p["lm_head"].sharding.spec == P("fsdp", "tensor")
  assert p["layer_0"]["mlp"]["gate"].sharding.spec == P("fsdp", "tensor")
  assert p["layer_0"]["mlp"]["down"].sharding.spec == P("tensor", "fsdp")
  assert p["layer_1"]["attn"]["q"].sharding.spec == P("fsdp", "tensor", None)
  assert p["layer_1"]["attn"]["o"].sharding.spec == P("tensor", None, "fsdp")
  assert p["final_norm"]["scale"].sharding.spec == P("fsdp")
  assert p["time_embed"]["proj"].sharding.spec == P(None, "fsdp")
  # Really split: each device holds a quarter of the MLP kernel.
  gate = p["layer_0"]["mlp"]["gate"]
  assert gate.addressable_shards[0].data.shape == (gate.shape[0] // 2, gate.shape[1] // 2)
  # Adam moments mirror their parameters.
  mu = [s for s in jax.tree.leaves(state["opt_state"]) if s.shape == gate.shape]
  assert len(mu) == 8 and all(m.sharding.spec == gate.sharding.spec for m in mu)
  # The padded vocabulary divides the 'vocab' shards.
  assert p["embedding"].shape[0] % 2 == 0


def test_sharded_step_matches_single_device(single, sharded):
  batch = _batch()
  losses, params = [], []
  for t in (single, sharded):
    state = t.init_state(0)
    for _ in range(2):
      state, out = t.train_step(state, t.device_batch(batch))
    losses.append(_loss(out))
    params.append(jax.device_get(state["params"]))
  assert losses[0] == pytest.approx(losses[1], abs=1e-5)
  for a, b in zip(jax.tree.leaves(params[0]), jax.tree.leaves(params[1])):
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_golden_one_step_loss(single):
  state = single.init_state(0)
  _, out = single.train_step(state, single.device_batch(_batch()))
  loss = _loss(out)
  assert abs(loss - np.log(100)) < 0.1  # near-uniform predictions at init
  assert loss == pytest.approx(GOLDEN_STEP0_LOSS, abs=1e-4)


def test_gradient_accumulation_matches_full_batch(sharded):
  accum = _trainer((2, 2, 2), **{"optimizer.grad_accum_steps": 2})
  batch = _batch(3)
  params = []
  for t in (sharded, accum):
    state = t.init_state(0)
    state, _ = t.train_step(state, t.device_batch(batch))
    params.append(jax.device_get(state["params"]))
  for a, b in zip(jax.tree.leaves(params[0]), jax.tree.leaves(params[1])):
    np.testing.assert_allclose(a, b, atol=1e-6)
