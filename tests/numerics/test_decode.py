"""Incremental decoding with the KV cache (`T5.init_cache`, `T5.decode_step`, `extend_cache`)
gives the teacher-forced forward pass's logits at every position, in pure JAX, for a tiny random
model whose relative-position buckets are exercised beyond their exact range (float32)."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from th_distill.models import T5, extend_cache, init_params, shift_right, t5_config

VOCAB, PROMPT, STEPS, ROWS = 32, 7, 20, 3
# Relative distances >= 4 fall in logarithmic buckets, and >= 12 in the last one.
MODEL = T5(
  t5_config(
    "tiny",
    vocab_size=VOCAB,
    d_model=32,
    d_kv=8,
    d_ff=64,
    num_heads=2,
    num_encoder_layers=2,
    num_decoder_layers=2,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=12,
  )
)


@jax.jit
def _forward(params, prompts, prompt_mask, decoder_inputs):
  return MODEL.apply({"params": params}, prompts, prompt_mask, decoder_inputs)


@jax.jit
def _decode_step(params, token, cache):
  return MODEL.apply({"params": params}, token, cache, method=T5.decode_step)


def _init_cache(params, prompts, prompt_mask, length):
  encoded = MODEL.apply({"params": params}, prompts, prompt_mask, method=T5.encode)
  return MODEL.apply({"params": params}, encoded, prompt_mask, length, method=T5.init_cache)


@pytest.fixture(scope="module")
def inputs():
  """Parameters (output layer sharpened), prompts [ROWS, PROMPT] with trailing padding in two
  rows and their mask, decoder inputs [ROWS, STEPS] and the forward pass's logits
  [ROWS, STEPS, VOCAB]."""
  params = nn.unbox(init_params(MODEL, jax.random.PRNGKey(0)))
  params = {**params, "logits_kernel": params["logits_kernel"] * 4.0}
  prompts = np.array(jax.random.randint(jax.random.PRNGKey(1), (ROWS, PROMPT), 2, VOCAB))
  prompts[1, 4:] = 0
  prompts[2, 1:] = 0
  prompt_mask = np.arange(PROMPT)[None] < np.array([PROMPT, 4, 1])[:, None]  # the real lengths
  targets = jax.random.randint(jax.random.PRNGKey(2), (ROWS, STEPS), 0, VOCAB)
  decoder_inputs = shift_right(targets)
  full = np.asarray(_forward(params, prompts, prompt_mask, decoder_inputs))
  return params, (prompts, prompt_mask), decoder_inputs, full


def _decode(params, cache, decoder_inputs, start, stop):
  """Logits [ROWS, stop - start, VOCAB] of `decode_step` over positions [start, stop)."""
  logits = []
  for t in range(start, stop):
    assert int(cache["index"]) == t
    step_logits, cache = _decode_step(params, decoder_inputs[:, t], cache)
    logits.append(np.asarray(step_logits))
  return np.stack(logits, axis=1), cache


def test_incremental_decoding_equals_the_forward_pass(inputs):
  params, prompts, decoder_inputs, full = inputs
  assert np.std(full) > 1.0  # logits far from uniform: a wrong position or mask would show
  steps, _ = _decode(params, _init_cache(params, *prompts, STEPS), decoder_inputs, 0, STEPS)
  np.testing.assert_allclose(steps, full, atol=2e-5, rtol=1e-5)


def test_an_extended_cache_decodes_as_one_allocated_at_full_length(inputs):
  """A cache of 5 positions, extended to 11 then to STEPS between steps (as the sampler's
  segments do), gives the same logits as the forward pass."""
  params, prompts, decoder_inputs, full = inputs
  cache = _init_cache(params, *prompts, 5)
  first, cache = _decode(params, cache, decoder_inputs, 0, 5)
  middle, cache = _decode(params, extend_cache(cache, 11), decoder_inputs, 5, 11)
  last, _ = _decode(params, extend_cache(cache, STEPS), decoder_inputs, 11, STEPS)
  np.testing.assert_allclose(
    np.concatenate([first, middle, last], axis=1), full, atol=2e-5, rtol=1e-5
  )
