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

from absl import flags

from experiments import cli
from lmm_jax.importers import common
from lmm_jax.importers import synthea

_INPUT_DIR = flags.DEFINE_string("input_dir", None, "Synthea CSV export directory.",
                                 required=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the MEDS dataset is written.",
                                  required=True)
_SHARD_INPUT_MB = flags.DEFINE_float("shard_input_mb", 64.0, "Input megabytes per output shard "
                                     "(bounds memory: one shard is sorted at a time).")
_ID_KEY_FILE = flags.DEFINE_string("id_key_file", "", "File holding the key of the member-id "
                                   "hash (default: unkeyed).")


def main(argv: list[str]) -> None:
  del argv
  report = synthea.import_synthea(_INPUT_DIR.value, _OUTPUT_DIR.value,
                                  shard_input_mb=_SHARD_INPUT_MB.value,
                                  id_key=common.read_id_key(_ID_KEY_FILE.value))
  print(common.summary(report, _OUTPUT_DIR.value))


if __name__ == "__main__":
  cli.run(main)
