"""The one training loop: a data regime is one registered class, offline and online distil from
the same (cast) teacher, and a pre-empted teacher SFT resumes from its checkpoint."""

import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import write_micro_config_file

from th_distill import errors, experiment
from th_distill.config import load_config_file
from th_distill.config.run_config import REGIMES
from th_distill.data import regimes
from th_distill.data.batch import BATCH_ARRAYS, Batch
from th_distill.observing.metrics_io import read_metrics
from th_distill.rundir import checkpoints
from th_distill.training import batch_source
from th_distill.training.online_sources import Online
from th_distill.training.source_context import SourceContext

REGIME = "first_prompts_only"


class FirstPromptsOnly(batch_source.BatchSource):
  """A regime defined here: one teacher sample on each of the first 4 distillation prompts,
  replayed every step (its training-prompt set is the same rows)."""

  regime = REGIME

  def __init__(self, context):
    super().__init__(context)
    prompts = context.prompts[:4]
    self.data = regimes.build_offline(
      context.programs.host_sampler("teacher"),
      context.teacher_params,
      prompts,
      1,
      jax.random.PRNGKey(7),
    )

  def draw(self, step, student_params):
    rows = np.arange(self.context.config.student.batch_size) % 4
    return Batch.of_arrays(self.data, rows)

  def train_set(self):
    return {k: self.data[k] for k in BATCH_ARRAYS}

  @classmethod
  def train_rows(cls, config):
    return 4


HALVES = "teacher_then_student"


class TeacherThenStudent(Online):
  """An online regime defined here, its own sampling included: on each fresh batch, the
  teacher's samples on the first half of the rows, the student's on the rest."""

  regime = HALVES
  samplers = ("teacher", "student")
  rows_sampled = []

  @classmethod
  def respond(cls, context, prompts, keys, student_params):
    cls.rows_sampled.append(len(prompts))
    teacher = context.teacher_samples(prompts, keys.teacher)
    student = context.student_samples(student_params, prompts, keys.student)
    from_student = np.arange(len(prompts))[:, None] >= len(prompts) // 2
    return tuple(jnp.where(from_student, s, t) for s, t in zip(student, teacher, strict=True))


@pytest.fixture
def register():
  """`register(cls)`: `batch_source.register` for the test only."""
  added = []
  yield lambda cls: added.append(batch_source.register(cls).regime)
  for regime in added:
    del REGIMES[regime]


def test_a_regime_is_one_class_registered_from_anywhere(register, micro, tmp_path):
  register(FirstPromptsOnly)
  micro.regimes = (REGIME, "offline")
  summary = experiment.run(micro, str(tmp_path))
  rows = read_metrics(str(tmp_path / REGIME / "metrics.jsonl"))
  assert [r["step"] for r in rows] == [0, 3, 6]
  assert summary["regimes"][REGIME]["golden_final"] is not None
  assert checkpoints.read_json(str(tmp_path / REGIME / "done.json"))["steps"] == 6
  # The training-prompt set is the regime's own: its 4 rows, evaluated at every row.
  assert all("train_teacher/proxy/fkl" in r for r in rows)


def test_an_online_regime_is_one_class_with_its_own_sampling(register, micro, tmp_path):
  register(TeacherThenStudent)
  micro.regimes = (HALVES,)
  summary = experiment.run(micro, str(tmp_path))["regimes"][HALVES]
  steps, batch_size = micro.student.steps, micro.student.batch_size
  assert TeacherThenStudent.rows_sampled == [batch_size] * steps  # a fresh batch every step
  rows = read_metrics(str(tmp_path / HALVES / "metrics.jsonl"))
  assert [r["step"] for r in rows] == [0, 3, 6] and summary["golden_final"] is not None
  # Its cost, as `Online` counts it from `samplers`: both models sample every step.
  assert summary["teacher_samples_generated"] == summary["student_samples_generated"]
  assert summary["student_samples_generated"] == steps * batch_size


