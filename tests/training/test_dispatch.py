"""Several steps per dispatch (th_distill.training.dispatch): the dispatches against brute force,
the loop of K steps bit for bit the steps run one by one, the guard naming the step inside a
dispatch, and end-to-end runs whose rows equal those of one step per dispatch, also resumed; the
fixed evaluation sets' cached references against the full evaluator."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import micro_config
from run_rows import cut_after_checkpoint, run_and_read, untimed_rows

from th_distill import experiment
from th_distill.config.run_config import RunConfig
from th_distill.config.settings import make_optimizer
from th_distill.data.batch import BATCH_ARRAYS, Batch
from th_distill.models import init_params, module_of
from th_distill.partitioning import Partitioner, make_mesh
from th_distill.rundir import checkpoints
from th_distill.training import dispatch, program_builders, programs
from th_distill.training.guards import NonFiniteStep, StepWatch
from th_distill.training.steps import create_train_state, make_sft_step
from th_distill.training.trainer import Hook, Trainer


@pytest.mark.parametrize("size", (1, 3, 4, 8))
@pytest.mark.parametrize("end", (1, 10, 23))
def test_dispatches_cover_every_step_once_and_break_where_asked(size, end):
  marked = {0, 5, 6, 13, 20}
  plan = dispatch.DispatchPlan(size, end, starts_at=lambda step: step in marked)
  starts, step = [], 0
  while step < end:
    count = plan.count(step)
    assert 1 <= count <= size
    starts.append(step)
    step += count
  assert step == end
  # Brute force: a dispatch begins at 0, at every multiple of K, at every marked step, and
  # after that only where a dispatch of K steps ends.
  want, step = [], 0
  while step < end:
    want.append(step)
    nxt = step + 1
    while nxt < end and nxt % size and nxt not in marked and nxt - step < size:
      nxt += 1
    step = nxt
  assert starts == want
  # The dispatches do not depend on where a run resumed: from any dispatch start on, the same.
  for resume in starts:
    step, again = resume, []
    while step < end:
      again.append(step)
      step += plan.count(step)
    assert again == [s for s in starts if s >= resume]


def test_the_automatic_size_is_one_on_a_cpu_else_a_power_of_two_from_a_steps_flops():
  assert dispatch.steps_per_dispatch(5, 1e15, "cpu") == 5  # set: as set
  assert dispatch.steps_per_dispatch(0, 1.0, "cpu") == 1
  assert dispatch.steps_per_dispatch(0, 1e15, "gpu") == 1  # a big step: one per dispatch
  assert dispatch.steps_per_dispatch(0, dispatch.DISPATCH_FLOPS / 12, "tpu") == 8
  assert dispatch.steps_per_dispatch(0, 1.0, "gpu") == dispatch.MAX_STEPS


def _tiny_model():
  config = RunConfig.from_config(micro_config())
  model = module_of(config.model("student"))
  return model, nn.unbox(init_params(model, jax.random.PRNGKey(0)))


def _batches(count, rows=4, length=4, vocab=16):
  rng = np.random.default_rng(0)
  return [
    Batch(
      prompts=rng.integers(2, vocab, (rows, length)).astype(np.int32),
      prompt_mask=np.ones((rows, length), bool),
      responses=rng.integers(2, vocab, (rows, length)).astype(np.int32),
      mask=np.ones((rows, length), np.float32),
    )
    for _ in range(count)
  ]


@pytest.mark.optimized_xla  # two different programs compared bit for bit
def test_a_loop_of_steps_is_bit_for_bit_the_steps_one_by_one():
  model, params = _tiny_model()
  step_fn = make_sft_step(model)
  optimizer = make_optimizer(1e-2)
  rng, first, count, size = jax.random.PRNGKey(3), 7, 3, 4
  batches = _batches(count)

  state = create_train_state(params, optimizer)
  one = jax.jit(step_fn)
  singles = []
  for i, batch in enumerate(batches):
    state, metrics = one(state, batch, jax.random.fold_in(rng, first + i))
    singles.append(metrics)

  looped = jax.jit(lambda s, b, r, f, c: dispatch.repeat_steps(step_fn, s, (), b, r, f, c))
  stack = dispatch.stack_batches(batches, size)
  assert stack.prompts.shape == (size, 4, 4)
  state2, stacked = looped(create_train_state(params, optimizer), stack, rng, first, count)
  for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(state2), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for i, metrics in enumerate(singles):
    for name, value in metrics.items():
      assert float(stacked[name][i]) == float(value), (name, i)
  assert all(float(stacked[name][count]) == 0.0 for name in stacked)  # the unused row


def _counting_trainer(tmp_path, poisoned_step, per_dispatch):
  """A trainer of one weight whose step `poisoned_step` gives a NaN loss."""

  def step_fn(state, batch, rng):
    del batch, rng
    loss = jnp.where(state.step == poisoned_step, jnp.nan, 1.0)
    metrics = {"train/loss": loss, "train/grad_norm": jnp.float32(1.0)}
    return state.apply_gradients(grads={"w": jnp.ones(3)}), metrics

  partitioner = Partitioner(make_mesh())
  steps_fn = jax.jit(lambda s, b, r, f, c: dispatch.repeat_steps(step_fn, s, (), b, r, f, c))
  batch = Batch(
    np.zeros((1, 2), np.int32),
    np.ones((1, 2), bool),
    np.zeros((1, 2), np.int32),
    np.ones((1, 2), np.float32),
  )
  return Trainer(
    "offline",
    jax.jit(step_fn),
    lambda step, params: batch,
    create_train_state({"w": jnp.zeros(3)}, optax.sgd(1.0)),
    partitioner=partitioner,
    checkpoint_dir=str(tmp_path / "checkpoints"),
    steps=12,
    checkpoint_every=4,
    rng=jax.random.PRNGKey(0),
    guard=StepWatch("offline", "stop"),
    steps_fn=steps_fn,
    steps_per_dispatch=per_dispatch,
    needs_params_at=lambda step: False,
  )


def test_the_guard_names_the_step_inside_a_dispatch_and_saves_no_poisoned_state(tmp_path):
  trainer = _counting_trainer(tmp_path, poisoned_step=6, per_dispatch=4)
  with pytest.raises(NonFiniteStep, match="training step 6 gave loss nan"):
    trainer.run()
  saved = sorted(int(n) for n in os.listdir(tmp_path / "checkpoints") if n.isdigit())
  assert saved == [4]  # the dispatch of steps 4-7 held the bad step: never saved


def test_a_trainer_without_poison_runs_every_step_and_checkpoints_on_time(tmp_path):
  trainer = _counting_trainer(tmp_path, poisoned_step=-1, per_dispatch=3)
  counts = []

  class Dispatches(Hook):
    def after_steps(self, trainer, first, count):
      counts.append((first, count))

  trainer.add_hook(Dispatches())
  saved, save = [], trainer.checkpointer.save
  trainer.checkpointer.save = lambda step, carry: (saved.append(step), save(step, carry))
  assert trainer.run() == 12
  assert counts == [(0, 3), (3, 1), (4, 2), (6, 2), (8, 1), (9, 3)]
  np.testing.assert_array_equal(np.asarray(trainer.params["w"]), -12 * np.ones(3))
  assert sorted(set(saved)) == [4, 8, 12]  # (12 again when the loop closes)


@pytest.mark.slow
@pytest.mark.optimized_xla  # two different programs compared bit for bit
def test_runs_of_several_steps_per_dispatch_log_the_rows_of_one_step_per_dispatch(micro, tmp_path):
  # A step that samples with the student (online_student's and the mixture's, at online.reuse 1)
  # is a dispatch of its own: the mixture stands for both.
  regimes = ("offline", "online_teacher", "mixture")
  micro.regimes = regimes
  micro.student.steps, micro.checkpoint_every, micro.eval_every = 21, 8, 10
  micro.teacher.steps = 11
  micro.online.reuse = 1
  rows = {}
  for per_dispatch in (1, 4):
    micro.mesh.steps_per_dispatch = per_dispatch
    workdir = str(tmp_path / f"k{per_dispatch}")
    rows[per_dispatch] = run_and_read(micro, workdir)
    assert checkpoints.read_json(os.path.join(workdir, "stage1", "info.json"))
  assert rows[4] == rows[1]
  # A run of 4 steps per dispatch cut after its checkpoint at step 8 resumes to the same rows.
  workdir = str(tmp_path / "k4")
  for regime in regimes:
    cut_after_checkpoint(workdir, regime, 8)
  experiment.run(micro, workdir)
  assert {regime: untimed_rows(workdir, regime) for regime in regimes} == rows[1]


def test_a_fixed_set_evaluated_against_cached_references_gives_the_full_evaluators_sums(
  micro, monkeypatch
):
  config = RunConfig.from_config(micro)
  models = program_builders.Models.from_config(config)
  built = programs.Programs(models, config.program_settings, Partitioner(make_mesh()))
  params = [
    nn.unbox(init_params(getattr(models, name), jax.random.PRNGKey(i)))
    for i, name in enumerate(("student", "teacher", "oracle"))
  ]
  (batch,) = _batches(1, rows=11)
  data = {k: getattr(batch, k) for k in BATCH_ARRAYS}
  data["mask"][3, 2:] = 0.0
  full = built.evaluator("student")(*params, data, "set")
  cached = built.set_evaluator("student", params[1], params[2], data)
  assert cached(params[0], "set") == full
  monkeypatch.setattr(programs, "REFERENCE_CACHE_BYTES", 0)  # too big to keep: recomputed
  assert built.set_evaluator("student", params[1], params[2], data)(params[0], "set") == full
