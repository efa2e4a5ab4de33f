r"""Converts a Synthea CSV export to claims MEDS.

  python -m data_prep.import_synthea --input_dir=output/csv --output_dir=MEDS \
      [--shard_input_mb=64] [--id_key_file=KEY]

Reads patients, payers, payer_transitions, encounters, conditions, procedures, medications,
claims and claims_transactions (.csv; patients and encounters required). Then
`python -m data_prep.build_dataset --meds_dir=MEDS`. Every row is converted or dropped by a named
reason, counted in MEDS/metadata/import_report.json; a malformed one exits with status 2 and one
line naming the file, the line and the column. See docs/data.md.
"""

from __future__ import annotations

from data_prep import import_flags
from experiments import cli
from lmm_jax.importers import synthea


def main(argv: list[str]) -> None:
  del argv
  report = synthea.import_synthea(import_flags.INPUT_DIR.value, import_flags.OUTPUT_DIR.value,
                                  **import_flags.options())
  import_flags.print_summary(report)


if __name__ == "__main__":
  cli.run(main)
