"""Micro-batching and sequence-chunked logits give the full batch's loss, metrics and gradient."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from th_distill import divergences
from th_distill.models import T5, init_params, t5_config
from th_distill.training.eval_steps import eval_sums
from th_distill.training.steps import Batch, create_train_state, distill_step
from th_distill.training.teacher_forcing import forward

VOCAB, B, LI, LT = 32, 8, 5, 8


@pytest.fixture(scope="module")
def setup():
  small = dict(
    vocab_size=VOCAB,
    d_model=16,
    d_kv=4,
    d_ff=32,
    num_heads=2,
    num_encoder_layers=1,
    num_decoder_layers=1,
  )
  student, teacher, oracle = (
    T5(t5_config("tiny", **small)),
    T5(t5_config("tiny", **{**small, "d_model": 24})),
    T5(t5_config("tiny", **{**small, "num_heads": 4})),
  )
  params = [
    nn.unbox(init_params(m, jax.random.PRNGKey(i)))
    for i, m in enumerate((student, teacher, oracle))
  ]
  rng = np.random.default_rng(0)
  # Very different numbers of valid tokens per row, so a mean of per-micro-batch means (the
  # classic accumulation bug) would differ from the batch's per-token mean.
  lengths = np.array([1, 8, 2, 8, 3, 7, 1, 5])
  mask = (np.arange(LT)[None] < lengths[:, None]).astype(np.float32)
  batch = Batch(
    prompts=jnp.asarray(rng.integers(2, VOCAB, (B, LI)), jnp.int32),
    prompt_mask=jnp.ones((B, LI), bool),
    responses=jnp.asarray(rng.integers(0, VOCAB, (B, LT)) * mask, jnp.int32),
    mask=jnp.asarray(mask),
  )
  return (student, teacher, oracle), params, batch


_RESULTS = {}


def _step(setup, loss, micro_batches, sequence_chunks):
  """(gradient, metrics) of one step; memoised, since every setting is a separate compilation."""
  key = (loss, micro_batches, sequence_chunks)
  if key not in _RESULTS:
    _RESULTS[key] = _compute_step(setup, *key)
  return _RESULTS[key]


def _compute_step(setup, loss, micro_batches, sequence_chunks):
  models, (s_params, t_params, o_params), batch = setup
  state = create_train_state(s_params, optax.sgd(1.0))  # update = -gradient, exactly
  step = jax.jit(
    functools.partial(
      distill_step,
      student=models[0],
      teacher=models[1],
      oracle=models[2],
      loss=loss,
      micro_batches=micro_batches,
      sequence_chunks=sequence_chunks,
    )
  )
  new_state, metrics = step(state, t_params, o_params, batch, jax.random.PRNGKey(0))
  grads = jax.tree_util.tree_map(lambda new, old: old - new, new_state.params, s_params)
  return grads, metrics


def _reference_grads(setup, loss):
  """Brute force: the per-token mean of the divergence over the whole batch, differentiated."""
  models, (s_params, t_params, _), batch = setup
  teacher_logits = forward(models[1], t_params, batch)

  def loss_fn(params):
    per_token = divergences.token_divergence(
      loss, teacher_logits, forward(models[0], params, batch)
    )
    return divergences.per_token_mean(per_token, batch.mask)

  return jax.value_and_grad(loss_fn)(s_params)


@pytest.mark.parametrize(
  "loss, micro_batches, sequence_chunks",
  [("fkl", 1, 1), ("fkl", 8, 1), ("fkl", 1, 4), ("jsd", 2, 2)],
)
def test_accumulated_and_chunked_steps_equal_the_full_batch(
  setup, loss, micro_batches, sequence_chunks
):
  value, reference = _reference_grads(setup, loss)
  grads, metrics = _step(setup, loss, micro_batches, sequence_chunks)
  np.testing.assert_allclose(metrics["train/loss"], value, rtol=1e-5)
  for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(reference)):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(metrics["train/grad_norm"], optax.tree.norm(reference), rtol=1e-5)
  _, full = _step(setup, loss, 1, 1)
  for name, value in full.items():
    np.testing.assert_allclose(metrics[name], value, rtol=1e-5, err_msg=name)


def test_chunked_eval_sums_equal_the_full_ones(setup):
  models, params, batch = setup
  full, chunked = (
    jax.jit(
      functools.partial(
        eval_sums, student=models[0], teacher=models[1], oracle=models[2], sequence_chunks=c
      )
    )(*params, batch)
    for c in (1, 4)
  )
  assert float(full["sequences"]) == B and float(full["tokens"]) == float(batch.mask.sum())
  for name, value in full.items():
    np.testing.assert_allclose(chunked[name], value, rtol=1e-5, err_msg=name)


def test_a_batch_that_does_not_split_is_named(setup):
  with pytest.raises(ValueError, match="micro_batches = 3"):
    _step(setup, "fkl", 3, 1)
  with pytest.raises(ValueError, match="sequence_chunks = 3"):
    _step(setup, "fkl", 1, 3)
