"""The stage-2 data regimes (`th_distill.data.regimes`) with fake samplers returning known arrays:
the offline dataset's rows and keys, its epochs (each row once, reshuffled, a pure function of the
step), and the online producer's prompt draw and key folding (each online regime's responses:
tests/data/test_freshness.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from th_distill.data import regimes
from th_distill.data.batch import PromptSet

LI, LT, VOCAB = 3, 4, 50


class FakeSampler:
  """A `SampleFn` that records its calls (params, prompts, prompt_mask, rng): row b's tokens are
  `prompts[b, 0] * 10 + code` at every position, followed by a key-dependent draw in [0, 10) for
  the last one (so generations of one prompt differ); the mask is float32, 1.0 except on the
  last position."""

  def __init__(self, code: int):
    self.code, self.calls = code, []

  def __call__(self, params, prompts, prompt_mask, rng):
    self.calls.append((params, np.asarray(prompts), np.asarray(prompt_mask), np.asarray(rng)))
    prompts = jnp.asarray(prompts)
    tokens = jnp.repeat(prompts[:, :1] * 10 + self.code, LT, axis=1)
    draw = jax.random.randint(rng, (prompts.shape[0],), 0, 10)
    tokens = tokens.at[:, -1].set(draw)
    mask = jnp.ones((prompts.shape[0], LT), jnp.float32).at[:, -1].set(0.0)
    return tokens, mask


def _pool(size: int) -> PromptSet:
  """Prompts [size, LI] whose first token is the row's index + 1 (no two alike), row i of real
  length 1 + i % LI (the rest is filler 0), so that a mask not carried with its row shows."""
  tokens = np.stack([np.arange(1, size + 1)] * LI, axis=1).astype(np.int32)
  mask = np.arange(LI)[None] < (1 + np.arange(size) % LI)[:, None]
  return PromptSet(np.where(mask, tokens, 0), mask)


# --- build_offline -----------------------------------------------------------------------------


def test_build_offline_samples_k_generations_per_prompt_in_chunks():
  n, k, chunk = 5, 3, 4
  rng = jax.random.PRNGKey(7)
  sampler = FakeSampler(code=1)
  data = regimes.build_offline(sampler, "teacher", _pool(n), k, rng, chunk_size=chunk)
  assert data["prompts"].shape == data["prompt_mask"].shape == (n * k, LI)
  assert data["responses"].shape == data["mask"].shape == (n * k, LT)
  assert data["mask"].dtype == np.float32 and data["prompt_mask"].dtype == bool
  np.testing.assert_array_equal(data["prompt_index"], np.repeat(np.arange(n), k))
  np.testing.assert_array_equal(data["prompts"], _pool(n).tokens[data["prompt_index"]])
  np.testing.assert_array_equal(data["prompt_mask"], _pool(n).mask[data["prompt_index"]])
  np.testing.assert_array_equal(data["responses"][:, 0], data["prompts"][:, 0] * 10 + 1)
  # Chunks of 4 rows (the last one short), each with the key folded with its first row, and
  # each with its rows' masks.
  assert [len(p) for _, p, _, _ in sampler.calls] == [4, 4, 4, 3]
  assert all(params == "teacher" for params, _, _, _ in sampler.calls)
  for (_, prompts, mask, key), start in zip(sampler.calls, range(0, n * k, chunk)):
    np.testing.assert_array_equal(key, jax.random.fold_in(rng, start))
    np.testing.assert_array_equal(prompts, data["prompts"][start : start + chunk])
    np.testing.assert_array_equal(mask, data["prompt_mask"][start : start + chunk])
  # The k generations of a prompt are sampled apart (here: the last token differs somewhere).
  last = data["responses"][:, -1].reshape(n, k)
  assert any(len(set(row)) > 1 for row in last)
  again = regimes.build_offline(FakeSampler(code=1), "teacher", _pool(n), k, rng, chunk_size=chunk)
  for name in data:
    np.testing.assert_array_equal(data[name], again[name])


# --- offline_batches ---------------------------------------------------------------------------


def _dataset(size: int) -> dict[str, np.ndarray]:
  """Rows identified by their prompt's first token (index + 1), responses and mask tied to it."""
  prompts = _pool(size)
  return dict(
    prompts=prompts.tokens,
    prompt_mask=prompts.mask,
    responses=np.repeat(prompts.tokens[:, :1] * 10, LT, axis=1),
    mask=np.tile(np.arange(1, size + 1)[:, None] % 2, (1, LT)).astype(np.float32),
  )


