"""The jitted KV-cache sampler: greedy = argmax, statistics, top-k/top-p, EOS, no recompilation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from th_distill import sampling
from th_distill.models import EOS_ID, PAD_ID, T5, init_params, shift_right, t5_config

VOCAB, LENGTH = 24, 6


@pytest.fixture(scope="module")
def model_and_params():
  model = T5(t5_config("tiny", vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64))
  params = nn.unbox(init_params(model, jax.random.PRNGKey(0)))
  # Sharpen the output layer a little so that greedy paths are unambiguous.
  params = {**params, "logits_kernel": params["logits_kernel"] * 3.0}
  return model, params


def _prompts(batch, seed=1, length=5):
  return jax.random.randint(jax.random.PRNGKey(seed), (batch, length), 2, VOCAB)


def _forced_log_probs(model, params, prompts, tokens):
  logits = model.apply({"params": params}, prompts, shift_right(tokens))
  return jax.nn.log_softmax(logits.at[..., PAD_ID].set(-jnp.inf))


def test_greedy_equals_argmax_of_the_full_forward(model_and_params):
  model, params = model_and_params
  prompts = _prompts(8)
  out = sampling.sample(model, params, prompts, jax.random.PRNGKey(0), max_length=LENGTH,
                        temperature=0.0, eos_id=-1)
  log_probs = _forced_log_probs(model, params, prompts, out.tokens)
  np.testing.assert_array_equal(out.tokens, jnp.argmax(log_probs, -1))
  assert out.mask.all()


def test_logprobs_match_the_teacher_forced_model(model_and_params):
  model, params = model_and_params
  prompts = _prompts(16)
  out = sampling.sample(model, params, prompts, jax.random.PRNGKey(3), max_length=LENGTH)
  log_probs = _forced_log_probs(model, params, prompts, out.tokens)
  expected = jnp.take_along_axis(log_probs, out.tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(out.logprobs, jnp.where(out.mask, expected, 0.0), atol=1e-5)


def test_sample_frequencies_match_model_probabilities(model_and_params):
  """Chi-square goodness of fit at alpha = 1e-3 (the false-alarm rate of each of the two checks),
  with a fixed seed, so the test is deterministic."""
  model, params = model_and_params
  n = 4000
  prompt = np.tile(np.asarray(_prompts(1, seed=7)), (n, 1))
  out = sampling.sample(model, params, prompt, jax.random.PRNGKey(11), max_length=2, eos_id=-1)
  tokens = np.asarray(out.tokens)
  log_probs = np.asarray(_forced_log_probs(model, params, prompt[:1], tokens[:1]))[0]

  def check(observed_tokens, probs):
    probs = np.float64(probs) / np.sum(np.float64(probs))
    counts = np.bincount(observed_tokens, minlength=VOCAB).astype(float)
    expected = probs * len(observed_tokens)
    keep = expected >= 5  # pool rare tokens into one cell, as the chi-square test requires
    f_obs = np.append(counts[keep], counts[~keep].sum())
    f_exp = np.append(expected[keep], expected[~keep].sum())
    if f_exp[-1] == 0:
      f_obs, f_exp = f_obs[:-1], f_exp[:-1]
    assert stats.chisquare(f_obs, f_exp).pvalue > 1e-3

  check(tokens[:, 0], np.exp(log_probs[0]))
  # Second token, conditional on the most frequent first token.
  first = np.bincount(tokens[:, 0]).argmax()
  rows = tokens[tokens[:, 0] == first]
  cond = np.asarray(_forced_log_probs(model, params, prompt[:1], rows[:1]))[0, 1]
  check(rows[:, 1], np.exp(cond))


def test_top_k_and_top_p_restrict_the_support(model_and_params):
  model, params = model_and_params
  n = 512
  prompt = np.tile(np.asarray(_prompts(1, seed=5)), (n, 1))
  probs = np.exp(np.asarray(_forced_log_probs(model, params, prompt[:1],
                                              np.zeros((1, 1), np.int32)))[0, 0])
  order = np.argsort(-probs)
  out = sampling.sample(model, params, prompt, jax.random.PRNGKey(2), max_length=1, top_k=3,
                        eos_id=-1)
  assert set(np.asarray(out.tokens[:, 0])) <= set(order[:3])
  nucleus_size = int(np.searchsorted(np.cumsum(probs[order]), 0.6) + 1)
  out = sampling.sample(model, params, prompt, jax.random.PRNGKey(2), max_length=1, top_p=0.6,
                        eos_id=-1)
  assert set(np.asarray(out.tokens[:, 0])) <= set(order[:nucleus_size])
  # Log-probs are those of the renormalised nucleus.
  nucleus = probs[order[:nucleus_size]].sum()
  np.testing.assert_allclose(np.exp(out.logprobs[:, 0]), probs[out.tokens[:, 0]] / nucleus,
                             rtol=1e-4)


def test_eos_ends_a_sequence(model_and_params):
  model, params = model_and_params
  # EOS gets the output column of the most frequent token: likely but not certain, so rows end
  # at various lengths.
  prompts = _prompts(64)
  out = sampling.sample(model, params, prompts, jax.random.PRNGKey(4), max_length=LENGTH)
  frequent = np.bincount(np.asarray(out.tokens).ravel(), minlength=VOCAB)[2:].argmax() + 2
  kernel = params["logits_kernel"]
  params = {**params, "logits_kernel": kernel.at[:, EOS_ID].set(kernel[:, frequent])}
  out = sampling.sample(model, params, prompts, jax.random.PRNGKey(4), max_length=LENGTH)
  lengths = np.asarray(out.mask).sum(1)
  assert len(set(lengths)) > 2 and lengths.max() == LENGTH  # the test covers both cases
  tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
  for row, row_mask in zip(tokens, mask):
    length = int(row_mask.sum())
    assert np.all(row_mask[:length]) and not np.any(row_mask[length:])
    assert np.all(row[length:] == PAD_ID)
    assert np.all(row[:length - 1] != EOS_ID)
    if length < LENGTH:
      assert row[length - 1] == EOS_ID
  assert PAD_ID not in tokens[mask]


def test_a_second_call_does_not_recompile(model_and_params):
  model, params = model_and_params
  kwargs = dict(max_length=LENGTH, temperature=0.8, top_k=5)
  sampling.sample(model, params, _prompts(4, seed=1), jax.random.PRNGKey(0), **kwargs)
  size = sampling.sample._cache_size()
  sampling.sample(model, params, _prompts(4, seed=2), jax.random.PRNGKey(1), **kwargs)
  assert sampling.sample._cache_size() == size


def test_a_sample_does_not_depend_on_the_rest_of_the_batch(model_and_params):
  model, params = model_and_params
  prompts = _prompts(6)
  keys = jax.random.split(jax.random.PRNGKey(9), 6)
  full = sampling.sample(model, params, prompts, keys, max_length=LENGTH)
  order = np.array([3, 0, 5])
  part = sampling.sample(model, params, prompts[order], keys[order], max_length=LENGTH)
  np.testing.assert_array_equal(full.tokens[order], part.tokens)


def test_cached_and_uncached_sampling_agree(model_and_params):
  model, params = model_and_params
  prompts = _prompts(8)
  kwargs = dict(max_length=LENGTH, temperature=1.0, top_p=0.9)
  cached = sampling.sample(model, params, prompts, jax.random.PRNGKey(5), **kwargs)
  uncached = sampling.sample_uncached(model, params, prompts, jax.random.PRNGKey(5), **kwargs)
  np.testing.assert_array_equal(cached.tokens, uncached.tokens)
  np.testing.assert_allclose(cached.logprobs, uncached.logprobs, atol=1e-5)


@pytest.mark.parametrize("kwargs, field", [(dict(max_length=0), "max_length"),
                                           (dict(temperature=-1.0), "temperature"),
                                           (dict(top_p=0.0), "top_p"),
                                           (dict(top_k=-2), "top_k")])
def test_bad_arguments_are_named(model_and_params, kwargs, field):
  model, params = model_and_params
  with pytest.raises(ValueError, match=field):
    sampling.sample(model, params, _prompts(2), jax.random.PRNGKey(0),
                    **{"max_length": 3, **kwargs})
