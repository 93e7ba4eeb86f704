"""`config.validate` fuzzed with hypothesis: every invalid value of a field is refused with a
ConfigError naming that field, and every valid value is accepted (on the micro config)."""

import math

import pytest
from conftest import micro_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from th_distill import config as config_lib
from th_distill.config.settings import ON_NONFINITE
from th_distill.sampling_checks import MIN_TEMPERATURE

NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
MICRO_LOG_VOCAB = math.log(16)


def _floats(low=None, high=None, **kwargs):
  return st.floats(low, high, allow_nan=False, allow_infinity=False, **kwargs)


def _outside(low: float, high: float):
  """Finite floats below `low` or above `high`, and the non-finite ones."""
  return st.one_of(
    _floats(high=low, exclude_max=True), _floats(low=high, exclude_min=True), NON_FINITE
  )


def _texts(allowed):
  return st.text(min_size=0, max_size=12).filter(lambda s: s not in allowed)


POSITIVE_FLOAT_FIELDS = (
  "loss.temperature",
  "student.learning_rate",
  "teacher.learning_rate",
  "oracle.weight_scale",
  "teacher.temperature",
)
NON_NEGATIVE_FLOAT_FIELDS = ("student.weight_decay", "student.grad_clip", "hacking_threshold_pct")
UNIT_FIELDS = ("loss.beta", "mixture.student_fraction")
POSITIVE_INT_FIELDS = (
  "eval_every",
  "checkpoint_every",
  "teacher.batch_size",
  "prompts.num_eval",
  "prompts.num_distill",
  "eval.batch_size",
  "eval.num_train_prompts",
  "offline.num_prompts",
  "offline.generations_per_prompt",
  "student.micro_batches",
  "sequence_chunks",
  "task.response_length",
  "detection.patience",
)
NON_NEGATIVE_INT_FIELDS = (
  "student.steps",
  "teacher.steps",
  "student.sft_steps",
  "sampling.top_k",
  "eval_log_points",
)

INVALID = {
  **{f: st.one_of(_floats(high=0.0), NON_FINITE) for f in POSITIVE_FLOAT_FIELDS},
  **{
    f: st.one_of(_floats(high=0.0, exclude_max=True), NON_FINITE) for f in NON_NEGATIVE_FLOAT_FIELDS
  },
  **{f: _outside(0.0, 1.0) for f in UNIT_FIELDS},
  **{f: st.integers(max_value=0) for f in POSITIVE_INT_FIELDS},
  **{f: st.integers(max_value=-1) for f in NON_NEGATIVE_INT_FIELDS},
  "seed": st.one_of(st.integers(max_value=-1), st.integers(min_value=2**32)),
  "sampling.temperature": st.one_of(
    _floats(high=0.0, exclude_max=True),
    _floats(0.0, MIN_TEMPERATURE, exclude_min=True, exclude_max=True),
    NON_FINITE,
  ),
  "sampling.top_p": st.one_of(_outside(0.0, 1.0), st.just(0.0)),
  "oracle.target_entropy": st.one_of(
    _outside(0.0, MICRO_LOG_VOCAB), st.just(0.0), st.just(MICRO_LOG_VOCAB)
  ),
  "task.zipf_exponent": NON_FINITE,
  "task.prompt_length": st.integers(max_value=2),  # 14 ids ** 2 < 4 x the 112 prompts
  "task.vocab_size": st.integers(max_value=3),
  "detection.threshold": st.one_of(_floats(high=0.0), NON_FINITE),
  "detection.noise_floor": st.one_of(_floats(high=0.0, exclude_max=True), NON_FINITE),
  "detection.min_fit_points": st.integers(max_value=3),
  "detection.law": _texts(("power", "loglog")),
  "detection.direction": _texts(("above", "below", "both")),
  "detection.on_detect": _texts(("continue", "stop")),
  "loss.name": _texts(("fkl", "rkl", "jsd")),
  "student.init": _texts(("scratch", "sft")),
  "on_nonfinite": _texts(ON_NONFINITE),
  "frozen_dtype": _texts(("float32", "bfloat16")),
}

VALID = {
  **{f: _floats(1e-6, 1e6) for f in POSITIVE_FLOAT_FIELDS},
  **{f: _floats(0.0, 1e3) for f in NON_NEGATIVE_FLOAT_FIELDS},
  **{f: _floats(0.0, 1.0) for f in UNIT_FIELDS},
  **{
    f: st.integers(1, 5_000)
    for f in ("eval_every", "checkpoint_every", "prompts.num_eval", "eval.batch_size")
  },
  **{f: st.integers(0, 10_000) for f in NON_NEGATIVE_INT_FIELDS},
  "prompts.num_distill": st.integers(8, 5_000),  # >= offline.num_prompts; the pool must fit
  "teacher.batch_size": st.integers(1, 512),
  "seed": st.integers(0, 2**32 - 1),
  "sampling.temperature": st.one_of(st.just(0.0), _floats(MIN_TEMPERATURE, 1e6)),
  "sampling.top_p": _floats(0.0, 1.0, exclude_min=True),
  "oracle.target_entropy": _floats(0.0, MICRO_LOG_VOCAB, exclude_min=True, exclude_max=True),
  "task.zipf_exponent": _floats(-10.0, 10.0),
  "task.prompt_length": st.integers(3, 64),
  "detection.threshold": _floats(1e-6, 1e6),
  "loss.name": st.sampled_from(("fkl", "rkl", "jsd")),
  "student.init": st.sampled_from(("scratch", "sft")),
  "on_nonfinite": st.sampled_from(ON_NONFINITE),
  "frozen_dtype": st.sampled_from(("float32", "bfloat16")),
}


def _with(field, value):
  """The micro config with `field` (dotted) set to `value`."""
  config = micro_config()
  *sections, key = field.split(".")
  section = config
  for name in sections:
    section = section[name]
  section[key] = value
  return config


def _pairs(table):
  return st.sampled_from(sorted(table)).flatmap(lambda f: st.tuples(st.just(f), table[f]))


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(_pairs(INVALID))
def test_every_invalid_value_is_refused_with_its_field_named(pair):
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.validate(_with(*pair))
  assert f"{pair[0]}:" in str(error.value), (pair, str(error.value))


@FUZZ
@given(_pairs(VALID))
def test_every_valid_value_is_accepted(pair):
  config_lib.validate(_with(*pair))


def test_unknown_fields_are_refused_with_the_nearest_valid_one():
  config = micro_config()
  config.student.learning_rat = 0.1
  config.detection.window = 10.0  # a detector setting: known
  with pytest.raises(
    config_lib.ConfigError,
    match=r"student\.learning_rat: no such field; did you mean "
    r"student\.learning_rate\?",
  ):
    config_lib.validate(config)


def test_an_eval_pool_smaller_than_the_data_parallel_devices_is_refused():
  config = micro_config()
  config.prompts.num_eval = 1
  config.teacher.batch_size = config.student.batch_size = 8
  with pytest.raises(
    config_lib.ConfigError,
    match=r"prompts\.num_eval: 1 must be at least the "
    r"4 data-parallel devices",
  ):
    config_lib.check_environment(config, devices=4)


@pytest.mark.parametrize("field", ["teacher", "student"])
def test_each_batch_must_split_over_the_data_parallel_devices(field):
  config = micro_config()
  config[field].batch_size = 6
  with pytest.raises(
    config_lib.ConfigError,
    match=rf"{field}\.batch_size: 6 must be a multiple "
    r"of the 4 data-parallel devices",
  ):
    config_lib.check_environment(config, devices=4)
