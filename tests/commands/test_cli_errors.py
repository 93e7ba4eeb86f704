"""The command lines turn a user error into one line on stderr and a non-zero exit status,
without a traceback (`--traceback` shows it), within seconds."""

import os
import subprocess
import sys

import pytest
from conftest import write_micro_config_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(module, *args, timeout=60):
  return subprocess.run(
    [sys.executable, "-m", f"th_distill.{module}", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def _one_line_error(result, status, *fragments):
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode == status, result.stderr
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  assert "Traceback" not in result.stderr
  for fragment in fragments:
    assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
  return write_micro_config_file(tmp_path_factory.mktemp("config") / "micro.py")


@pytest.mark.parametrize(
  "override, fragments",
  [
    (
      "--config.student.stepz=1",
      ("--config.student.stepz: no such field", "did you mean student.steps?"),
    ),
    ("--config.student.learning_rate=inf", ("student.learning_rate: must be a finite number",)),
    (
      "--config.oracle.target_entropy=5.0",
      ("oracle.target_entropy: must be in (0, log task.vocab_size = 2.773)",),
    ),
  ],
)
def test_main_refuses_a_bad_config_value_in_one_line(config_file, tmp_path, override, fragments):
  _one_line_error(
    _run("main", f"--config={config_file}", f"--workdir={tmp_path}", override), 2, *fragments
  )


def test_main_names_a_config_file_without_get_config(tmp_path):
  path = tmp_path / "empty.py"
  path.write_text("x = 1\n")
  _one_line_error(
    _run("main", f"--config={path}", f"--workdir={tmp_path}"),
    2,
    f"{str(path)!r} defines no get_config() function",
  )


def test_main_refuses_a_workdir_that_is_a_file(config_file, tmp_path):
  (tmp_path / "file").write_text("")
  _one_line_error(
    _run("main", f"--config={config_file}", f"--workdir={tmp_path / 'file'}"),
    1,
    "exists and is not a directory",
  )


def test_traceback_flag_shows_the_traceback(tmp_path):
  result = _run(
    "main",
    "--config=configs/tiny.py",
    f"--workdir={tmp_path}",
    "--config.loss.beta=2",
    "--traceback",
  )
  assert result.returncode != 0 and "Traceback" in result.stderr


@pytest.mark.parametrize("mesh", ["0,1,1", "1,1", "a,b,c"])
def test_memory_refuses_a_malformed_mesh(mesh):
  _one_line_error(
    _run("planning.memory", f"--mesh={mesh}"), 2, f"--mesh={mesh}: must be three positive"
  )


def test_memory_refuses_a_mesh_that_does_not_divide_the_batch_and_positional_arguments():
  _one_line_error(
    _run("planning.memory", "--mesh=3,1,1"),
    2,
    "data x fsdp = 3 must divide student.batch_size = 32",
  )
  _one_line_error(_run("planning.memory", "configs/t5_small.py"), 2, "unexpected arguments")


def test_study_and_detector_eval_errors_are_one_line(tmp_path):
  _one_line_error(
    _run(
      "study",
      "--config=configs/studies/regimes.py",
      f"--workdir={tmp_path}",
      "--config.base.student.stepz=1",
    ),
    2,
    "did you mean base.student.steps?",
  )
  _one_line_error(_run("detector_eval", f"--workdir={tmp_path}"), 1, "no finished study run")