def test_an_unregistered_regime_is_a_config_error(micro):
  from th_distill import config as config_lib

  micro.regimes = (REGIME,)
  with pytest.raises(config_lib.ConfigError, match=f"unknown regime '{REGIME}'"):
    config_lib.validate(micro)


def _same(a, b):
  """Whether two `PromptSet`s hold the same prompts and masks."""
  return np.array_equal(a.tokens, b.tokens) and np.array_equal(a.mask, b.mask)


def test_offline_and_online_distil_from_the_same_cast_teacher(micro, monkeypatch, tmp_path):
  micro.frozen_dtype = "bfloat16"
  micro.regimes = ("offline", "online_teacher")
  offline_prompts = None
  seen = {}
  build, teacher_samples = regimes.build_offline, SourceContext.teacher_samples

  def recording_build(sample, params, prompts, k, rng, *args, **kwargs):
    if k == micro.offline.generations_per_prompt and _same(prompts, offline_prompts):
      seen["offline"] = params
    return build(sample, params, prompts, k, rng, *args, **kwargs)

  def recording_online(context, prompts, rng):
    seen["online"] = context.teacher_params
    return teacher_samples(context, prompts, rng)

  from th_distill.config.run_config import RunConfig
  from th_distill.data.pools import prompt_pools

  pools = prompt_pools(RunConfig.from_config(micro))
  offline_prompts = pools["distill"][: micro.offline.num_prompts]
  monkeypatch.setattr(regimes, "build_offline", recording_build)
  monkeypatch.setattr(SourceContext, "teacher_samples", recording_online)
  experiment.run(micro, str(tmp_path))
  assert set(seen) == {"offline", "online"}
  offline_leaves = jax.tree_util.tree_leaves(seen["offline"])
  online_leaves = jax.tree_util.tree_leaves(seen["online"])
  assert {leaf.dtype for leaf in offline_leaves} == {np.dtype("bfloat16")}
  for a, b in zip(offline_leaves, online_leaves, strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _sft_checkpoints(workdir):
  path = os.path.join(workdir, "stage1", "sft", "teacher")
  return sorted(int(n) for n in os.listdir(path) if n.isdigit()) if os.path.isdir(path) else []


@pytest.mark.slow
def test_sigterm_during_the_teachers_sft_resumes_it_from_its_checkpoint(tmp_path):
  config_path = write_micro_config_file(
    tmp_path / "config.py",
    "c.regimes = ('offline',)",
    "c.teacher.steps = 1000",
    "c.checkpoint_every = 50",
  )
  reference = str(tmp_path / "reference")
  experiment.run(load_config_file(config_path), reference)
  expected = checkpoints.read_json(os.path.join(reference, "stage1", "info.json"))

  workdir = str(tmp_path / "run")
  command = [sys.executable, "-m", "th_distill.main", f"--config={config_path}"]
  run = subprocess.Popen(
    [*command, f"--workdir={workdir}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  deadline = time.time() + 600
  while not _sft_checkpoints(workdir):
    assert run.poll() is None and time.time() < deadline, run.stdout.read()
    time.sleep(0.05)
  run.send_signal(signal.SIGTERM)
  output, _ = run.communicate(timeout=300)
  assert run.returncode == errors.EX_TEMPFAIL, output
  assert "teacher SFT: pre-empted (SIGTERM); checkpointed at step" in output
  step = int(output.split("checkpointed at step ")[1].split(".")[0])
  assert 0 < step < 1000 and step in _sft_checkpoints(workdir)
  assert not os.path.exists(os.path.join(workdir, "stage1", "info.json"))

  again = subprocess.run(
    [*command, f"--workdir={workdir}"], capture_output=True, text=True, timeout=600
  )
  assert again.returncode == 0, again.stderr
  assert f"Restored checkpoint of step {step}" in again.stderr
  got = checkpoints.read_json(os.path.join(workdir, "stage1", "info.json"))
  for key in ("teacher_sft", "teacher/golden/fkl@oracle_samples", "student_sft"):
    assert got[key] == expected[key], key
  assert not os.path.exists(os.path.join(workdir, "stage1", "sft"))  # removed once finished
