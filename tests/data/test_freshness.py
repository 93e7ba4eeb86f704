"""Between offline and online: refreshed datasets (`offline.refresh_every`), reused and stale
online batches (`online.reuse`, `online.staleness`) and the truncated teacher
(`loss.teacher_top_k`): the schedules against brute force, the producers with fake samplers
that write the parameters they were called with into their tokens, and end-to-end runs that
resume from a checkpoint to the uninterrupted run's metrics."""

import dataclasses

import jax
import numpy as np
import pytest
from run_rows import cut_after_checkpoint, untimed_rows

from th_distill import config as config_lib
from th_distill import experiment
from th_distill.config.run_config import RunConfig
from th_distill.data import regimes
from th_distill.data.batch import Batch, PromptSet
from th_distill.planning import workload
from th_distill.rundir import checkpoints
from th_distill.training import sources
from th_distill.training.batch_source import BatchSource
from th_distill.training.online_sources import Mixture, OnlineSchedule, OnlineTeacher
from th_distill.training.source_context import SourceContext

B, LI, LT = 4, 3, 5


# --- the online schedule ------------------------------------------------------------------------


@pytest.mark.parametrize("reuse", (1, 2, 3))
@pytest.mark.parametrize("staleness", (0, 1, 4, 7))
def test_online_schedule_samples_each_group_once_with_parameters_staleness_steps_old(
  reuse, staleness
):
  schedule = OnlineSchedule(reuse, staleness)
  steps = 23
  sampled_at = {}
  for step in range(steps):
    for group in schedule.sampled_at(step):
      assert group not in sampled_at
      sampled_at[group] = step
  needed = {schedule.group(s) for s in range(steps)}
  assert needed <= set(sampled_at)
  for group, step in sampled_at.items():
    assert step == max(group * reuse - staleness, 0)
  assert schedule.groups_sampled(steps) == len(sampled_at)
  # At a checkpoint at step c: the groups sampled before c that steps >= c still need.
  ahead = [
    sum(1 for g, s in sampled_at.items() if s < c and g >= schedule.group(c))
    for c in range(1, steps)
  ]
  assert max(ahead) <= schedule.slots
  assert (schedule.slots == 0) == ((reuse, staleness) == (1, 0))


# --- the producers, with fake samplers ---------------------------------------------------------


class FakePrograms:
  """Samplers whose tokens are the `params` they were called with (an int) at every position
  (+ 100 for the teacher's); the host sampler is the same on numpy. `calls`: (model, rng) of
  each call."""

  def __init__(self):
    from th_distill.partitioning import Partitioner, make_mesh

    self.partitioner = Partitioner(make_mesh())
    self.calls = []

  def sampler(self, name):
    offset = 100 if name == "teacher" else 0

    def sample(params, prompts, prompt_mask, rng):
      self.calls.append((name, np.asarray(rng)))
      rows = np.asarray(prompts).shape[0]
      assert np.asarray(prompt_mask).shape == np.asarray(prompts).shape
      return np.full((rows, LT), params + offset, np.int32), np.ones((rows, LT), np.float32)

    return sample

  host_sampler = sampler


class FakePhase:
  def advance(self, name, units=1):
    pass

  def counted(self, sample, name):
    return sample


def _context(micro, regime, **online):
  micro.regimes = (regime,)
  micro.student.batch_size = B
  micro.task.prompt_length, micro.task.response_length = LI, LT
  micro.online.update(online)
  config = RunConfig.from_config(micro)
  tokens = np.arange(1, 33 * LI + 1, dtype=np.int32).reshape(33, LI)
  pools = {"distill": PromptSet(tokens, np.ones(tokens.shape, bool))}
  return SourceContext(config, FakePrograms(), 0, pools["distill"], None, None, FakePhase())


# --- each online regime's responses (`respond`) ----------------------------------------------


def _keys(seed):
  return regimes.OnlineKeys(*jax.random.split(jax.random.PRNGKey(seed), 3))


def _prompts(rows):
  return PromptSet(np.ones((rows, LI), np.int32), np.ones((rows, LI), bool))


@pytest.mark.parametrize(
  "regime, model, token", [("online_teacher", "teacher", 100), ("online_student", "student", 7)]
)
def test_an_online_regime_samples_its_model_with_its_key(micro, regime, model, token):
  context, keys = _context(micro, regime), _keys(0)
  tokens, mask = sources.source_class(regime).respond(context, _prompts(B), keys, 7)
  assert np.all(np.asarray(tokens) == token) and np.asarray(mask).shape == (B, LT)
  [(called, rng)] = context.programs.calls
  assert called == model
  np.testing.assert_array_equal(rng, getattr(keys, model))


