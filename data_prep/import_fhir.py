r"""Converts FHIR R4 ExplanationOfBenefit / Patient / Coverage (CARIN Blue Button) to claims MEDS.

  python -m data_prep.import_fhir --input_dir=EXPORT --output_dir=MEDS \
      [--default_lob=COMMERCIAL] [--shard_input_mb=64] [--id_key_file=KEY]

EXPORT holds a bulk export (ExplanationOfBenefit.ndjson, Patient.ndjson, Coverage.ndjson; any
*.ndjson) or JSON bundles (*.json). Then `python -m data_prep.build_dataset --meds_dir=MEDS`
(allowed amounts are COST//ALLOWED, paid COST//PAID: `--config.cost_code=COST//PAID` trains on
paid). Every resource is converted or dropped by a named reason, counted in
MEDS/metadata/import_report.json; a malformed one exits with status 2 and one line naming the
file, the line (or bundle entry) and the element. See docs/data.md.
"""

from __future__ import annotations

from absl import flags

from data_prep import import_flags
from experiments import cli
from lmm_jax.importers import fhir

_DEFAULT_LOB = flags.DEFINE_string("default_lob", "COMMERCIAL", "Line of business of a Coverage "
                                   "without a Source of Payment Typology type.")


def main(argv: list[str]) -> None:
  del argv
  report = fhir.import_fhir(import_flags.INPUT_DIR.value, import_flags.OUTPUT_DIR.value,
                            default_lob=_DEFAULT_LOB.value, **import_flags.options())
  import_flags.print_summary(report)


if __name__ == "__main__":
  cli.run(main)
