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
from absl import flags
from ml_collections import config_flags

from experiments import cli
from lmm_jax.importers import claims
from lmm_jax.importers import common

_INPUT_DIR = flags.DEFINE_string("input_dir", None, "Directory of the extract's tables.",
                                 required=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the MEDS dataset is written.",
                                  required=True)
_MAPPING = config_flags.DEFINE_config_file(
    "mapping", None, "Column mapping config (a .py file, e.g. data_prep/configs/claims_mapping.py)",
    lock_config=True)
_SHARD_INPUT_MB = flags.DEFINE_float("shard_input_mb", 64.0, "Input megabytes per output shard "
                                     "(bounds memory: one shard is sorted at a time).")
_ID_KEY_FILE = flags.DEFINE_string("id_key_file", "", "File holding the key of the member-id "
                                   "hash (default: unkeyed).")


def main(argv: list[str]) -> None:
  del argv
  if _MAPPING.value is None:
    raise app.UsageError("--mapping is required (e.g. data_prep/configs/claims_mapping.py)")
  report = claims.import_claims(_INPUT_DIR.value, _OUTPUT_DIR.value, _MAPPING.value,
                                shard_input_mb=_SHARD_INPUT_MB.value,
                                id_key=common.read_id_key(_ID_KEY_FILE.value))
  print(common.summary(report, _OUTPUT_DIR.value))


if __name__ == "__main__":
  cli.run(main)
