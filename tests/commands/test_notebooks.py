"""The Colab notebooks (colab/*.ipynb): committed without outputs, and executed top to bottom in
their small setting (TH_DISTILL_SMALL=1), each in a temporary working directory, on a kernel that
runs this interpreter."""

import json
import os
import re
import sys
import time

import pytest
from conftest import FAST_COMPILE_FLAGS

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLAB = os.path.join(ROOT, "colab")
NOTEBOOKS = ("quickstart", "library_tour", "detecting_hacking")
KERNEL = "th_distill_notebooks"


def _read(name):
  return nbformat.read(os.path.join(COLAB, f"{name}.ipynb"), as_version=4)


def _code(nb):
  return [cell.source for cell in nb.cells if cell.cell_type == "code"]


def test_notebooks_are_committed_without_outputs():
  assert sorted(f[: -len(".ipynb")] for f in os.listdir(COLAB) if f.endswith(".ipynb")) == sorted(
    NOTEBOOKS
  )
  for name in NOTEBOOKS:
    nb = _read(name)
    nbformat.validate(nb)
    for cell in nb.cells:
      if cell.cell_type == "code":
        assert cell.outputs == [] and cell.execution_count is None, f"{name}: clear the outputs"
    assert os.path.getsize(os.path.join(COLAB, f"{name}.ipynb")) < 50_000, name


def test_every_notebook_installs_and_reads_the_small_flag_first():
  setups = {name: _code(_read(name))[0] for name in NOTEBOOKS}
  assert len(set(setups.values())) == 1, "the setup cells differ"
  setup = setups[NOTEBOOKS[0]]
  assert 'os.environ.get("TH_DISTILL_SMALL", "0") == "1"' in setup
  assert "REPO_URL = " in setup and "pip" in setup
  # The runtime's JAX is kept (pinned) when it is recent enough, and the cell says so.
  assert ">= (0, 7)" in setup and "keeping the runtime's JAX" in setup


def test_detecting_hacking_builds_the_quickstarts_study():
  def study(name):
    text = "\n".join(_code(_read(name)))
    found = re.findall(
      r"# --- the quickstart's study ---\n.*?# --- end of the quickstart's study", text, re.S
    )
    assert len(found) == 1, name
    return found[0]

  assert study("detecting_hacking") == study("quickstart")


def _repo_url():
  """setup.py's REPO_URL, and its 'owner/name'."""
  with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
    url = re.search(r'^REPO_URL = "(https://github\.com/([^"/]+/[^"/]+))"$', f.read(), re.M)
  return url.group(1), url.group(2)


def test_the_repository_url_is_defined_once_and_everything_agrees():
  url, repo = _repo_url()
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  assert set(re.findall(r"colab\.research\.google\.com/github/([^/]+/[^/]+)/", readme)) == {repo}
  for name in NOTEBOOKS:
    assert f"colab.research.google.com/github/{repo}/blob/main/colab/{name}.ipynb" in readme, name
    nb = _read(name)
    assert f'REPO_URL = "{url}"  # @param {{type:"string"}}' in _code(nb)[0], name
    # A committed figure near the top, from the same repository, so GitHub shows a result.
    images = re.findall(
      r"!\[[^]]*\]\((\S+)\)", "\n".join(c.source for c in nb.cells[:3] if c.cell_type == "markdown")
    )
    prefix = f"https://raw.githubusercontent.com/{repo}/main/"
    assert len(images) == 1 and images[0].startswith(prefix), (name, images)
    assert os.path.isfile(os.path.join(ROOT, images[0][len(prefix) :])), images[0]


def test_library_tour_installs_the_hf_extra_before_importing_torch():
  code = _code(_read("library_tour"))
  install = next(i for i, c in enumerate(code) if 'install("hf")' in c)
  assert install < next(i for i, c in enumerate(code) if "import torch" in c)


def _execute(names, tmp_path, monkeypatch, fast_compile=False):
  """Runs the notebooks `names` in order, each in its own working directory under `tmp_path`,
  sharing TH_DISTILL_WORKDIR; fails on the first cell that raises. Returns {name: seconds}."""
  # A kernel spec that starts this interpreter (the test venv), whatever else is installed.
  spec = tmp_path / "jupyter" / "kernels" / KERNEL
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(
    json.dumps(
      {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "th_distill tests",
        "language": "python",
      }
    )
  )
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
  monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
  monkeypatch.setenv("TH_DISTILL_SMALL", "1")
  monkeypatch.setenv("TH_DISTILL_WORKDIR", str(tmp_path / "quickstart_workdir"))
  # One CPU device, as on a CPU runtime; XLA's default code generation unless `fast_compile`
  # (a notebook that compiles more than it computes: conftest.FAST_COMPILE_FLAGS).
  if fast_compile:
    monkeypatch.setenv("XLA_FLAGS", " ".join(FAST_COMPILE_FLAGS))
  else:
    monkeypatch.delenv("XLA_FLAGS", raising=False)

  seconds = {}
  for name in names:
    cwd = tmp_path / name
    cwd.mkdir()
    client = nbclient.NotebookClient(
      _read(name),
      kernel_name=KERNEL,
      timeout=600,
      startup_timeout=180,
      resources={"metadata": {"path": str(cwd)}},
    )
    start = time.time()
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    seconds[name] = round(time.time() - start, 1)
  print("notebook seconds:", seconds)
  return seconds


@pytest.mark.slow
def test_quickstart_then_detecting_hacking_run_in_the_small_setting(tmp_path, monkeypatch):
  # detecting_hacking reuses the quickstart's finished workdir (it would run the same study).
  _execute(("quickstart", "detecting_hacking"), tmp_path, monkeypatch)
  assert os.path.exists(tmp_path / "quickstart_workdir" / "summary.json")


@pytest.mark.slow
def test_library_tour_runs_in_the_small_setting(tmp_path, monkeypatch):
  _execute(("library_tour",), tmp_path, monkeypatch, fast_compile=True)
