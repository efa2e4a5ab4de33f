"""The synthetic claims world: a MEDS dataset with known ground truth (see docs/synthetic_world.md).

`synthesize(output_dir, num_patients, seed)` writes the dataset; `TRUE_COMORBIDITY_LINKS` is the
true comorbidity structure of the world, (from_condition, to_condition, hazard_ratio) tuples.
"""

from lmm_jax.synth.model import TRUE_COMORBIDITY_LINKS
from lmm_jax.synth.codes import LATENT_NAMES
from lmm_jax.synth.writer import synthesize

__all__ = ["synthesize", "TRUE_COMORBIDITY_LINKS", "LATENT_NAMES"]
