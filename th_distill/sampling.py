"""The jitted generation loop: encoder once, then `lax.while_loop` over the decoder's KV cache.

One function serves the oracle, the teacher and the student: it takes the model module (static)
and its parameters, never a model name.

Shapes: B batch, Li prompt length, L `max_length` (response length), V vocabulary.

Conventions:
- A response holds up to L tokens; generation of a row stops after it emits `eos_id` (EOS is part
  of the response and of its mask); later positions hold 0 (padding) with mask 0. The loop exits
  early once every row is done. Token 0 (padding, also the decoder start token) is never sampled.
- Randomness: `rng` is one key (split into B per-example keys) or B keys. The token at step t of
  row b uses `fold_in(key_b, t)`, so a row's sample depends only on its prompt and its key, not on
  the rest of the batch (the batch can be resharded or regrouped without changing samples).
- `logprobs[b, t]` is the log-probability of the emitted token under the distribution it was drawn
  from (after temperature, top-k and top-p); for greedy decoding (temperature 0) it is the model's
  log-softmax at temperature 1.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from th_distill.models import EOS_ID, PAD_ID, T5, shift_right

Array = jax.Array


class SampleOutput(NamedTuple):
  tokens: Array    # [B, L] int32: response tokens, EOS included, then 0
  mask: Array      # [B, L] bool: True on real response tokens (EOS included)
  logprobs: Array  # [B, L] float32: log-prob of each emitted token, 0 on padding


def _check(max_length: int, temperature: float, top_k: int, top_p: float) -> None:
  if max_length <= 0:
    raise ValueError(f"max_length must be > 0, got {max_length}.")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}.")
  if top_k < 0:
    raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}.")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p}.")


def sampling_log_probs(logits: Array, temperature: float, top_k: int, top_p: float) -> Array:
  """Log-probabilities [..., V] of the distribution sampled from: padding removed, logits divided
  by `temperature` (> 0), then restricted to the `top_k` most likely tokens (0 = all) and to the
  smallest nucleus of mass >= `top_p` (the most likely token always stays)."""
  logits = logits.astype(jnp.float32).at[..., PAD_ID].set(-jnp.inf) / temperature
  if top_k > 0:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    # The smallest logit kept: the last sorted entry whose preceding mass is still < top_p.
    keep = mass_before < top_p
    threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return jax.nn.log_softmax(logits, axis=-1)


def _select(logits: Array, keys: Array, step: Array, temperature: float, top_k: int,
            top_p: float) -> tuple[Array, Array]:
  """Chooses the tokens [B] for one step from `logits` [B, V]; returns (tokens, logprobs)."""
  if temperature == 0.0:
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32).at[:, PAD_ID].set(-jnp.inf))
    tokens = jnp.argmax(log_probs, axis=-1)
  else:
    log_probs = sampling_log_probs(logits, temperature, top_k, top_p)
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)
    tokens = jax.vmap(jax.random.categorical)(step_keys, log_probs)
  tokens = tokens.astype(jnp.int32)
  return tokens, jnp.take_along_axis(log_probs, tokens[:, None], axis=-1)[:, 0]


def _example_keys(rng: Array, batch: int) -> Array:
  if rng.ndim == 0 or (rng.ndim == 1 and rng.dtype == jnp.uint32 and rng.shape == (2,)):
    return jax.random.split(rng, batch)
  if rng.shape[0] != batch:
    raise ValueError(f"rng holds {rng.shape[0]} keys for a batch of {batch}.")
  return rng


class _Loop(NamedTuple):
  step: Array      # [] int32
  cache: Any
  tokens: Array    # [B, L]
  logprobs: Array  # [B, L]
  done: Array      # [B] bool


def _finish(tokens: Array, logprobs: Array, eos_id: int) -> SampleOutput:
  """Masks everything after the first EOS of each row: [B, L] x2 -> SampleOutput."""
  is_eos = tokens == eos_id
  after_eos = (jnp.cumsum(is_eos, axis=1) - is_eos) > 0
  mask = ~after_eos
  return SampleOutput(jnp.where(mask, tokens, PAD_ID), mask, jnp.where(mask, logprobs, 0.0))


@functools.partial(jax.jit, static_argnames=("model", "max_length", "temperature", "top_k",
                                             "top_p", "eos_id"))
def sample(model: T5, params: Any, input_tokens: Array, rng: Array, *, max_length: int,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           eos_id: int = EOS_ID) -> SampleOutput:
  """Samples responses [B, L] to `input_tokens` [B, Li] with the KV cache (see module doc).

  `eos_id = -1` never stops a row (forces full-length responses, e.g. for benchmarks).
  """
  _check(max_length, temperature, top_k, top_p)
  batch = input_tokens.shape[0]
  keys = _example_keys(rng, batch)
  variables = {"params": params}
  encoded = model.apply(variables, input_tokens, method=T5.encode)
  cache = model.apply(variables, encoded, input_tokens, max_length, method=T5.init_cache)

  def body(loop: _Loop) -> _Loop:
    previous = jnp.where(loop.step == 0, PAD_ID,
                         jax.lax.dynamic_index_in_dim(loop.tokens, loop.step - 1, axis=1,
                                                      keepdims=False))
    logits, cache = model.apply(variables, previous, loop.cache, method=T5.decode_step)
    tokens, logprobs = _select(logits, keys, loop.step, temperature, top_k, top_p)
    return _Loop(loop.step + 1, cache,
                 jax.lax.dynamic_update_index_in_dim(loop.tokens, tokens, loop.step, axis=1),
                 jax.lax.dynamic_update_index_in_dim(loop.logprobs, logprobs, loop.step, axis=1),
                 loop.done | (tokens == eos_id))

  def cond(loop: _Loop) -> Array:
    return (loop.step < max_length) & ~jnp.all(loop.done)

  init = _Loop(jnp.zeros((), jnp.int32), cache, jnp.zeros((batch, max_length), jnp.int32),
               jnp.zeros((batch, max_length), jnp.float32), jnp.zeros((batch,), bool))
  final = jax.lax.while_loop(cond, body, init)
  return _finish(final.tokens, final.logprobs, eos_id)


@functools.partial(jax.jit, static_argnames=("model", "max_length", "temperature", "top_k",
                                             "top_p", "eos_id"))
def sample_uncached(model: T5, params: Any, input_tokens: Array, rng: Array, *,
                    max_length: int, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0, eos_id: int = EOS_ID) -> SampleOutput:
  """The same samples as `sample`, without a KV cache: every step re-runs the teacher-forced
  decoder over the whole [B, L] buffer (the baseline of bench/sampler.py)."""
  _check(max_length, temperature, top_k, top_p)
  batch = input_tokens.shape[0]
  keys = _example_keys(rng, batch)
  variables = {"params": params}
  encoded = model.apply(variables, input_tokens, method=T5.encode)

  def body(step, carry):
    tokens, logprobs = carry
    logits = model.apply(variables, encoded, input_tokens, shift_right(tokens), method=T5.decode)
    new, new_logprobs = _select(logits[:, step], keys, step, temperature, top_k, top_p)
    return (jax.lax.dynamic_update_index_in_dim(tokens, new, step, axis=1),
            jax.lax.dynamic_update_index_in_dim(logprobs, new_logprobs, step, axis=1))

  tokens, logprobs = jax.lax.fori_loop(
      0, max_length, body, (jnp.zeros((batch, max_length), jnp.int32),
                            jnp.zeros((batch, max_length), jnp.float32)))
  return _finish(tokens, logprobs, eos_id)
