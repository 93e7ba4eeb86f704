"""The public API: the names README.md, docs/*.md and the notebooks import exist in modules
docs/api.md documents, every name docs/api.md lists exists, and `import th_distill` stays light
and reports the installed version."""

import glob
import importlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys

import pytest

import th_distill

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
API = open(os.path.join(REPO, "docs", "api.md"), encoding="utf-8").read()
# The module tables (before the command lines'): | `th_distill.module` | `name`, `name` (...) |
ROWS = dict(
  re.findall(
    r"^\| `(th_distill[\w.]*)` \| (.*) \|$", API.split("## Command lines")[0], re.MULTILINE
  )
)
OPTIONAL = {"th_distill.data.seqio_tasks": "seqio"}  # modules of an extra


def _module(name: str):
  if name in OPTIONAL:
    pytest.importorskip(OPTIONAL[name])
  return importlib.import_module(name)


def _documented_imports() -> list[tuple[str, str, str]]:
  """(file, module, name) of every `from th_distill... import ...` in the docs and notebooks."""
  found = []
  for path in ["README.md", *glob.glob("docs/*.md"), *glob.glob("colab/*.ipynb")]:
    text = open(os.path.join(REPO, path), encoding="utf-8").read()
    if path.endswith(".ipynb"):
      text = "\n".join("".join(cell["source"]) for cell in json.loads(text)["cells"])
    for module, names in re.findall(
      r"^\s*from (th_distill[\w.]*) import ([\w, ]+)", text, re.MULTILINE
    ):
      found += [(path, module, name.strip()) for name in names.split(",") if name.strip()]
  return found


@pytest.mark.parametrize("path, module, name", _documented_imports())
def test_every_documented_import_is_public_api(path, module, name):
  submodule = f"{module}.{name}"
  if submodule in ROWS:  # `from th_distill import experiment`
    _module(submodule)
    return
  exported = module == "th_distill" and name in th_distill.__all__
  assert exported or module in ROWS, f"{path}: {module} is not in docs/api.md"
  assert hasattr(_module(module), name), f"{path}: {module} has no {name}"


@pytest.mark.parametrize("module", sorted(ROWS))
def test_every_name_docs_api_lists_exists(module):
  # The first backquoted word of each item, before any note in parentheses.
  names = re.findall(r"(?:^|, )`([A-Za-z_]\w*)", re.sub(r"\(.*?\)", "", ROWS[module]))
  assert names
  missing = [name for name in names if not hasattr(_module(module), name)]
  assert not missing, f"docs/api.md lists {missing} in {module}"


def test_import_th_distill_is_light_and_versioned():
  code = (
    "import sys, th_distill; print(th_distill.__version__); "
    "print(sorted(m for m in ('tensorflow', 'torch', 'seqio', 'matplotlib') "
    "if m in sys.modules))"
  )
  result = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr
  version, heavy = result.stdout.splitlines()
  assert heavy == "[]"
  assert version == importlib.metadata.version("th_distill")
