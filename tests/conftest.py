"""Shared fixtures: a micro configuration of the whole pipeline that runs in seconds, and one
persistent XLA compilation cache for the whole test run."""

import atexit
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest


def _share_compilations():
  """Points JAX's persistent compilation cache at one temporary directory for this test run,
  before JAX is imported: the pytest-xdist workers and every subprocess (`python -m
  th_distill.main`, the notebooks' kernels, the multi-device scripts) inherit it through the
  environment, so a program that one process compiled is loaded, not compiled again, by the
  others (a micro run compiles ~30 programs, ~20 of its ~30 CPU-seconds). Only what is compiled
  changes hands: every run still traces, runs and checks everything. The directory starts empty
  and is removed when the run that made it (the controller under xdist) ends; a cache directory
  set by the user is kept."""
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    directory = tempfile.mkdtemp(prefix="th_distill_tests_xla_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = directory
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
  # Every program, however small or quick to compile (the defaults skip those under 1 s).
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")


# XLA:CPU code generation that compiles fast: LLVM without its optimisation passes, and the
# classic element-wise emitters. The tests compile far more than they compute: a micro run's
# programs compile in under half the CPU time, a 16-device compile of a paper program in ~40%.
# The programs themselves (HLO: fusion, sharding, buffers, collectives, FLOPs) are the same; only
# their machine code runs slower, which the tests' tiny arrays do not notice, and rounds
# differently: a test marked `optimized_xla` (one that compares two different programs bit for
# bit, or computes more than it compiles) runs in a pytest process of its own with the XLA_FLAGS
# the run was started with. A flag the user's XLA_FLAGS sets is left as set.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
_GIVEN_XLA_FLAGS = "TH_DISTILL_TESTS_GIVEN_XLA_FLAGS"  # XLA_FLAGS as the run was started
_OPTIMIZED = "TH_DISTILL_TESTS_OPTIMIZED_XLA"  # set in the process of an `optimized_xla` test


def xla_flags(*flags: str) -> str:
  """XLA_FLAGS for a subprocess of this run: the run's own (the user's and the fast-compile
  flags) and `flags` (e.g. a forced device count)."""
  return " ".join((os.environ.get("XLA_FLAGS", ""), *flags)).strip()


def _compile_fast():
  """Adds the fast-compile flags to XLA_FLAGS before JAX starts a backend; the pytest-xdist
  workers and the subprocesses inherit them."""
  os.environ.setdefault(_GIVEN_XLA_FLAGS, os.environ.get("XLA_FLAGS", ""))
  if os.environ.get(_OPTIMIZED):
    return
  given = os.environ.get("XLA_FLAGS", "").split()
  names = {flag.split("=")[0] for flag in given}
  own = [flag for flag in FAST_COMPILE_FLAGS if flag.split("=")[0] not in names]
  os.environ["XLA_FLAGS"] = " ".join((*given, *own))


_share_compilations()
_compile_fast()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
  """Runs an `optimized_xla` test in `python -m pytest` of its own, under the XLA_FLAGS the run
  was started with: it passes, fails (with the child's report) or is skipped as it does there."""
  if pyfuncitem.get_closest_marker("optimized_xla") is None or os.environ.get(_OPTIMIZED):
    return None
  env = {**os.environ, _OPTIMIZED: "1", "XLA_FLAGS": os.environ[_GIVEN_XLA_FLAGS]}
  child = subprocess.run(
    [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"]
    + ["-rs", pyfuncitem.nodeid],
    cwd=str(pyfuncitem.config.rootpath),
    env=env,
    capture_output=True,
    text=True,
  )
  summary = child.stdout.strip().splitlines()[-1] if child.stdout.strip() else ""
  if child.returncode == 0 and re.fullmatch(r"=*\s*1 skipped.*", summary):
    pytest.skip(f"in its own process: {child.stdout[-2000:]}")
  if child.returncode != 0 or not re.fullmatch(r"=*\s*1 passed.*", summary):
    pytest.fail(
      f"in its own process (exit status {child.returncode}):\n{child.stdout}{child.stderr}"
    )
  return True


from th_distill.config import base_config, model_config  # noqa: E402


def micro_config():
  """base_config() shrunk to seconds: vocab 16, 4-token prompts and responses, tiny models."""
  c = base_config()
  c.task.vocab_size = 16
  c.task.prompt_length = 4
  c.task.response_length = 4
  c.prompts.num_oracle = 64
  c.prompts.num_distill = 32
  c.prompts.num_eval = 16
  small = dict(
    vocab_size=16,
    d_model=16,
    d_kv=4,
    d_ff=32,
    num_heads=2,
    num_encoder_layers=1,
    num_decoder_layers=1,
  )
  c.oracle.model = model_config("tiny", **small)
  c.oracle.target_entropy = 1.5
  c.teacher.model = model_config("tiny", **small)
  c.teacher.steps = 5
  c.teacher.batch_size = 8
  c.student.model = model_config("tiny", **small)
  c.student.steps = 6
  c.student.sft_steps = 3
  c.student.batch_size = 8
  c.offline.num_prompts = 8
  c.offline.generations_per_prompt = 2
  c.eval.num_train_prompts = 8
  c.eval.batch_size = 8
  c.eval_every = 3
  c.eval_log_points = 0
  c.checkpoint_every = 4
  c.write_figures = False  # ~2 s a run; the tests that check the figures turn them on
  return c


def write_micro_config_file(path, *settings: str) -> str:
  """Writes a config file whose `get_config()` is `micro_config()` followed by `settings` (Python
  statements on `c`), for tests that run `python -m th_distill.main`; returns its path."""
  lines = [
    "import sys",
    f"sys.path.insert(0, {os.path.dirname(__file__)!r})",
    "from conftest import micro_config",
    "",
    "def get_config():",
    "  c = micro_config()",
    *(f"  {line}" for line in settings),
    "  return c",
    "",
  ]
  path.write_text("\n".join(lines))
  return str(path)


def finished_micro_run(tmp_path_factory, regime: str):
  """A finished micro workdir of `regime` (checkpoints at steps 4 and 6) and its config."""
  from th_distill import experiment

  config = micro_config()
  config.regimes = (regime,)
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  experiment.run(config, workdir)
  return workdir, config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished micro run of the offline regime (once per test module) and its config."""
  return finished_micro_run(tmp_path_factory, "offline")


@pytest.fixture
def workdir(finished, tmp_path):
  """A copy of `finished`'s workdir (its path), for a test to damage."""
  copy = str(tmp_path / "run")
  shutil.copytree(finished[0], copy)
  return copy


@pytest.fixture
def micro():
  return micro_config()
