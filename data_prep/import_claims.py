r"""Converts a claims extract (claim header / line tables, CSV or parquet) to claims MEDS.

  python -m data_prep.import_claims --input_dir=EXTRACT --output_dir=MEDS \
      --mapping=data_prep/configs/claims_mapping.py [--mapping.format=parquet] \
      [--shard_input_mb=64] [--id_key_file=KEY]

Then `python -m data_prep.build_dataset --meds_dir=MEDS ...`. Every input row is converted or
dropped by a named reason, counted in MEDS/metadata/import_report.json. Malformed input exits
with status 2 and one line naming the file, the line and the column. See docs/data.md.
"""

from __future__ import annotations

from absl import app
from ml_collections import config_flags

from data_prep import import_flags
from experiments import cli
from lmm_jax.importers import claims

_MAPPING = config_flags.DEFINE_config_file(
    "mapping", None, "Column mapping config (a .py file, e.g. data_prep/configs/claims_mapping.py)",
    lock_config=True)


def main(argv: list[str]) -> None:
  del argv
  if _MAPPING.value is None:
    raise app.UsageError("--mapping is required (e.g. data_prep/configs/claims_mapping.py)")
  report = claims.import_claims(import_flags.INPUT_DIR.value, import_flags.OUTPUT_DIR.value,
                                _MAPPING.value, **import_flags.options())
  import_flags.print_summary(report)


if __name__ == "__main__":
  cli.run(main)
