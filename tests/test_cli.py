"""The binaries print config, flag and file-system errors as one line, `error: ...`, exit 2
(experiments/cli.py); a bug keeps its traceback."""

import os
import subprocess
import sys

import pytest

from experiments import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _binary(*args):
  proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                        timeout=300, check=False)
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  return proc.returncode, lines


@pytest.mark.parametrize("args,expected", [
    (("--workdir=W",), "error: config.data_dir is empty"),
    (("--workdir=W", "--config.data_dir=/nonexistent/records"),
     "error: /nonexistent/records does not exist; rebuild it with python -m data_prep.build_dataset"),
    (("--workdir=W", "--config=experiments/configs/pretrain.py:huge"),
     "error: flag --config=experiments/configs/pretrain.py:huge: unknown preset 'huge'"),
    (("--workdir=W", "--config=experiments/configs/nothere.py:tiny", "--config.data_dir=D"),
     "error: "),
    (("--workdir=W", "--config.learning_rat=1"), "error: unknown config field 'learning_rat'"),
    (("--workdir=W", "--config.optimizer.learning_rat=1"),
     "error: unknown config field 'learning_rat'; Did you mean \"learning_rate\""),
])
def test_pretrain_binary_errors_are_one_line(tmp_path, args, expected):
  args = tuple(a.replace("=W", f"={tmp_path / 'run'}") for a in args)
  if not any(a.startswith("--config=") for a in args):
    args = ("--config=experiments/configs/pretrain.py:tiny",) + args
  rc, lines = _binary("experiments.pretrain", *args)
  assert rc == 2 and len(lines) == 1 and lines[0].startswith(expected), lines[-20:]


def test_data_prep_binary_usage_error_is_one_line():
  rc, lines = _binary("data_prep.build_dataset", "--meds_dir=/tmp")
  assert rc == 2 and lines == ["error: --meds_dir and --output_dir are required (--help for usage)"]
  # Flags absl does not know are Beam's pipeline options, refused without --engine=beam.
  rc, lines = _binary("data_prep.build_dataset", "--meds_dir=/tmp", "--output_dir=/tmp/x",
                      "--min_cod_count=3")
  assert rc == 2 and lines == ["error: unexpected arguments: ['--min_cod_count=3'] (Beam pipeline "
                               "options need --engine=beam) (--help for usage)"], lines


def test_wrapper_passes_results_and_keeps_bugs_loud():
  assert cli.one_line_errors(lambda argv: argv[0])(["x"]) == "x"

  def missing(argv):
    open("/nonexistent/file.json")
  with pytest.raises(SystemExit) as e:
    cli.one_line_errors(missing)(["x"])
  assert e.value.code == 2

  def bug(argv):
    raise RuntimeError("a bug")
  with pytest.raises(RuntimeError):
    cli.one_line_errors(bug)(["x"])