def _stream(batch_at, steps: int) -> np.ndarray:
  """The row ids (0-based) of `steps` consecutive batches, checking each row's fields agree."""
  ids = []
  for step in range(steps):
    batch = batch_at(step)
    row = batch.prompts[:, 0] - 1
    np.testing.assert_array_equal(batch.prompt_mask, _pool(row.max() + 1).mask[row])
    np.testing.assert_array_equal(batch.responses, np.repeat(batch.prompts[:, :1] * 10, LT, 1))
    np.testing.assert_array_equal(batch.mask[:, 0], (row + 1) % 2)
    ids.append(row)
  return np.concatenate(ids)


@pytest.mark.parametrize("size, batch_size", [(12, 4), (10, 4)])  # (10, 4): batches straddle
def test_offline_epochs_cover_every_row_once_in_a_new_order_each(size, batch_size):
  epochs = 4
  steps = size * epochs // batch_size
  stream = _stream(regimes.offline_batches(_dataset(size), batch_size, seed=0), steps)
  orders = stream.reshape(epochs, size)
  for order in orders:
    np.testing.assert_array_equal(np.sort(order), np.arange(size))
  assert len({tuple(order) for order in orders}) == epochs


def test_offline_batches_are_a_pure_function_of_seed_and_step():
  data = _dataset(10)
  batch_at = regimes.offline_batches(data, 4, seed=3)
  forward = _stream(batch_at, 8)
  backward = [batch_at(step).prompts[:, 0] - 1 for step in reversed(range(8))]
  np.testing.assert_array_equal(np.concatenate(backward[::-1]), forward)
  np.testing.assert_array_equal(_stream(regimes.offline_batches(data, 4, seed=3), 8), forward)
  assert not np.array_equal(_stream(regimes.offline_batches(data, 4, seed=4), 8), forward)


# --- online_batches ----------------------------------------------------------------------------


def _step_keys(rng, step):
  """(prompt, teacher, student, mixture) keys of `step`."""
  return jax.random.split(jax.random.fold_in(rng, step), 4)


def test_online_batches_draw_the_steps_prompts_and_keys_and_take_the_responses_given():
  rng, pool, batch_size = jax.random.PRNGKey(5), _pool(30), 6
  sampler, calls = FakeSampler(code=2), []

  def respond(prompts, keys, student_params):
    calls.append((prompts, keys, student_params))
    return sampler(student_params, prompts.tokens, prompts.mask, keys.student)

  batch_at = regimes.online_batches(pool, batch_size, rng, respond)
  for step in (0, 3):
    batch = batch_at(step, "student")
    keys = _step_keys(rng, step)
    expected_rows = np.asarray(jax.random.randint(keys[0], (batch_size,), 0, len(pool)))
    np.testing.assert_array_equal(batch.prompts, pool.tokens[expected_rows])
    np.testing.assert_array_equal(batch.prompt_mask, pool.mask[expected_rows])
    prompts, given, params = calls[-1]
    assert params == "student" and given._fields == ("teacher", "student", "mixture")
    np.testing.assert_array_equal(prompts.tokens, batch.prompts)
    np.testing.assert_array_equal(prompts.mask, batch.prompt_mask)
    for got, want in zip(given, keys[1:], strict=True):
      np.testing.assert_array_equal(got, want)
    tokens, mask = sampler(*sampler.calls[-1])
    np.testing.assert_array_equal(batch.responses, tokens)
    np.testing.assert_array_equal(batch.mask, mask)
  assert not np.array_equal(batch_at(0, "student").prompts, batch_at(3, "student").prompts)
