"""The stage-2 data regimes (`th_distill.data.regimes`) with fake samplers returning known arrays:
the offline dataset's rows and keys, its epochs (each row once, reshuffled, a pure function of the
step), and the online producers' prompt draw, key folding and mixture."""

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


def test_online_regime_is_checked():
  with pytest.raises(ValueError, match="Not an online regime"):
    regimes.online_batches(
      "offline", _pool(4), 2, jax.random.PRNGKey(0), FakeSampler(1), FakeSampler(2), "teacher"
    )


@pytest.mark.parametrize("regime, key_index", [("online_teacher", 1), ("online_student", 2)])
def test_online_batches_sample_one_model_with_the_steps_key(regime, key_index):
  rng, pool, batch_size = jax.random.PRNGKey(5), _pool(30), 6
  teacher, student = FakeSampler(code=1), FakeSampler(code=2)
  batch_at = regimes.online_batches(regime, pool, batch_size, rng, teacher, student, "teacher")
  for step in (0, 3):
    batch = batch_at(step, "student")
    keys = _step_keys(rng, step)
    expected_rows = np.asarray(jax.random.randint(keys[0], (batch_size,), 0, len(pool)))
    np.testing.assert_array_equal(batch.prompts, pool.tokens[expected_rows])
    np.testing.assert_array_equal(batch.prompt_mask, pool.mask[expected_rows])
    used, unused = (teacher, student) if regime == "online_teacher" else (student, teacher)
    params, prompts, prompt_mask, key = used.calls[-1]
    assert params == ("teacher" if used is teacher else "student") and not unused.calls
    np.testing.assert_array_equal(prompts, batch.prompts)
    np.testing.assert_array_equal(prompt_mask, batch.prompt_mask)
    np.testing.assert_array_equal(key, keys[key_index])
    tokens, mask = used(params, prompts, prompt_mask, key)
    np.testing.assert_array_equal(batch.responses, tokens)
    np.testing.assert_array_equal(batch.mask, mask)
  assert not np.array_equal(batch_at(0, "student").prompts, batch_at(3, "student").prompts)


def test_mixture_takes_each_row_from_the_student_with_the_given_probability():
  rng, batch_size, fraction = jax.random.PRNGKey(8), 4000, 0.3
  teacher, student = FakeSampler(code=1), FakeSampler(code=2)
  batch_at = regimes.online_batches(
    "mixture", _pool(50), batch_size, rng, teacher, student, "teacher", student_fraction=fraction
  )
  batch = batch_at(2, "student")
  keys = _step_keys(rng, 2)
  (*_, teacher_key), (*_, student_key) = teacher.calls[-1], student.calls[-1]
  np.testing.assert_array_equal(teacher_key, keys[1])
  np.testing.assert_array_equal(student_key, keys[2])
  from_student = batch.responses[:, 0] % 10 == 2
  assert np.all(from_student | (batch.responses[:, 0] % 10 == 1))
  np.testing.assert_array_equal(
    from_student, jax.random.bernoulli(keys[3], fraction, (batch_size, 1))[:, 0]
  )
  # Binomial(4000, 0.3): standard deviation 0.0072 of the fraction.
  assert abs(from_student.mean() - fraction) < 0.03
  # A row comes whole from one model: its last token is that model's draw.
  t_tokens, _ = teacher(*teacher.calls[-1])
  s_tokens, _ = student(*student.calls[-1])
  np.testing.assert_array_equal(
    batch.responses, np.where(from_student[:, None], s_tokens, t_tokens)
  )
  assert batch.mask.dtype == np.float32


@pytest.mark.parametrize("fraction, code", [(0.0, 1), (1.0, 2)])
def test_mixture_extremes_are_one_model(fraction, code):
  batch_at = regimes.online_batches(
    "mixture",
    _pool(20),
    64,
    jax.random.PRNGKey(1),
    FakeSampler(code=1),
    FakeSampler(code=2),
    "teacher",
    student_fraction=fraction,
  )
  assert np.all(batch_at(0, "student").responses[:, 0] % 10 == code)
