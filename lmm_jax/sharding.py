"""Device mesh and logical-axis sharding rules.

The model names every parameter dimension with a logical axis ('vocab', 'embed', 'mlp', 'heads',
'kv_heads', 'kv', 'time_features'); activations use 'batch', 'length' and 'act_embed'. The config
maps those names onto the axes of a named mesh ('data', 'fsdp', 'tensor'), so one model runs
data-parallel, fully-sharded (ZeRO-3 style) or tensor-parallel by changing two config entries:

  config.mesh_shape = (-1, 1, 1)        # one axis may be -1: "all remaining devices"
  config.logical_rules = DEFAULT_RULES  # logical name -> mesh axis, tuple of axes, or None

A dimension whose size the mapped mesh axes do not divide is replicated instead (and logged), so
small test models run on any mesh.
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Any, Iterable, Sequence

from absl import logging
from flax import nnx
from flax import traverse_util
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

MESH_AXES = ("data", "fsdp", "tensor")

# Rules: logical axis -> mesh axis (str), several mesh axes (tuple) or None (replicated).
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("time_features", None),
)

Rules = Sequence[tuple[str, Any]]


def make_mesh(mesh_shape: Sequence[int], mesh_axes: Sequence[str] = MESH_AXES,
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A named mesh over all (or the given) devices; one entry of mesh_shape may be -1."""
  devices = list(jax.devices() if devices is None else devices)
  shape = list(mesh_shape)
  if len(shape) != len(mesh_axes):
    raise ValueError(f"mesh_shape {tuple(mesh_shape)} does not match mesh_axes {tuple(mesh_axes)}")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh_shape {tuple(mesh_shape)}: at most one axis may be -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"mesh_shape {tuple(mesh_shape)} does not divide {len(devices)} devices")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(f"mesh_shape {tuple(shape)} needs {math.prod(shape)} devices, "
                     f"have {len(devices)}")
  axis_types = (jax.sharding.AxisType.Auto,) * len(mesh_axes)
  return jax.make_mesh(tuple(shape), tuple(mesh_axes), axis_types=axis_types, devices=devices)


def _mesh_axes_of(name: str | None, rules: Rules) -> tuple[str, ...]:
  if name is None:
    return ()
  for logical, mesh_axes in rules:
    if logical == name:
      if mesh_axes is None:
        return ()
      return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
  return ()


def axis_size(mesh: jax.sharding.Mesh, logical: str, rules: Rules) -> int:
  """How many shards the rules split a logical axis into on this mesh."""
  return math.prod(mesh.shape[a] for a in _mesh_axes_of(logical, rules))


def logical_to_spec(logical_axes: Sequence[str | None], rules: Rules,
                    mesh: jax.sharding.Mesh | None = None,
                    shape: Sequence[int] | None = None) -> P:
  """PartitionSpec of an array whose dimensions carry these logical names.

  With mesh and shape given, a dimension the mapped mesh axes do not divide is replicated, and a
  mesh axis already used by an earlier dimension is not used twice.
  """
  used: set[str] = set()
  spec = []
  for i, name in enumerate(logical_axes):
    axes = tuple(a for a in _mesh_axes_of(name, rules) if a not in used)
    if mesh is not None:
      axes = tuple(a for a in axes if mesh.shape[a] > 1)
      if shape is not None and axes and shape[i] % math.prod(mesh.shape[a] for a in axes):
        logging.info("sharding: dim %d (%s) of shape %s not divisible by %s; replicated",
                     i, name, tuple(shape), axes)
        axes = ()
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return P(*spec)


def logical_axes(abstract_state: nnx.State) -> dict[str, Any]:
  """Pure dict of the logical axis names of every parameter (for tree_shardings)."""
  flat = {}
  for path, var in nnx.to_flat_state(abstract_state):
    if not isinstance(var, nnx.Param):
      raise TypeError(f"model variable {'/'.join(map(str, path))} is a {type(var).__name__}; the "
                      "trainer supports models whose only state is nnx.Param")
    if not all(isinstance(k, str) for k in path):
      raise TypeError(f"parameter path {path} has non-string keys; name submodules with strings "
                      "(setattr(self, f'layer_{i}', ...)) so checkpoints keep their structure")
    names = var.get_metadata().get("out_sharding") or (None,) * len(var.shape)
    if len(names) != len(var.shape):
      raise ValueError(f"parameter {'/'.join(path)} of shape {var.shape} has logical axes {names}")
    flat[path] = tuple(names)
  return traverse_util.unflatten_dict(flat)


def tree_shardings(abstract_tree: Any, logical_tree: Any, mesh: jax.sharding.Mesh,
                   rules: Rules) -> Any:
  """NamedShardings for a tree of arrays/ShapeDtypeStructs given a matching tree of logical axes."""
  return jax.tree.map(
      lambda a, names: NamedSharding(mesh, logical_to_spec(names, rules, mesh, a.shape)),
      abstract_tree, logical_tree, is_leaf=lambda x: isinstance(x, tuple) and all(
          isinstance(n, (str, type(None))) for n in x))


def path_keys(path) -> tuple[str, ...]:
  """The string keys of a jax.tree path (dict keys, attribute names, sequence indices)."""
  keys = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        keys.append(str(getattr(k, attr)))
        break
  return tuple(keys)


def mirror_shardings(abstract_tree: Any, params_abstract: Any, params_shardings: Any,
                     mesh: jax.sharding.Mesh) -> Any:
  """Shardings for a tree (optimizer state) whose leaves mirror parameters.

  A leaf whose key path ends with a parameter's key path and has that parameter's shape gets the
  parameter's sharding (Adam moments, accumulated gradients); anything else is replicated.
  """
  by_path = {}
  for (path, a), s in zip(jax.tree_util.tree_flatten_with_path(params_abstract)[0],
                          jax.tree.leaves(params_shardings)):
    by_path[path_keys(path)] = (tuple(a.shape), s)
  replicated = NamedSharding(mesh, P())

  def pick(path, leaf):
    keys = path_keys(path)
    for start in range(len(keys)):
      hit = by_path.get(keys[start:])
      if hit is not None and hit[0] == tuple(getattr(leaf, "shape", ())):
        return hit[1]
    return replicated

  return jax.tree_util.tree_map_with_path(pick, abstract_tree)


def batch_sharding(mesh: jax.sharding.Mesh, rules: Rules, ndim: int) -> NamedSharding:
  """Batch-major arrays: the leading dimension over the 'batch' mesh axes, the rest replicated."""
  return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), rules, mesh))


def vocab_multiple(base: int, mesh: jax.sharding.Mesh, rules: Rules) -> int:
  """A multiple for vocabulary padding that the mesh axes sharding 'vocab' divide."""
  return math.lcm(base, axis_size(mesh, "vocab", rules))


def put_batch(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh,
              rules: Rules) -> dict[str, jax.Array]:
  """Process-local numpy batch -> global arrays sharded over the batch axes (multi-host safe)."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, rules, v.ndim), v)
          for k, v in batch.items()}


# Activation constraints: the trainer sets the mesh and rules while tracing; without them (unit
# tests, single-device use) `constrain` does nothing.
_CTX = threading.local()


@contextlib.contextmanager
def activation_rules(mesh: jax.sharding.Mesh, rules: Rules) -> Iterable[None]:
  prev = getattr(_CTX, "value", None)
  _CTX.value = (mesh, tuple(rules))
  try:
    yield
  finally:
    _CTX.value = prev


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  ctx = getattr(_CTX, "value", None)
  if ctx is None:
    return x
  mesh, rules = ctx
  spec = logical_to_spec(logical_axes, rules, mesh, x.shape)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
