"""Model tests share the training tests' compilation cache fixture."""

from tests.train.conftest import jax_compilation_cache  # pylint: disable=unused-import
