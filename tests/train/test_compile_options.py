"""The train step compiles with the CPU backend options of `trainer.compiler_options`."""

import jax

from lmm_jax.train import trainer as trainer_lib
from tests.train import test_sharding


def test_cpu_step_keeps_ynnpack_for_dots_only():
  t = test_sharding._trainer((1, 1, 1), devices=jax.devices()[:1])  # pylint: disable=protected-access
  assert trainer_lib.compiler_options(t.mesh) == trainer_lib.CPU_COMPILER_OPTIONS
  hlo = t.compile(t.device_batch(test_sharding._batch())).as_text()  # pylint: disable=protected-access
  fusions = [line for line in hlo.splitlines() if '"__ynn_fusion"' in line]
  assert fusions, "no YNNPACK fusion at all: the option name or its value is not understood"
  # Each remaining YNNPACK fusion wraps a dot; none is a reduce or elementwise-only fusion.
  bodies = {line.split("calls=%")[1].split(",")[0] for line in fusions}
  for body in bodies:
    text = hlo.split(f"%{body} ")[1].split("\n}\n")[0]
    assert " dot(" in text, f"YNNPACK fusion {body} has no dot"
