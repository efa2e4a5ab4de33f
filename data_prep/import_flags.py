"""The flags every importer binary shares (data_prep/import_{fhir,synthea,claims}.py).

Importing this module defines them; `options()` gives the keyword arguments every importer
function takes besides its own.
"""

from __future__ import annotations

from typing import Any

from absl import flags

from lmm_jax.importers import common

INPUT_DIR = flags.DEFINE_string("input_dir", None, "Directory of the input files.", required=True)
OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the MEDS dataset is written.",
                                 required=True)
_SHARD_INPUT_MB = flags.DEFINE_float("shard_input_mb", 64.0, "Input megabytes per output shard "
                                     "(bounds memory: one shard is sorted at a time).")
_ID_KEY_FILE = flags.DEFINE_string("id_key_file", "", "File holding the key of the member-id "
                                   "hash (default: unkeyed).")


def options() -> dict[str, Any]:
  """shard_input_mb and id_key, from the flags."""
  return {"shard_input_mb": _SHARD_INPUT_MB.value,
          "id_key": common.read_id_key(_ID_KEY_FILE.value)}


def print_summary(report: dict[str, Any]) -> None:
  print(common.summary(report, OUTPUT_DIR.value))
