"""Every jit compiles with the CPU backend options of `lmm_jax.xla_options` (train, eval, sampler)."""

import jax
import jax.numpy as jnp
import numpy as np

from lmm_jax import xla_options
from tests.sampling import test_decode
from tests.train import test_sharding


def _assert_ynnpack_dots_only(hlo: str) -> None:
  fusions = [line for line in hlo.splitlines() if '"__ynn_fusion"' in line]
  assert fusions, "no YNNPACK fusion at all: the option name or its value is not understood"
  # Each remaining YNNPACK fusion wraps a dot; none is a reduce or elementwise-only fusion.
  bodies = {line.split("calls=%")[1].split(",")[0] for line in fusions}
  for body in bodies:
    text = hlo.split(f"%{body} ")[1].split("\n}\n")[0]
    assert " dot(" in text, f"YNNPACK fusion {body} has no dot"


def test_options_are_chosen_by_platform():
  assert xla_options.compiler_options("cpu") == xla_options.CPU_COMPILER_OPTIONS
  assert xla_options.compiler_options("tpu") is None
  with np.testing.assert_raises_regex(Exception, "No such compile option"):
    bad = {"cpu": {"xla_cpu_no_such_option": "1"}}
    orig = dict(xla_options._BY_PLATFORM)  # pylint: disable=protected-access
    xla_options._BY_PLATFORM.update(bad)  # pylint: disable=protected-access
    try:
      xla_options.jit(lambda x: x + 1)(jnp.ones(2))
    finally:
      xla_options._BY_PLATFORM.clear()  # pylint: disable=protected-access
      xla_options._BY_PLATFORM.update(orig)  # pylint: disable=protected-access


def _lowered_options(lowered) -> dict:
  return dict(lowered._lowering._compiler_options_kvs)  # pylint: disable=protected-access


def test_train_eval_and_sampler_keep_ynnpack_for_dots_only():
  # The train step is compiled and its HLO read; eval and the sampler (prefill and decode loop in
  # one jit) are only lowered (compiling them too would triple the test's time): the same options.
  t = test_sharding._trainer((1, 1, 1), devices=jax.devices()[:1])  # pylint: disable=protected-access
  batch = t.device_batch(test_sharding._batch())  # pylint: disable=protected-access
  _assert_ynnpack_dots_only(t.compile(batch).as_text())
  params = t.abstract_state["params"]
  assert _lowered_options(t._eval_jit.lower(params, batch)) == xla_options.CPU_COMPILER_OPTIONS  # pylint: disable=protected-access
  s = test_decode._sampler(test_decode._model(), n=2, t=4)  # pylint: disable=protected-access
  b = s.make_batch([test_decode._history(np.random.default_rng(0), 6)], [0])  # pylint: disable=protected-access
  lowered = s._jit.lower(s.params, b, s.gap_days, jnp.uint32(0), sc=s.sc)  # pylint: disable=protected-access
  assert _lowered_options(lowered) == xla_options.CPU_COMPILER_OPTIONS
