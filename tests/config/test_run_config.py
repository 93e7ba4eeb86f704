"""The typed config: read once from the ConfigDict, frozen, every key a field, and the records
the stages keep of it identical to the dict's (so existing workdirs stay reusable)."""

import dataclasses
import hashlib
import json

import pytest

from th_distill.config import base_config, strong_teacher_config
from th_distill.config.run_config import RunConfig
from th_distill.models import T5Config
from th_distill.rundir import records


def _dict_fingerprint(config, sections):
  """The stage fingerprint as computed from the ConfigDict itself."""

  def lookup(path):
    value = config
    for part in path.split("."):
      value = value[part]
    return value.to_dict() if hasattr(value, "to_dict") else value

  text = json.dumps({s: lookup(s) for s in sections}, sort_keys=True, default=list)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.mark.parametrize("make", [base_config, strong_teacher_config])
def test_stage_records_equal_the_dicts(make):
  config = make()
  config.student.init = "sft"
  typed = RunConfig.from_config(config)
  for sections in (
    records.stage1_sections(typed),
    records.offline_sections(typed),
    records.regime_sections(typed),
  ):
    assert records.fingerprint(typed, sections) == _dict_fingerprint(config, sections)
  assert records.regime_sections(typed) == tuple(
    k for k in config.keys() if k not in records.FREE_FIELDS
  )


def test_every_config_key_is_a_typed_field():
  config = base_config()
  typed = RunConfig.from_config(config)
  for name in ("task", "prompts", "oracle", "teacher", "student", "loss", "sampling"):
    section = getattr(typed, name)
    for key, value in config[name].items():
      got = getattr(section, key)
      if key == "model":
        assert isinstance(got, T5Config) and dataclasses.asdict(got) == value.to_dict()
      else:
        assert got == value, f"{name}.{key}"
  assert typed.detection.detector.rule == config.detection.rule
  assert typed.regimes == tuple(config.regimes)
  steps = list(typed.eval_settings.steps)
  assert steps[0] == 0 and steps[-1] == config.student.steps


def test_the_typed_config_is_frozen_and_hashable_where_programs_need_it():
  typed = RunConfig.from_config(base_config())
  with pytest.raises(dataclasses.FrozenInstanceError):
    typed.student.steps = 3  # type: ignore[misc]
  assert hash(typed.distill) == hash(RunConfig.from_config(base_config()).distill)
  assert hash(typed.sampling_settings) and hash(typed.teacher.sft)
