"""Repository contracts: the README's commands, CI, and exact pins."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*parts: str) -> str:
  with open(os.path.join(ROOT, *parts)) as f:
    return f.read()


def _readme_commands() -> list[str]:
  return re.findall(r"```bash\n(.+?)\n```", _read("README.md"), flags=re.S)


def test_readme_first_two_commands_install_and_run():
  main_job, tests = _readme_commands()[:2]
  assert "pip install -r requirements.txt" in main_job.replace("-q ", "")
  assert "experiments.reproduce" in main_job
  assert "pytest" in tests and "requirements.txt" in tests


def test_ci_runs_exactly_the_readme_test_command():
  test_command = _readme_commands()[1]
  ci_lines = [l for l in _read(".ci", "run").splitlines() if l and not l.startswith("#")]
  assert test_command in ci_lines


def test_requirements_are_exact_pins():
  lines = [l.strip() for l in _read("requirements.txt").splitlines()
           if l.strip() and not l.startswith("#")]
  assert lines
  unpinned = [l for l in lines if not re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[A-Za-z0-9_.+\-]+", l)]
  assert not unpinned, unpinned
