"""lmm_jax: a JAX/Flax Large Medical Model over MEDS claims event sequences."""

__version__ = "0.1.0"
