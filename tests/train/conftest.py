"""A persistent XLA compilation cache for the training tests.

Many tests build trainers for the same tiny model (and a subprocess repeats a run), so identical
programs would otherwise be compiled again and again; the cache compiles each once per session.
A cached executable is the same program, so results (including bitwise resume checks) are unchanged.
"""

import os

import jax
import pytest

_OPTIONS = {"jax_compilation_cache_dir": None, "jax_persistent_cache_min_compile_time_secs": 0.0,
            "jax_persistent_cache_min_entry_size_bytes": 0}


@pytest.fixture(scope="session", autouse=True)
def jax_compilation_cache(tmp_path_factory):
  cache_dir = str(tmp_path_factory.mktemp("jax_cache"))
  previous = {k: getattr(jax.config, k) for k in _OPTIONS}
  env_before = {k: os.environ.get(k) for k in ("JAX_COMPILATION_CACHE_DIR",
                                               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
  for k, v in _OPTIONS.items():
    jax.config.update(k, cache_dir if k == "jax_compilation_cache_dir" else v)
  # Subprocesses (the resume worker, the binary) share the cache through the environment.
  os.environ["JAX_COMPILATION_CACHE_DIR"] = cache_dir
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  yield cache_dir
  for k, v in previous.items():
    jax.config.update(k, v)
  for k, v in env_before.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