@pytest.mark.parametrize("fraction", (0.0, 0.3, 1.0))
def test_mixture_takes_each_row_from_the_student_with_the_given_probability(micro, fraction):
  micro.mixture.student_fraction = fraction
  context, keys, rows = _context(micro, "mixture"), _keys(1), 4000
  tokens, _ = Mixture.respond(context, _prompts(rows), keys, 7)
  tokens = np.asarray(tokens)
  from_student = tokens[:, 0] == 7  # the teacher's are 100
  assert np.all(from_student | (tokens[:, 0] == 100))
  assert np.all(tokens == tokens[:, :1])  # a row comes whole from one model
  expected = jax.random.bernoulli(keys.mixture, fraction, (rows, 1))[:, 0]
  np.testing.assert_array_equal(from_student, expected)
  # Binomial(4000, 0.3): standard deviation 0.0072 of the fraction.
  assert abs(from_student.mean() - fraction) < 0.03
  for (called, rng), model in zip(context.programs.calls, ("teacher", "student"), strict=True):
    assert called == model
    np.testing.assert_array_equal(rng, getattr(keys, model))


@pytest.mark.parametrize(
  "regime, reuse, staleness",
  [
    ("online_student", 1, 3),
    ("online_student", 2, 0),
    ("online_student", 2, 3),
    ("mixture", 3, 2),
  ],
)
def test_online_batches_come_from_the_parameters_of_their_schedule(micro, regime, reuse, staleness):
  context = _context(micro, regime, reuse=reuse, staleness=staleness)
  source = sources.source_class(regime)(context)
  schedule = source.schedule
  for step in range(12):
    batch = source.batch_at(step, step)  # the student's "parameters" are the step
    group = schedule.group(step)
    student_rows = np.asarray(batch.responses)[:, 0] < 100
    assert np.all(np.asarray(batch.responses)[student_rows] == max(group * reuse - staleness, 0))
  assert schedule == OnlineSchedule(reuse, staleness)


class FirstRows(BatchSource):
  """A source defined here: the first B distillation prompts with all-zero responses."""

  regime = "first_rows"

  def draw(self, step, student_params):
    prompts = self.context.prompts[:B]
    return Batch(prompts.tokens, prompts.mask, np.zeros((B, LT), np.int32), np.ones((B, LT)))

  def train_set(self):
    raise AssertionError("not evaluated here")


def test_any_source_refreshes_to_the_online_teacher_arms_batches(micro):
  micro.detection.on_detect = "refresh"
  context = _context(micro, "offline")
  source, arm = FirstRows(context), OnlineTeacher(context)
  assert source.refreshes(context.config) and source.refreshed_at is None
  assert np.all(np.asarray(source.batch_at(4, 9).responses) == 0)
  source.refresh(3)
  assert source.refreshed_at == 3
  assert np.all(np.asarray(source.batch_at(2, 9).responses) == 0)  # before the refresh
  for step in (3, 4, 7):
    got, want = source.batch_at(step, 9), arm.batch_at(step, 9)
    np.testing.assert_array_equal(np.asarray(got.prompts), np.asarray(want.prompts))
    np.testing.assert_array_equal(np.asarray(got.responses), np.asarray(want.responses))
    assert np.all(np.asarray(got.responses) == 100)  # the teacher's


def test_stale_online_teacher_is_fresh_and_says_so(micro, caplog):
  context = _context(micro, "online_teacher", staleness=4)
  source = sources.source_class("online_teacher")(context)
  assert source.schedule == OnlineSchedule(1, 0)
  assert "has no effect on online_teacher" in caplog.text
  assert source.generated(context.config, 10) == {"teacher": 10 * B, "student": 0}


def test_batches_sampled_ahead_survive_a_checkpoint(micro):
  """`state` at step c, loaded into a fresh source, gives the batches of steps >= c that the
  first source gives, without sampling them again."""
  context = _context(micro, "online_student", reuse=2, staleness=3)
  first = sources.source_class("online_student")(context)
  for step in range(5):
    first.batch_at(step, step)
  state = first.state(5)
  second = sources.source_class("online_student")(context)
  second.load_state(jax_to_numpy(state))
  for step in range(5, 11):
    want, got = first.batch_at(step, step), second.batch_at(step, step)
    np.testing.assert_array_equal(np.asarray(got.responses), np.asarray(want.responses))


def jax_to_numpy(tree):
  return {k: np.asarray(v) for k, v in tree.items()}


