"""Sharding: parameters placed as the logical rules say; sharded step == single-device step."""

from absl import logging
from flax import linen
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
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


def _mesh(shape):
  return sharding.make_mesh(shape, devices=jax.devices()[:int(np.prod(shape))])


def test_rules_map_logical_names_and_drop_size_one_axes():
  rules = sharding.DEFAULT_RULES
  assert sharding.logical_to_spec(("vocab", "embed"), rules) == P("tensor", "fsdp")  # no mesh
  assert sharding.logical_to_spec(("batch", None), rules, _mesh((4, 2, 1))) == P(("data", "fsdp"),
                                                                                 None)
  assert sharding.logical_to_spec(("batch", None), rules, _mesh((8, 1, 1))) == P("data", None)
  assert sharding.logical_to_spec(("vocab", "embed"), rules, _mesh((8, 1, 1))) == P(None, None)
  assert sharding.logical_to_spec(("unknown", "kv"), rules, _mesh((2, 2, 2))) == P(None, None)
  # Rules read back from config.json have lists for tuples.
  json_rules = [["batch", ["data", "fsdp"]], ["embed", "fsdp"], ["kv", None]]
  assert sharding.logical_to_spec(("batch", "embed"), json_rules, _mesh((2, 2, 2))) == P(
      ("data", "fsdp"), None)  # fsdp is taken by the higher-priority 'batch' rule
  assert sharding.axis_size(_mesh((2, 2, 2)), "batch", json_rules) == 4
  # A later rule for the same name is the fallback when the first one's mesh axis is taken.
  fallback = (("heads", "tensor"), ("mlp", "tensor"), ("mlp", "fsdp"))
  assert sharding.logical_to_spec(("heads", "mlp"), fallback, _mesh((2, 2, 2))) == P("tensor",
                                                                                    "fsdp")
  assert sharding.vocab_multiple(128, _mesh((1, 1, 8)), rules) == 128
  assert sharding.vocab_multiple(12, _mesh((1, 1, 8)), rules) == 24


def test_indivisible_dims_are_replicated_and_logged_once(monkeypatch):
  logged = []
  monkeypatch.setattr(logging, "info", lambda *args: logged.append(args))
  mesh = _mesh((2, 2, 2))
  for _ in range(3):
    # 'embed' -> fsdp (2) does not divide 3; 'mlp' -> tensor (2) divides 10.
    assert sharding.logical_to_spec(("embed", "mlp"), sharding.DEFAULT_RULES, mesh,
                                    (3, 10)) == P(None, "tensor")
  assert len(logged) == 1 and "not divisible" in logged[0][0]
  # 'batch' -> data x fsdp (4) does not divide 6 rows.
  assert sharding.batch_sharding(mesh, sharding.DEFAULT_RULES, 2).spec == P(("data", "fsdp"), None)
  assert sharding.logical_to_spec(("batch", None), sharding.DEFAULT_RULES, mesh, (6, 4)) == P(
      None, None)
  with pytest.raises(ValueError, match="do not fit shape"):
    sharding.logical_to_spec(("embed",), sharding.DEFAULT_RULES, mesh, (4, 4))


def test_tree_shardings_name_the_parameter_on_bad_axes():
  abstract = {"layer": {"w": jax.ShapeDtypeStruct((4, 4), np.float32)}}
  with pytest.raises(ValueError, match="layer/w"):
    sharding.tree_shardings(abstract, {"layer": {"w": ("embed", "embed")}}, _mesh((2, 2, 2)),
                            sharding.DEFAULT_RULES)


def test_model_on_a_mesh_its_heads_do_not_divide():
  """tiny has 4 heads: on 8 tensor shards the head dims are replicated, the MLP still split."""
  config = helpers.tiny_config(mesh_shape=(1, 1, 8))
  t = trainer_lib.Trainer(config, helpers.RandomPretrainTask(config))
  p = t.state_shardings["params"]
  assert p["layer_0"]["attn"]["q"].spec == P(None, None, None)
  assert p["layer_0"]["attn"]["o"].spec == P(None, None, None)
  assert p["layer_0"]["mlp"]["gate"].spec == P(None, "tensor")
  assert p["embedding"].spec == P("tensor", None)
  q_moments = [s for path, s in jax.tree_util.tree_leaves_with_path(t.state_shardings["opt_state"])
               if "/layer_0/attn/q" in jax.tree_util.keystr(path, simple=True, separator="/")]
  assert len(q_moments) == 2 and all(s.spec == P(None, None, None) for s in q_moments)


def test_constrain_applies_the_rules_only_inside_activation_rules():
  mesh = _mesh((2, 2, 2))
  x = np.zeros((8, 6), np.float32)
  f = jax.jit(lambda x: sharding.constrain(x * 2, ("batch", "act_embed")))
  assert sharding.constrain(x, ("batch", None)) is x  # no context: no-op
  with sharding.activation_rules(mesh, sharding.DEFAULT_RULES):
    assert dict(linen.get_logical_axis_rules())["batch"] == ("data", "fsdp")  # flax sees them
    y = f(x)
    z = jax.jit(lambda x: sharding.constrain(x * 2, ("batch", None)))(x[:6])  # 6 rows: replicated
  assert not linen.get_logical_axis_rules()
  assert y.sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"), None)), 2)
  assert z.sharding.is_fully_replicated


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
  # Adam moments are placed like their parameters (the count scalars replicated).
  mu = [s for s in jax.tree.leaves(state["opt_state"]) if s.shape == gate.shape]
  assert len(mu) == 8 and all(m.sharding.spec == gate.sharding.spec for m in mu)
  for path, x in jax.tree_util.tree_leaves_with_path(state["opt_state"]):
    if x.ndim == 0:
      assert x.sharding.spec == P(), jax.tree_util.keystr(path)
    else:  # .../mu/<parameter path>
      below = [i for i, k in enumerate(path) if getattr(k, "name", None) in ("mu", "nu")][0]
      param = p
      for k in path[below + 1:]:
        param = param[k.key]
      assert x.sharding == param.sharding, jax.tree_util.keystr(path)
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
