"""The command lines turn a user error into one line on stderr and a non-zero exit status,
without a traceback (`--traceback` shows it), within seconds."""

import os
import subprocess
import sys

import pytest
from conftest import micro_config, write_micro_config_file

from th_distill import cli, study
from th_distill import config as config_lib

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


def test_traceback_flag_adds_the_traceback_and_keeps_the_exit_status(tmp_path):
  args = ("--config=configs/tiny.py", f"--workdir={tmp_path}", "--config.loss.beta=2")
  plain, shown = _run_all([("main", args), ("main", (*args, "--traceback"))])
  _one_line_error(plain, 2, "loss.beta: must be in [0, 1]")
  assert shown.returncode == 2 and "Traceback" in shown.stderr
  assert shown.stderr.rstrip().splitlines()[-1] == plain.stderr.strip()


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


def _run_all(commands, timeout=120):
  """Runs every (module, args) command at once; their results in order."""
  running = [
    subprocess.Popen(
      [sys.executable, "-m", f"th_distill.{module}", *args],
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for module, args in commands
  ]
  results = []
  for process, command in zip(running, commands):
    _, stderr = process.communicate(timeout=timeout)
    results.append(subprocess.CompletedProcess(command, process.returncode, "", stderr))
  return results


_CONFIG_FILES = {
  "boom": "raise RuntimeError('boom at import')\n",
  "inside": "def get_config():\n  return {}['inside']\n",
  "dict": "def get_config():\n  return {'a': 1}\n",
  "lacks": "from th_distill.config import base_config\n\ndef get_config():\n"
  "  c = base_config()\n  del c.task\n  del c.student.steps\n  return c\n",
  "exits": "raise SystemExit(0)\n",
  "quits": "import sys\n\ndef get_config():\n  sys.exit()\n",
}


@pytest.mark.parametrize(
  "kind, name, fragment",
  [
    ("experiment", "boom", "{path} fails at import: RuntimeError: boom at import"),
    ("experiment", "exits", "{path} fails at import: SystemExit: 0 (it exits while it loads"),
    ("study", "quits", "get_config() of {path} fails: SystemExit:  (it exits while it loads"),
    ("experiment", "configs/tiny.py:foo", "get_config('foo') of {path} fails: TypeError"),
    ("experiment", "inside", "get_config() of {path} fails: KeyError: 'inside'"),
    ("study", "dict", "get_config() of {path} returns a dict, not an ml_collections.ConfigDict"),
    ("experiment", "lacks", "the config of {path} lacks the field(s) student.steps, task"),
    ("study", "lacks", "{path} is an experiment config; run it with python -m th_distill.main"),
    (
      "experiment",
      "configs/studies/regimes.py",
      "{path} is a study config; run it with python -m th_distill.study (this command takes "
      "experiment configs)",
    ),
  ],
)
def test_config_file_errors_name_the_file_and_the_command(tmp_path, kind, name, fragment):
  path = name if name.startswith("configs/") else str(tmp_path / f"{name}.py")
  if name in _CONFIG_FILES:
    (tmp_path / f"{name}.py").write_text(_CONFIG_FILES[name])
  with pytest.raises(config_lib.ConfigError) as error:
    cli.check_config_arguments([f"--config={os.path.join(REPO, path)}"], kind)
  file = os.path.join(REPO, path.split(":")[0])
  assert fragment.format(path=repr(file)) in str(error.value)
  assert "\n" not in str(error.value)


def test_repeated_config_flags_keep_the_last_one():
  assert cli.last_wins(
    ["--config=c.py", "--config.regimes=(a,)", "--x", "--config.regimes", "b", "--config.s=1"]
  ) == ["--config=c.py", "--x", "--config.regimes", "b", "--config.s=1"]
  assert cli.last_wins(["--config.b", "--noconfig.b", "--config.a=1", "--config.a=2"]) == [
    "--noconfig.b",
    "--config.a=2",
  ]


@pytest.mark.slow
def test_every_command_line_error_class_is_one_line_with_its_status(tmp_path):
  """Each command stops before any work: a config file of the wrong kind, repeated tuple flags
  (last-wins: a valid last value reaches the workdir check, which refuses a file), an absurd
  step count, a malformed seed list."""
  (tmp_path / "file").write_text("")
  tiny = ("--config=configs/tiny.py", f"--workdir={tmp_path / 'file'}")
  cases = [
    (("main", ("--config=configs/studies/regimes.py", f"--workdir={tmp_path}")), 2, "study config"),
    (("main", (*tiny, "--config.regimes=('offline',)", "--config.regimes=()")), 2, "at least one"),
    (("main", (*tiny, "--config.regimes=('offlin',)", "--config.regimes=offline")), 1, "not a dir"),
    (("main", (*tiny, "--config.student.steps=1000000000000")), 2, "exceeds the bound 2147483647"),
    (("detector_eval", (f"--workdir={tmp_path}", "--test_seeds=a,b")), 2, "--test_seeds=a,b: must"),
  ]
  for result, (_, status, fragment) in zip(_run_all([c for c, _, _ in cases]), cases):
    _one_line_error(result, status, fragment)


_COUNTED = """import os, sys
sys.path.insert(0, {tests!r})
from conftest import micro_config
with open({count!r}, "a") as f:
  f.write("loaded\\n")

def get_config():
  with open({count!r}, "a") as f:
    f.write("get_config\\n")
  return micro_config()
"""
_INTERRUPTS = "import os, signal\nos.kill(os.getpid(), signal.SIGINT)\n"


def test_command_line_edge_cases_are_one_line_with_their_status(tmp_path):
  """A config file that exits 0 (not a success), Ctrl-C while a config file loads (130), a
  missing flag file, a bad --devices, an unavailable platform or no host device, a study name
  that is a path, a study whose arms are the same run; and the config file is run once."""
  (tmp_path / "file").write_text("")
  (tmp_path / "exits.py").write_text(_CONFIG_FILES["exits"])
  (tmp_path / "interrupts.py").write_text(_INTERRUPTS)
  count = tmp_path / "count.txt"
  tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  (tmp_path / "counted.py").write_text(_COUNTED.format(tests=tests, count=str(count)))
  tiny = ("--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}")
  study = ("--config=configs/studies/regimes.py", f"--workdir={tmp_path / 'study'}")
  cases = [
    (("main", (f"--config={tmp_path / 'exits.py'}", f"--workdir={tmp_path}")), 2, "SystemExit"),
    (("main", (f"--config={tmp_path / 'interrupts.py'}", f"--workdir={tmp_path}")), 130, "Ctrl-C"),
    (("main", (*tiny, "--flagfile=/nonexistent")), 2, "Unable to open flagfile"),
    (("planning.plan", ("--config=configs/tiny.py", "--devices=-1")), 2, "--devices=-1"),
    (
      ("main", (f"--config={tmp_path / 'counted.py'}", f"--workdir={tmp_path / 'file'}")),
      1,
      "not a",
    ),
    (("study", (*study, "--config.name=runs/x/seed0")), 2, "name: 'runs/x/seed0' must be a plain"),
    (("study", (*study, "--config.name=/tmp/elsewhere")), 2, "must be a plain folder name"),
  ]
  for result, (_, status, fragment) in zip(_run_all([c for c, _, _ in cases]), cases):
    _one_line_error(result, status, fragment)
  assert count.read_text() == "loaded\nget_config\n"  # once per command, not twice


@pytest.mark.parametrize(
  "environment, fragment",
  [
    ({"JAX_PLATFORMS": "tpu"}, "check JAX_PLATFORMS='tpu'"),
    ({"XLA_FLAGS": "--xla_force_host_platform_device_count=0"}, "device_count=0'"),
  ],
)
def test_a_platform_jax_cannot_start_is_one_line(tmp_path, environment, fragment):
  result = subprocess.run(
    [sys.executable, "-m", "th_distill.main", "--config=configs/tiny.py", f"--workdir={tmp_path}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, **environment},
  )
  _one_line_error(result, 1, "JAX cannot start its devices", fragment)


def test_a_loss_that_is_zero_for_every_student_is_refused_naming_the_field():
  for beta in (0.0, 1.0, 1e-45):
    c = micro_config()
    c.loss.name, c.loss.beta, c.loss.normalized = "jsd", beta, False
    with pytest.raises(config_lib.ConfigError, match="loss.beta: .* makes the loss 0"):
      config_lib.validate(c)
  c.loss.normalized = True  # fkl at beta = 0 and rkl at 1: a loss
  config_lib.validate(c)


def test_a_study_refuses_a_path_as_name_and_two_arms_that_are_the_same_run(tmp_path):
  base = micro_config()
  for name in ("../x", "runs", "stage1", ".hidden", "a/b", ""):
    with pytest.raises(config_lib.ConfigError, match="must be a plain folder name"):
      study.run(study.study_config(name, "t", base, {"a": {}}, seeds=(0,)), str(tmp_path))
  same = {"a": {"student": {"steps": 6}}, "b": {}, "c": {"student": {"steps": 5}}}
  with pytest.raises(config_lib.ConfigError, match="variants 'a' and 'b' are the same run"):
    study.run(study.study_config("s", "t", base, same, seeds=(0,)), str(tmp_path))
  assert os.listdir(tmp_path) == []  # refused before anything is written