def test_generated_samples_count_every_batch_each_regime_samples(micro):
  micro.offline.update(num_prompts=8, generations_per_prompt=2, refresh_every=4)
  micro.online.update(reuse=2, staleness=3)
  config = RunConfig.from_config(micro)
  b = config.student.batch_size
  assert sources.source_class("offline").generated(config, 9) == {"teacher": 16 * 3, "student": 0}
  assert sources.source_class("offline").generated(config, 8) == {"teacher": 16 * 2, "student": 0}
  batches = (9 - 1 + 3) // 2 + 1
  student = sources.source_class("online_student").generated(config, 9)
  assert student == {"teacher": 0, "student": batches * b}
  mixture = sources.source_class("mixture").generated(config, 9)
  assert mixture == {"teacher": batches * b, "student": batches * b}
  # The teacher is fresh whatever the staleness: one batch per reuse group.
  teacher = sources.source_class("online_teacher").generated(config, 9)
  assert teacher == {"teacher": 5 * b, "student": 0}
  cost = workload.generation_cost(config, "mixture", 9)
  per = workload.cost_fn(config)
  assert cost["generation_flops"] == pytest.approx(
    batches * b * (per("generate", "teacher") + per("generate", "student"))
  )


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("offline.refresh_every", -1, "must be >= 0"),
    ("online.reuse", 0, "must be >= 1"),
    ("online.staleness", -2, "must be >= 0"),
    ("online.staleness", 10**6, "exceeds student.steps"),
    ("loss.teacher_top_k", -1, "must be >= 0"),
    ("loss.teacher_top_k", 17, "exceeds task.vocab_size = 16"),
    ("loss.tail", "drop", "must be one of"),
    ("loss.teacher_top_k", 1, "the loss is 0"),
  ],
)
def test_invalid_freshness_values_are_refused_naming_the_field(micro, field, value, message):
  section, key = field.split(".")
  micro[section][key] = value
  with pytest.raises(config_lib.ConfigError, match=f"{field}: .*{message}"):
    config_lib.validate(micro)


# --- end to end: resumed runs equal uninterrupted ones ------------------------------------------


@pytest.mark.parametrize(
  "regime, settings",
  [
    ("offline", {"offline.refresh_every": 2}),
    ("online_teacher", {"online.reuse": 2}),
    ("online_student", {"online.staleness": 2}),
    ("mixture", {"online.reuse": 2, "online.staleness": 3}),
    ("offline", {"loss.teacher_top_k": 4, "loss.tail": "bucket"}),
    ("online_teacher", {"loss.teacher_top_k": 3}),
  ],
  ids=["refresh", "reuse", "staleness", "reuse+staleness", "top_k_offline", "top_k_online"],
)
def test_freshness_and_truncation_resume_to_the_uninterrupted_metrics(
  micro, tmp_path, regime, settings
):
  micro.regimes = (regime,)
  micro.student.steps, micro.checkpoint_every, micro.eval_every = 7, 3, 1
  for field, value in settings.items():
    section, key = field.split(".")
    micro[section][key] = value
  summary = experiment.run(micro, str(tmp_path / "full"))
  expected = untimed_rows(tmp_path / "full", regime)
  assert [r["step"] for r in expected] == list(range(8))
  cost = summary["regimes"][regime]
  generated = sources.source_class(regime).generated(RunConfig.from_config(micro), 7)
  assert cost["teacher_samples_generated"] == generated["teacher"]
  assert cost["student_samples_generated"] == generated["student"]
  assert cost["generation_flops"] > 0

  partial = str(tmp_path / "partial")
  experiment.run(micro, partial)
  cut_after_checkpoint(partial, regime, 3)
  experiment.run(micro, partial)
  assert untimed_rows(partial, regime) == expected


def test_truncated_offline_dataset_stores_the_teachers_top_k(micro, tmp_path):
  micro.regimes = ("offline",)
  micro.loss.teacher_top_k = 3
  experiment.run(micro, str(tmp_path))
  data = checkpoints.load_arrays(str(tmp_path / "offline_dataset.npz"))
  rows = micro.offline.num_prompts * micro.offline.generations_per_prompt
  assert data["top_values"].shape == (rows, micro.task.response_length, 3)
  assert data["top_indices"].dtype == np.uint8  # vocabulary 16
  assert np.all(np.diff(data["top_values"], axis=-1) <= 0)  # descending log-probabilities
  mass = np.exp(data["top_values"]).sum(-1) + np.exp(data["top_tail"])
  np.testing.assert_allclose(mass, 1.0, rtol=1e-5)


def test_refreshed_generations_keep_the_prompts_and_change_the_responses(micro):
  from th_distill.training import offline_dataset

  context = dataclasses.replace(_context(micro, "offline"))
  first = offline_dataset.sample(context, _seeded_sampler(), 0)
  second = offline_dataset.sample(context, _seeded_sampler(), 1)
  np.testing.assert_array_equal(first["prompts"], second["prompts"])
  np.testing.assert_array_equal(first["prompt_mask"], second["prompt_mask"])
  assert not np.array_equal(first["responses"], second["responses"])
  again = offline_dataset.sample(context, _seeded_sampler(), 1)
  np.testing.assert_array_equal(again["responses"], second["responses"])


def _seeded_sampler():
  import jax

  def sample(params, prompts, prompt_mask, rng):
    rows = np.asarray(prompts).shape[0]
    assert np.asarray(prompt_mask).shape == np.asarray(prompts).shape
    tokens = np.asarray(jax.random.randint(rng, (rows, LT), 2, 16), np.int32)
    return tokens, np.ones((rows, LT), np.float32)

  return sample
