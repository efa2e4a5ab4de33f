"""The three import binaries: counts on success, one line and exit status 2 on bad input."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from lmm_jax.importers import common
from tests.importers import worlds

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(REPO, "tests", "importers", "fixtures")


def _binary(*args):
  proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                        timeout=300, check=False)
  return proc.returncode, proc.stdout, [l for l in proc.stderr.splitlines() if l.strip()]


def _extract(tmp_path) -> str:
  src = str(tmp_path / "extract")
  worlds.write_extract(src, worlds.members(3, seed=9))
  return src


@pytest.mark.parametrize("binary,source", [
    ("data_prep.import_fhir", "fhir"), ("data_prep.import_synthea", "synthea"),
    ("data_prep.import_claims", None)])
def test_binaries_write_meds_and_print_counts(tmp_path, binary, source):
  src = os.path.join(FIXTURES, source) if source else _extract(tmp_path)
  out = tmp_path / "meds"
  mapping = () if source else ("--mapping=data_prep/configs/claims_mapping.py",)
  rc, stdout, stderr = _binary(binary, f"--input_dir={src}", f"--output_dir={out}", *mapping)
  assert rc == 0, stderr[-5:]
  with open(out / "metadata" / common.REPORT_FILE) as f:
    report = json.load(f)
  assert f"records {report['records']:,}" in stdout and "wrote" in stdout
  assert not any("M0000" in line or "Patient1" in line for line in stdout.splitlines() + stderr)


def test_bad_input_and_bad_mapping_are_one_line_exit_2(tmp_path):
  src = tmp_path / "fhir"
  shutil.copytree(os.path.join(FIXTURES, "fhir"), src)
  with open(src / "Coverage.ndjson", "a") as f:
    f.write('{"resourceType": "Coverage", "status": "active", "period": {"start": "soon"}}\n')
  rc, _, lines = _binary("data_prep.import_fhir", f"--input_dir={src}",
                         f"--output_dir={tmp_path / 'out'}")
  assert rc == 2 and len(lines) == 1
  assert lines[0].startswith("error: ") and "Coverage.ndjson, line 2" in lines[0]
  rc, _, lines = _binary("data_prep.import_claims", f"--input_dir={_extract(tmp_path)}",
                         f"--output_dir={tmp_path / 'out'}",
                         "--mapping=data_prep/configs/claims_mapping.py",
                         "--mapping.headers.alowed=X")
  assert rc == 2 and len(lines) == 1 and "alowed" in lines[0], lines
