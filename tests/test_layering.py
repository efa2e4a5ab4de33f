"""The library stands alone: nothing under lmm_jax/ imports the binaries' packages."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORBIDDEN = ("experiments", "data_prep", "tests", "benchmarks")


def _imports(path: str) -> list[tuple[int, str]]:
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), filename=path)
  out = []
  for node in ast.walk(tree):  # every import, also inside functions
    if isinstance(node, ast.Import):
      out += [(node.lineno, alias.name) for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      out.append((node.lineno, node.module))
  return out


def _library_files() -> list[str]:
  files = []
  for dirpath, _, names in os.walk(os.path.join(ROOT, "lmm_jax")):
    files += [os.path.join(dirpath, n) for n in names if n.endswith(".py")]
  return sorted(files)


def test_library_imports_no_experiment_or_data_prep_code():
  files = _library_files()
  assert len(files) > 30
  bad = [f"{os.path.relpath(path, ROOT)}:{line} imports {name}"
         for path in files for line, name in _imports(path)
         if name.split(".")[0] in FORBIDDEN]
  assert not bad, "\n".join(bad)


def test_the_scan_sees_a_forbidden_import(tmp_path):
  path = tmp_path / "m.py"
  path.write_text("def f():\n  from experiments.configs import pretrain\n")
  assert _imports(str(path)) == [(2, "experiments.configs")]
