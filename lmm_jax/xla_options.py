"""The one owner of XLA compiler options: every jit in lmm_jax (train, eval, init, prefill and
decode, attribution) is built by `jit` here, so a backend option is set in one place.

    step = xla_options.jit(fn, donate_argnums=0)                  # platform: the default backend
    step = xla_options.jit(fn, platform=mesh.devices.flat[0].platform)

The options are chosen by the platform the computation runs on, resolved when the function is
first called or lowered (not at import: the backend must not start before the binaries and
tests have set their XLA flags).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax

# XLA:CPU hands dots, elementwise and reduce fusions to YNNPACK by default; profiled on the
# 2-core CPU (docs/training.md, "Speed"), XLA's own loop emitters run the elementwise and reduce
# work (softmax and its backward, norms, the loss) faster, so YNNPACK keeps the dots only.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}

_BY_PLATFORM: dict[str, dict[str, str]] = {"cpu": CPU_COMPILER_OPTIONS}


def compiler_options(platform: str) -> dict[str, str] | None:
  """The backend options for compiling on `platform` ('cpu', 'gpu', 'tpu'); None: XLA's own."""
  options = _BY_PLATFORM.get(platform)
  return dict(options) if options is not None else None


def mesh_platform(mesh: jax.sharding.Mesh | None) -> str | None:
  """The platform of a mesh's devices (None without a mesh: the default backend's)."""
  return None if mesh is None else mesh.devices.flat[0].platform


class _Jit:
  """`jax.jit(fun, compiler_options=..., **kwargs)`, built on first use."""

  def __init__(self, fun: Callable[..., Any], platform: str | None, kwargs: dict[str, Any]):
    self._fun, self._platform, self._kwargs = fun, platform, kwargs
    functools.update_wrapper(self, fun)

  @functools.cached_property
  def jitted(self) -> Any:
    platform = self._platform or jax.default_backend()
    return jax.jit(self._fun, compiler_options=compiler_options(platform), **self._kwargs)

  def __call__(self, *args, **kwargs):
    return self.jitted(*args, **kwargs)

  def lower(self, *args, **kwargs):
    return self.jitted.lower(*args, **kwargs)


def jit(fun: Callable[..., Any] | None = None, *, platform: str | None = None,
        **jit_kwargs) -> Any:
  """jax.jit with the compiler options of `platform` (default: the default backend's); usable as
  a decorator, `functools.partial(xla_options.jit, static_argnames=...)` included."""
  if fun is None:
    return functools.partial(jit, platform=platform, **jit_kwargs)
  return _Jit(fun, platform, jit_kwargs)
