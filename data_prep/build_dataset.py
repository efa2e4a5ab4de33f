r"""Builds the vocabulary and ArrayRecord records from a MEDS dataset.

  python -m data_prep.build_dataset --meds_dir=DIR --output_dir=OUT \
      [--min_code_count=5] [--index_date=auto|YYYY-MM-DD] [--num_workers=N] \
      [--config.drug_grouping=ndc9 ...] [--engine=local|beam [BEAM PIPELINE OPTIONS]]

--engine=beam runs both passes as Apache Beam pipelines (lmm_jax/data/build_beam.py) with the
remaining arguments as Beam's pipeline options, e.g. --runner=DirectRunner --direct_num_workers=2
--direct_running_mode=multi_processing, or a Dataflow/Flink/Spark runner's (BUILD.md).

Writes OUT/vocab.json, OUT/report.json, OUT/timeline/*.array_record and OUT/task/*.array_record
(see lmm_jax/data/records.py and docs/data.md). Malformed input exits with status 2 and a message
naming the file and the column; a worker process that dies (killed, out of memory) exits with
status 1 and a message naming its input file.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from data_prep.configs import build_dataset as build_config
from experiments import cli
from lmm_jax import workers
from lmm_jax.data import build
from lmm_jax.data import meds_io

_MEDS_DIR = flags.DEFINE_string("meds_dir", None, "MEDS dataset root (with data/ and metadata/).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where vocab.json, report.json and the "
                                  "timeline/ and task/ shards are written.")
_MIN_CODE_COUNT = flags.DEFINE_integer("min_code_count", None, "Overrides config.min_code_count.")
_INDEX_DATE = flags.DEFINE_string("index_date", None, "'auto' or YYYY-MM-DD; overrides config.")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", None, "Worker processes; overrides config.")
_ENGINE = flags.DEFINE_enum("engine", "local", ["local", "beam"],
                            "local: worker processes on this machine; beam: an Apache Beam "
                            "pipeline, the other arguments being its pipeline options.")
_NO_PROGRESS = flags.DEFINE_bool("no_progress", False, "Hide progress bars.")
_CONFIG = config_flags.DEFINE_config_dict("config", build_config.get_config(),
                                          "Builder config; override fields with --config.x=y.")


def _local(meds_dir: str, output_dir: str, config, pipeline_args: list[str]) -> dict:
  del pipeline_args
  return build.build_dataset(meds_dir, output_dir, config)


def _beam(meds_dir: str, output_dir: str, config, pipeline_args: list[str]) -> dict:
  from lmm_jax.data import build_beam  # pylint: disable=g-import-not-at-top (apache_beam: only here)
  return build_beam.build_dataset(meds_dir, output_dir, config, pipeline_args)


_ENGINES = {"local": _local, "beam": _beam}


def main(argv: list[str]) -> None:
  if len(argv) > 1 and _ENGINE.value != "beam":
    raise app.UsageError(f"unexpected arguments: {argv[1:]} (Beam pipeline options need "
                         "--engine=beam)")
  if not _MEDS_DIR.value or not _OUTPUT_DIR.value:
    raise app.UsageError("--meds_dir and --output_dir are required")
  config = _CONFIG.value
  if _MIN_CODE_COUNT.value is not None:
    config.min_code_count = _MIN_CODE_COUNT.value
  if _INDEX_DATE.value is not None:
    config.index_date = _INDEX_DATE.value
  if _NUM_WORKERS.value is not None:
    config.num_workers = _NUM_WORKERS.value
  if _NO_PROGRESS.value:
    config.progress = False
  try:
    report = _ENGINES[_ENGINE.value](_MEDS_DIR.value, _OUTPUT_DIR.value, config, argv[1:])
  except meds_io.MEDSFormatError as e:
    print(f"error: malformed MEDS input: {e}", file=sys.stderr)
    sys.exit(2)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except workers.WorkerError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  dropped = {k: v for k, v in report["dropped"].items() if v}
  print(f"input rows {report['input_rows']:,}  used {report['used_rows']:,}  dropped "
        f"{sum(report['dropped'].values()):,} {dropped or ''}")
  print(f"vocabulary {report['vocab_size']:,} tokens  index date {report['index_date']}  "
        f"splits from {report['splits_source']}  {report['elapsed_s']:.1f}s")
  for split in report["patients"]:
    excluded = {k: v for k, v in report["task_exclusions"][split].items() if v}
    print(f"  {split:9s} patients {report['patients'][split]:>9,}  tokens "
          f"{report['tokens'][split]:>12,}  task examples {report['task_examples'][split]:>9,}"
          f"  excluded {excluded or 0}")
  print(f"wrote {_OUTPUT_DIR.value}")


if __name__ == "__main__":
  cli.run(main, pass_unknown_flags=True)
