"""Configuration validation: every bad value fails before any compute, naming its field."""

import dataclasses
import os
import subprocess
import sys

import jax
import pytest

from th_distill import config as config_lib
from th_distill import experiment
from th_distill.config.run_config import RunConfig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("student.learning_rate", -1e-3, "student.learning_rate"),
    ("teacher.learning_rate", 0.0, "teacher.learning_rate"),
    ("loss.beta", 1.5, "loss.beta"),
    ("loss.name", "kl", "loss.name"),
    ("regimes", ("offline", "streaming"), "regimes"),
    ("student.batch_size", 0, "student.batch_size"),
    ("offline.num_prompts", 5000, "offline.num_prompts"),
    ("offline.generations_per_prompt", 0, "offline"),
    ("student.init", "pretrained", "student.init"),
    ("sampling.top_p", 0.0, "sampling.top_p"),
    ("mixture.student_fraction", 2.0, "mixture.student_fraction"),
    ("student.model.vocab_size", 100, "student.model.vocab_size"),
    ("mesh.data", 3, "mesh"),
    ("eval_every", 0, "eval_every"),
  ],
)
def test_invalid_values_name_the_field(micro, tmp_path, field, value, message):
  section, _, key = field.rpartition(".")
  target = micro
  for part in filter(None, section.split(".")):
    target = target[part]
  target[key] = value
  with pytest.raises(config_lib.ConfigError, match=message.replace(".", r"\.")):
    experiment.run(micro, str(tmp_path))
  assert not os.listdir(tmp_path), "nothing may be written before validation"


def test_every_error_is_reported_at_once(micro):
  micro.loss.beta = -0.5
  micro.student.learning_rate = -1.0
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.validate(micro)
  assert "loss.beta" in str(error.value) and "student.learning_rate" in str(error.value)


def test_settings_name_their_own_invalid_fields_as_in_the_config(micro):
  typed = RunConfig.from_config(micro)
  loss = typed.loss
  assert loss.problems() == []
  assert dict(dataclasses.replace(loss, beta=1.5).problems()) == {
    "loss.beta": "must be in [0, 1], got 1.5"
  }
  teacher = typed.teacher.sft
  assert [
    field
    for field, _ in dataclasses.replace(teacher, batch_size=0, schedule="step").problems("teacher")
  ] == ["teacher.batch_size", "teacher.schedule"]
  distill = dataclasses.replace(
    typed.distill,
    loss=dataclasses.replace(loss, temperature=0.0),
    on_nonfinite="retry",
  )
  assert [field for field, _ in distill.problems()] == ["loss.temperature", "on_nonfinite"]


def test_check_fields_reads_no_device_or_file(micro, tmp_path, monkeypatch):
  micro.student.checkpoint = str(tmp_path / "missing")
  micro.mesh.data = 3

  def no_devices():
    raise AssertionError("check_fields asked for the devices")

  monkeypatch.setattr(jax, "device_count", no_devices)
  config_lib.check_fields(micro)
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.check_environment(micro, devices=1)
  assert "student.checkpoint: " in str(error.value) and "mesh: " in str(error.value)


def test_shipped_configs_are_valid():
  for name in ("tiny", "t5_small"):
    config = config_lib.load_config_file(os.path.join(REPO, "configs", f"{name}.py"))
    config_lib.validate(config)


def _cli(*args):
  return subprocess.run(
    [sys.executable, "-m", "th_distill.main", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )


def test_cli_rejects_unknown_keys_wrong_types_and_bad_values(tmp_path):
  workdir = f"--workdir={tmp_path}"
  unknown = _cli("--config=configs/tiny.py", workdir, "--config.student.stepz=5")
  assert unknown.returncode != 0 and "stepz" in unknown.stderr
  wrong_type = _cli("--config=configs/tiny.py", workdir, "--config.student.steps=many")
  assert wrong_type.returncode != 0 and "student.steps" in wrong_type.stderr
  bad_value = _cli("--config=configs/tiny.py", workdir, "--config.loss.beta=2.0")
  assert bad_value.returncode != 0 and "loss.beta: must be in [0, 1]" in bad_value.stderr
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("student.steps", 10**12, r"student\.steps: 1000000000000 exceeds the bound 2147483647"),
    ("teacher.steps", 2**31, r"teacher\.steps: 2147483648 exceeds the bound 2147483647"),
    ("eval_log_points", 10**9, r"eval_log_points: must be in \[0, 10000\]"),
    ("eval_every", 1, r"eval_every: 1 gives 1000000001 evaluations .* bound 100000"),
  ],
)
def test_absurd_counts_are_refused_with_their_bound(micro, field, value, message):
  micro.student.steps = 10**9 if field == "eval_every" else micro.student.steps
  section, _, key = field.rpartition(".")
  (micro[section] if section else micro)[key] = value
  with pytest.raises(config_lib.ConfigError, match=f"^Invalid configuration: {message}"):
    config_lib.check_fields(micro)


def test_a_config_missing_fields_is_refused_naming_them(micro):
  del micro.task
  del micro.student.steps
  with pytest.raises(config_lib.ConfigError, match=r"missing field\(s\) student\.steps, task "):
    config_lib.validate(micro)


def test_a_nested_plain_dict_is_a_config():
  """`validate(base_config().to_dict())`: the same typed config as the ConfigDict, its problems
  named as the ConfigDict's; anything but a mapping is refused saying what is accepted."""
  base = config_lib.base_config()
  assert config_lib.validate(base.to_dict()) == config_lib.validate(base)
  plain = base.to_dict()
  plain["student"]["steps"] = -1
  with pytest.raises(config_lib.ConfigError, match=r"^Invalid configuration: student.steps: "):
    config_lib.validate(plain)
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.check_fields([("seed", 0)])
  assert str(e.value) == (
    "config: expected an ml_collections.ConfigDict or a (nested) dict of its fields, got list "
    "(start from th_distill.config.base_config())"
  )
