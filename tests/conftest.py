"""Shared fixtures: a micro configuration of the whole pipeline that runs in seconds, and one
persistent XLA compilation cache for the whole test run."""

import atexit
import os
import shutil
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


_share_compilations()

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


@pytest.fixture
def micro():
  return micro_config()
