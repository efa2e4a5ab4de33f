"""Device mesh and logical-axis sharding rules.

The model names every parameter dimension with a logical axis ('vocab', 'embed', 'mlp', 'heads',
'kv_heads', 'kv', 'time_features'); activations use 'batch', 'length' and 'act_embed'. The config
maps those names onto the axes of a named mesh ('data', 'fsdp', 'tensor'), so one model runs
data-parallel, fully-sharded (ZeRO-3 style) or tensor-parallel by changing two config entries:

  config.mesh_shape = (-1, 1, 1)        # one axis may be -1: "all remaining devices"
  config.logical_rules = DEFAULT_RULES  # logical name -> mesh axis, tuple of axes, or None

The names are translated by flax's logical-axis rules engine (`flax.linen.logical_to_mesh_axes`,
with flax's `logical_axis_rules` context for activations); our one policy on top: a mesh axis of
size 1 is dropped, and a dimension whose size the mapped mesh axes do not divide is replicated
instead (logged once), so small test models run on any mesh.
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Any, Iterator, Sequence

from absl import logging
from flax import linen
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


def normalize_rules(rules: Rules) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
  """Rules as flax wants them: mesh axes a str, a tuple or None (config.json turns tuples into
  lists)."""
  out = []
  for rule in rules:
    if len(rule) != 2:
      raise ValueError(f"logical rule {rule!r} is not a (logical axis, mesh axes) pair")
    logical, mesh_axes = rule
    if mesh_axes is not None and not isinstance(mesh_axes, str):
      mesh_axes = tuple(mesh_axes)
    out.append((logical, mesh_axes))
  return tuple(out)


def _as_tuple(mesh_axes: str | Sequence[str] | None) -> tuple[str, ...]:
  if mesh_axes is None:
    return ()
  return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)


def axis_size(mesh: jax.sharding.Mesh, logical: str, rules: Rules) -> int:
  """How many shards the rules split a logical axis into on this mesh."""
  (mesh_axes,) = linen.logical_to_mesh_axes((logical,), normalize_rules(rules))
  return math.prod(mesh.shape[a] for a in _as_tuple(mesh_axes))


# Each replicated (names, shape, mesh axes) is logged once, not on every trace of `constrain`.
_LOGGED: set[tuple[Any, ...]] = set()


def logical_to_spec(logical_axes: Sequence[str | None], rules: Rules,
                    mesh: jax.sharding.Mesh | None = None,
                    shape: Sequence[int] | None = None) -> P:
  """PartitionSpec of an array whose dimensions carry these logical names.

  Flax's rules engine (`flax.linen.logical_to_mesh_axes`: rules in order of priority, a mesh axis
  used by one dimension only) maps names to mesh axes; on top, our policy: with a mesh, mesh axes
  of size 1 are dropped, and with a shape too, a dimension the mapped mesh axes do not divide is
  replicated (logged once), so small models run on any mesh.
  """
  if shape is not None and len(shape) != len(logical_axes):
    raise ValueError(f"logical axes {tuple(logical_axes)} do not fit shape {tuple(shape)}")
  spec = linen.logical_to_mesh_axes(tuple(logical_axes), normalize_rules(rules))
  if mesh is None:
    return spec
  out = []
  for i, mesh_axes in enumerate(spec):
    axes = tuple(a for a in _as_tuple(mesh_axes) if mesh.shape[a] > 1)
    if shape is not None and axes and shape[i] % math.prod(mesh.shape[a] for a in axes):
      key = (tuple(logical_axes), tuple(shape), i, axes)
      if key not in _LOGGED:
        _LOGGED.add(key)
        logging.info("sharding: dim %d (%s) of shape %s not divisible by %s; replicated",
                     i, logical_axes[i], tuple(shape), axes)
      axes = ()
    out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return P(*out)


def logical_axes(abstract_state: nnx.State) -> dict[str, Any]:
  """Pure dict of the logical axis names of every parameter (for tree_shardings).

  The names are each nnx.Param's `out_sharding` metadata (set by nnx.with_partitioning), read
  directly rather than through nnx.get_partition_spec, which would translate them by whatever
  flax logical-axis rules are in context and drop our replicate-if-indivisible policy.
  """
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
  """NamedShardings for a tree of arrays/ShapeDtypeStructs given a matching tree of logical axes
  (tuples of names, as `logical_axes` gives)."""
  def one(path: jax.tree_util.KeyPath, a: Any, names: Sequence[str | None]) -> NamedSharding:
    try:
      return NamedSharding(mesh, logical_to_spec(names, rules, mesh, a.shape))
    except ValueError as e:
      raise ValueError(f"{jax.tree_util.keystr(path, simple=True, separator='/')}: {e}") from None

  return jax.tree_util.tree_map_with_path(one, abstract_tree, logical_tree)


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
# tests, single-device use) `constrain` does nothing. The rules live in flax's logical-axis-rules
# context, so flax's own helpers (nnx.get_partition_spec, nn.with_logical_constraint) see them too;
# the mesh is ours (not jax.set_mesh, which would change how everything else is traced).
_MESH = threading.local()


@contextlib.contextmanager
def activation_rules(mesh: jax.sharding.Mesh, rules: Rules) -> Iterator[None]:
  prev = getattr(_MESH, "value", None)
  _MESH.value = mesh
  try:
    with linen.logical_axis_rules(normalize_rules(rules)):
      yield
  finally:
    _MESH.value = prev


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """x constrained to the sharding its logical axes map to (inside `activation_rules`)."""
  mesh = getattr(_MESH, "value", None)
  rules = linen.get_logical_axis_rules()
  if mesh is None or not rules:
    return x
  spec = logical_to_spec(logical_axes, rules, mesh, x.shape)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
