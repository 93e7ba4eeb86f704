"""Non-finite steps on the devices: the optimiser (`steps.make_optimizer`, wrapped in
`optax.apply_if_finite`) never applies them, whatever `on_nonfinite` says, and its state
checkpoints like any other."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from th_distill.rundir import checkpoints
from th_distill.training import steps
from th_distill.training.steps import create_train_state, make_optimizer

PARAMS = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array([[0.5, 0.25]])}


def _grads(value):
  return jax.tree.map(lambda p: jnp.full_like(p, value), PARAMS)


def _equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@jax.jit
def _apply(state, grads):
  return state.apply_gradients(grads=grads)


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_a_non_finite_gradient_keeps_the_parameters_and_adams_state(bad, grad_clip):
  state = _apply(create_train_state(PARAMS, make_optimizer(0.1, grad_clip=grad_clip)), _grads(1.0))
  grads = _grads(1.0)
  grads["w"] = grads["w"].at[1].set(bad)  # one entry of one leaf
  kept = _apply(state, grads)
  assert _equal(kept.params, state.params)
  inner = lambda s: s.opt_state[0].inner_state  # noqa: E731 (Adam's moments and count)
  assert _equal(inner(kept), inner(state))
  assert int(kept.step) == 2  # the data order goes on
  moved = _apply(kept, _grads(1.0))
  assert not np.array_equal(moved.params["w"], state.params["w"])


def test_non_finite_updates_are_never_applied_however_many_in_a_row():
  state = create_train_state(PARAMS, make_optimizer(0.1))
  guard = state.opt_state[0]
  saturated = guard._replace(notfinite_count=jnp.int32(steps.NEVER_APPLY_NONFINITE))
  state = state.replace(opt_state=(saturated, *state.opt_state[1:]))
  kept = _apply(state, _grads(jnp.nan))
  assert _equal(kept.params, PARAMS)


def test_a_skipped_step_moves_the_learning_rate_schedule_on():
  optimizer = make_optimizer(1.0, warmup_steps=2, total_steps=4)  # lr 0 at step 0, 0.5 at 1
  fresh = create_train_state(PARAMS, optimizer)
  assert _equal(_apply(fresh, _grads(1.0)).params, PARAMS)  # a first step at lr 0
  after_skip = _apply(_apply(fresh, _grads(jnp.nan)), _grads(1.0))
  assert not np.array_equal(after_skip.params["w"], PARAMS["w"])


def test_finite_gradients_whose_norm_overflows_are_not_applied():
  """Gradients of 1e20 are finite but their norm is not: the host reports the step skipped, and
  Adam would store an infinite second moment."""
  state = create_train_state(PARAMS, make_optimizer(0.1))
  grads = _grads(1e20)
  norm = optax.tree.norm(grads)
  assert not jnp.isfinite(norm)
  kept = jax.jit(steps._apply_gradients)(state, grads, jnp.float32(1.0), norm)
  assert _equal(kept.params, PARAMS)
  assert _equal(kept.opt_state[0].inner_state, state.opt_state[0].inner_state)
  assert not np.isfinite(_apply(state, grads).opt_state[0].inner_state[0].nu["w"]).all()


@pytest.mark.parametrize("bad", ["loss", "grad_norm"])
def test_a_non_finite_loss_or_norm_keeps_the_parameters(bad):
  state = create_train_state(PARAMS, make_optimizer(0.1))
  checked = {"loss": jnp.float32(1.0), "grad_norm": jnp.float32(1.0)}
  apply = jax.jit(steps._apply_gradients)
  moved = apply(state, _grads(1.0), checked["loss"], checked["grad_norm"])
  assert not np.array_equal(moved.params["w"], PARAMS["w"])
  checked[bad] = jnp.float32(jnp.nan)
  kept = apply(state, _grads(1.0), checked["loss"], checked["grad_norm"])
  assert _equal(kept.params, PARAMS)


def test_the_guarded_state_checkpoints_and_resumes(tmp_path):
  state = create_train_state(PARAMS, make_optimizer(0.1, grad_clip=1.0, weight_decay=0.1))
  state = _apply(_apply(state, _grads(0.5)), _grads(jnp.nan))  # one applied, one skipped
  checkpointer = checkpoints.RunCheckpointer(str(tmp_path))
  checkpointer.save(2, state)
  checkpointer.close()
  fresh = create_train_state(PARAMS, make_optimizer(0.1, grad_clip=1.0, weight_decay=0.1))
  restored = checkpoints.RunCheckpointer(str(tmp_path)).restore_latest(fresh)
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  assert _equal(restored, state)
  assert not bool(restored.opt_state[0].last_finite)
  assert int(restored.opt_state[0].total_notfinite) == 1
