"""Optimizer-state shardings: each Adam moment takes exactly its parameter's sharding (through
optax.tree_map_params, not a path guess), the step counts are replicated."""

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import optax
import pytest

from lmm_jax import sharding
from lmm_jax.train import optimizer as opt_lib
from lmm_jax.train import trainer as trainer_lib
from tests.train import helpers

_MOMENTS = ("mu", "nu")


def _param_path(state_path) -> tuple[str, ...] | None:
  """The parameter path below an Adam moment ('.../mu/layer_0/mlp/gate'), else None."""
  for i, k in enumerate(state_path):
    if isinstance(k, jax.tree_util.GetAttrKey) and k.name in _MOMENTS:
      return tuple(str(e.key) for e in state_path[i + 1:])
  return None


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _check(opt_state_sh, params_sh, replicated) -> int:
  """Asserts the moments' and scalars' shardings; returns the number of moment leaves."""
  moments = 0
  for path, s in jax.tree_util.tree_leaves_with_path(opt_state_sh):
    param = _param_path(path)
    if param is None:
      assert s == replicated, jax.tree_util.keystr(path)
    else:
      moments += 1
      assert s == _get(params_sh, param), jax.tree_util.keystr(path)
  return moments


@pytest.mark.parametrize("task_cls,overrides,trained", [
    (helpers.RandomPretrainTask, {}, "all"),
    (helpers.RegressionTask, {"optimizer.backbone_lr_multiplier": 0.1}, "all"),
    (helpers.RegressionTask, {"optimizer.freeze_backbone": True}, "head"),
])
def test_every_moment_has_its_parameters_sharding(task_cls, overrides, trained):
  config = helpers.tiny_config(mesh_shape=(2, 2, 2), **overrides)
  t = trainer_lib.Trainer(config, task_cls(config))
  params_sh = t.state_shardings["params"]
  replicated = NamedSharding(t.mesh, P())
  moments = _check(t.state_shardings["opt_state"], params_sh, replicated)
  trained_params = jax.tree.leaves(params_sh if trained == "all" else params_sh["head"])
  assert moments == 2 * len(trained_params)
  # The mesh really splits parameters over both fsdp and tensor, so equality is not trivial.
  specs = {s.spec for s in jax.tree.leaves(params_sh)}
  assert P("fsdp", "tensor") in specs and P("tensor", "fsdp") in specs
  # The abstract state (restore targets) carries the same shardings.
  assert jax.tree.leaves(jax.tree.map(lambda a: a.sharding, t.abstract_state["opt_state"])) == (
      jax.tree.leaves(t.state_shardings["opt_state"]))


def test_opt_state_shardings_of_accumulating_multisteps():
  """Any params-shaped state (MultiSteps' accumulated gradients too) follows the parameters."""
  mesh = sharding.make_mesh((1, 4, 2))
  params = {"a": {"w": jax.ShapeDtypeStruct((8, 4), jnp.float32),
                  "b": jax.ShapeDtypeStruct((4,), jnp.float32)},
            "h": {"w": jax.ShapeDtypeStruct((4, 2), jnp.float32)}}
  params_sh = {"a": {"w": NamedSharding(mesh, P("fsdp", "tensor")),
                     "b": NamedSharding(mesh, P("fsdp"))},
               "h": {"w": NamedSharding(mesh, P(None, "tensor"))}}
  labels = {"a": {"w": "backbone", "b": "backbone"}, "h": {"w": "head"}}
  config = helpers.tiny_config()
  tx, _ = opt_lib.make_optimizer(config.optimizer, 10, labels)
  tx = optax.MultiSteps(tx, every_k_schedule=2)
  abstract = jax.eval_shape(tx.init, params)
  replicated = NamedSharding(mesh, P())
  out = opt_lib.opt_state_shardings(tx, abstract, params_sh, replicated)
  assert jax.tree.structure(out) == jax.tree.structure(abstract)
  assert out.acc_grads == params_sh
  assert out.mini_step == replicated and out.gradient_step == replicated
  assert _check(out.inner_opt_state, params_sh, replicated) == 2 * 3


def test_decay_mask_matches_patterns_on_slash_paths():
  x2, x1 = jnp.zeros((4, 4)), jnp.zeros((4,))
  params = {"embedding": x2, "layer_0": {"mlp": {"gate": x2}, "norm": {"scale": x1}},
            "head": {"w": x2, "v": x2}, "stack": [x2, x2]}
  mask = opt_lib.decay_mask_fn(("embedding", r"^head/w$", r"^stack/1$"))(params)
  assert mask == {"embedding": False, "layer_0": {"mlp": {"gate": True}, "norm": {"scale": False}},
                  "head": {"w": False, "v": True}, "stack": [True, False]}
