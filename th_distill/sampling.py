"""The jitted generation loop: `start_decode` once, then `lax.while_loop` over the KV cache.

One function serves the oracle, the teacher and the student: it takes the model module (static;
any `th_distill.models.interface.LanguageModel`) and its parameters, never a model name. `generate` is the traceable loop
(`th_distill.partitioning.Partitioner.jit` compiles it with explicit shardings); `sample` is
`generate` jitted for one device or for arrays already placed on a mesh, refusing prompt ids
outside the vocabulary and malformed masks first (`check_prompts`; its settings and shapes:
`th_distill.sampling_checks`). `sample_uncached` is the same loop without a cache (it re-runs
the teacher-forced `response_logits` every step): the baseline of `bench/sampler.py`.
A `SampleFn` binds a sampler to one model and its settings: what the data regimes
(`th_distill.data.regimes`) and the oracle's calibration take.

Shapes: B batch, Li prompt length, L `max_length` (response length), V vocabulary.

Conventions:
- Prompts come with their mask: `prompt_mask` [B, Li] bool is True on the real tokens; the
  padded positions (False) may hold any id, and no code reads padding from an id.
- Special tokens are the model's (`tokens`, a `th_distill.models.tokens.SpecialTokens` read from
  its tokenizer and checkpoint files): a row stops after it emits any of `tokens.stop_ids` (the
  EOS, and extra stop ids such as Qwen's `<|im_end|>`); the stop token is part of the response
  (mask 1.0); every later position holds `tokens.pad_id` with mask 0.0 and log-prob 0. The mask
  is float32, the dtype of `th_distill.data.batch.Batch.mask`: samples make a `Batch` as they
  are. The loop exits early once every row is done; with no stop ids rows never stop, which
  forces full-length responses. The pad id is an ordinary vocabulary entry that can be sampled
  like any other, so always use `mask`, never `tokens != pad_id`.
- Randomness: `rng` is either one key, split into B per-example keys (`jax.random.split(rng, B)`),
  or an array of B keys (row b uses `rng[b]`). Step t of row b draws from
  `jax.random.fold_in(key_b, t)`. With per-example keys a row's sample depends only on its prompt
  and its key, never on the other rows or the batch size, so batches can be regrouped or sharded
  without changing any sample.
- `logprobs[b, t]` is the log-probability of the emitted token under the distribution it was drawn
  from: the model's float32 logits divided by `temperature`, restricted to the `top_k` most likely
  tokens and then to the top-p nucleus, renormalised. Greedy decoding (`temperature = 0`, which
  ignores `top_k`/`top_p`) reports the model's plain log-softmax (temperature 1) of the argmax.
- Every setting is static (part of the jit cache key); new prompts, keys or parameters of the same
  shapes reuse the compiled loop.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from th_distill.models.interface import LanguageModel
from th_distill.models.tokens import SpecialTokens
from th_distill.sampling_checks import check_arguments

Array = jax.Array

_STATIC = ("model", "max_length", "temperature", "top_k", "top_p", "tokens")


class SampleOutput(NamedTuple):
  """Responses of `sample` / `sample_uncached`; all [B, L]."""

  tokens: Array  # int32: response tokens, the stop token included when emitted, then the pad id
  mask: Array  # float32: 1.0 on the real response tokens (EOS included), 0.0 after
  logprobs: Array  # float32: log-prob of each emitted token (see module doc), 0 where mask is 0


# sample_fn(params, prompts [B, Li] int32, prompt_mask [B, Li] bool, rng) -> (tokens [B, Lt]
# int32, mask [B, Lt] float32): `SampleOutput`'s tokens and mask for one model and fixed
# settings; prompts and results may be numpy or device arrays
# (`th_distill.data.regimes.build_offline` needs numpy results).
SampleFn = Callable[[Any, Array, Array, Array], tuple[Array, Array]]


def sampling_log_probs(
  logits: Array, temperature: float, top_k: int = 0, top_p: float = 1.0
) -> Array:
  """Log-probabilities [..., V] of the distribution that is sampled from, for `logits` [..., V].

  The float32 logits are divided by `temperature` (> 0), restricted to the `top_k` most likely
  tokens (0, or k >= V: all) and then to the nucleus: the smallest set of most likely tokens whose
  probability reaches `top_p` (1: all); the most likely token always stays, however small
  `top_p` or `temperature` (the largest logit is subtracted before dividing, so the scaled
  logits never overflow). Tokens tied with the last one kept are kept too. Excluded tokens get
  -inf.
  """
  logits = logits.astype(jnp.float32)
  logits = (logits - jnp.max(logits, axis=-1, keepdims=True)) / temperature
  vocab = logits.shape[-1]
  if 0 < top_k < vocab:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jax.lax.top_k(logits, vocab)[0]  # descending
    sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    # Sorted entry i is in the nucleus iff the mass of the entries before it is < top_p; the
    # smallest kept logit is the threshold. Entry 0 is kept explicitly: a subnormal top_p may
    # flush to 0, and 0 < 0 is false.
    in_nucleus = (mass_before < top_p) | (jnp.arange(vocab) == 0)
    threshold = jnp.min(jnp.where(in_nucleus, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return jax.nn.log_softmax(logits, axis=-1)


def _select(
  logits: Array, keys: Array, step: Array, temperature: float, top_k: int, top_p: float
) -> tuple[Array, Array]:
  """The token of every row at `step`: `logits` [B, V] float32, `keys` [B] per-example keys.

  Returns (tokens [B] int32, logprobs [B] float32) following the module's conventions. Shared by
  the cached and the uncached samplers, which therefore emit identical tokens.
  """
  if temperature == 0.0:
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    tokens = jnp.argmax(log_probs, axis=-1)
  else:
    log_probs = sampling_log_probs(logits, temperature, top_k, top_p)
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)
    tokens = jax.vmap(jax.random.categorical)(step_keys, log_probs)
  tokens = tokens.astype(jnp.int32)
  return tokens, jnp.take_along_axis(log_probs, tokens[:, None], axis=-1)[:, 0]


def example_keys(rng: Array, batch: int) -> Array:
  """Per-example keys [B] from one key (split into `batch`) or from `batch` keys (kept as is).

  Accepts typed keys (`jax.random.key`: shape [] or [B]) and raw uint32 keys (`PRNGKey`:
  shape [2] or [B, 2]).
  """
  typed = jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
  key_ndim = 0 if typed else 1
  if rng.ndim == key_ndim:
    return jax.random.split(rng, batch)
  if rng.ndim == key_ndim + 1 and rng.shape[0] == batch:
    return rng
  raise ValueError(
    f"rng must be one key or {batch} keys (one per example); got an array of "
    f"shape {rng.shape} and dtype {rng.dtype}."
  )


class _Carry(NamedTuple):
  step: Array  # [] int32: the position being generated
  state: Any  # what `next_logits` carries from step to step (the KV cache, or None)
  token: Array  # [B] int32: the token fed at `step` (`start_decode`'s first token at step 0)
  tokens: Array  # [B, L] int32: emitted tokens so far (garbage after a row's EOS)
  logprobs: Array  # [B, L] float32
  done: Array  # [B] bool: the row has emitted a stop token


# next_logits(state, token [B], tokens [B, L], step []) -> (logits [B, V] float32, new state)
NextLogits = Callable[[Any, Array, Array, Array], tuple[Array, Any]]
# grow(state, length) -> the state with room for `length` positions
Grow = Callable[[Any, int], Any]

_FIRST_SEGMENT = 64


def cache_segments(max_length: int) -> list[int]:
  """Ends of the cached loop's segments: 64, 128, 256, ... then L. The KV cache holds `end`
  positions during a segment, so a step attends over (and reads) at most twice the positions
  generated so far instead of all L from the first step; each segment is one more copy of the
  loop body in the compiled program."""
  ends = [_FIRST_SEGMENT]
  while ends[-1] < max_length:
    ends.append(2 * ends[-1])
  return ends[:-1] + [max_length]


def _decode_loop(
  next_logits: NextLogits,
  state: Any,
  first_token: Array,
  keys: Array,
  max_length: int,
  temperature: float,
  top_k: int,
  top_p: float,
  tokens: SpecialTokens,
  segments: list[int],
  grow: Grow,
) -> SampleOutput:
  """The decoding loop shared by both samplers, fed `first_token` [B] first (the model's
  `start_decode`: T5's decoder start token, a decoder-only model's last prompt token): up to L
  steps, stopping early once every row has emitted a stop token, then everything after each
  row's first stop token is blanked. The steps run in segments ending at `segments` (the last
  one L), one `lax.while_loop` each, the state grown to the segment's end before it."""
  batch = keys.shape[0]
  stop_ids = jnp.asarray(tokens.stop_ids, jnp.int32).reshape(-1)

  def is_stop(ids: Array) -> Array:
    return jnp.any(ids[..., None] == stop_ids, axis=-1)

  def body(c: _Carry) -> _Carry:
    logits, state = next_logits(c.state, c.token, c.tokens, c.step)
    token, logprob = _select(logits, keys, c.step, temperature, top_k, top_p)
    return _Carry(
      c.step + 1,
      state,
      token,
      jax.lax.dynamic_update_index_in_dim(c.tokens, token, c.step, axis=1),
      jax.lax.dynamic_update_index_in_dim(c.logprobs, logprob, c.step, axis=1),
      c.done | is_stop(token),
    )

  final = _Carry(
    jnp.zeros((), jnp.int32),
    state,
    first_token,
    jnp.zeros((batch, max_length), jnp.int32),
    jnp.zeros((batch, max_length), jnp.float32),
    jnp.zeros((batch,), bool),
  )
  for end in segments:
    final = jax.lax.while_loop(
      lambda c, end=end: (c.step < end) & ~jnp.all(c.done),
      body,
      final._replace(state=grow(final.state, end)),
    )
  # A position is real iff no stop token came before it (the stop token itself is real).
  stopped = is_stop(final.tokens)
  mask = (jnp.cumsum(stopped, axis=1) - stopped) == 0
  return SampleOutput(
    jnp.where(mask, final.tokens, tokens.pad_id),
    mask.astype(jnp.float32),
    jnp.where(mask, final.logprobs, 0.0),
  )


def generate(
  model: LanguageModel,
  params: Any,
  prompts: Array,
  prompt_mask: Array,
  rng: Array,
  *,
  max_length: int,
  tokens: SpecialTokens,
  temperature: float = 1.0,
  top_k: int = 0,
  top_p: float = 1.0,
) -> SampleOutput:
  """Samples responses [B, L] (L = `max_length`) to `prompts` [B, Li] int32 whose real tokens
  `prompt_mask` [B, Li] bool marks, stopping on the model's stop ids (`tokens`).

  The model's `start_decode` runs once (T5: the encoder and `init_cache`; a decoder-only model:
  the prompt's prefill), then one `decode_step` per position inside
  `lax.while_loop`s over segments of positions, the cache extended before each (`cache_segments`).
  `rng`: one key or B per-example keys; `temperature` 0 is greedy; `top_k` 0 and `top_p` 1 are
  off; see the module doc for the stop, key and log-prob conventions.
  """
  check_arguments(prompts, prompt_mask, max_length, temperature, top_k, top_p, tokens)
  prompts, prompt_mask = prompts.astype(jnp.int32), prompt_mask.astype(bool)
  keys = example_keys(rng, prompts.shape[0])
  variables = {"params": params}
  segments = cache_segments(max_length)
  first, cache = model.apply(variables, prompts, prompt_mask, segments[0], method="start_decode")

  def next_logits(cache, token, buffer, step):
    del buffer, step  # the cache knows the position
    return model.apply(variables, token, cache, method="decode_step")

  return _decode_loop(
    next_logits,
    cache,
    first,
    keys,
    max_length,
    temperature,
    top_k,
    top_p,
    tokens,
    segments,
    model.extend_cache,
  )


def check_prompts(prompts: Any, prompt_mask: Any, vocab_size: int) -> None:
  """Raises ValueError if a prompt id is outside [0, vocab_size) (it would embed as NaN and every
  log-prob of its row would be NaN) or a row of `prompt_mask` has no real token. Host arrays
  and fully addressable device arrays are checked; traced or multi-host arrays are the caller's
  to check."""
  arrays = (prompts, prompt_mask)
  if any(
    isinstance(x, jax.core.Tracer) or (isinstance(x, jax.Array) and not x.is_fully_addressable)
    for x in arrays
  ):
    return
  ids, mask = np.asarray(prompts), np.asarray(prompt_mask, bool)
  if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
    raise ValueError(
      f"prompt ids must be in [0, {vocab_size}) (the model's vocab_size), got "
      f"ids from {ids.min()} to {ids.max()}."
    )
  if mask.ndim == 2 and mask.shape[1] and not mask.any(axis=1).all():
    empty = np.flatnonzero(~mask.any(axis=1))
    raise ValueError(f"prompt_mask rows {empty[:5].tolist()} mark no real prompt token.")


class _CheckedSampler:
  """`fn` jitted with its settings and model static, whose calls first refuse prompt ids outside
  the model's vocabulary and empty prompts (`check_prompts`). Its name and doc are `fn`'s; every
  other attribute (`lower`, ...) is the jitted function's."""

  def __init__(self, fn: Callable[..., SampleOutput]):
    self._jitted = jax.jit(fn, static_argnames=_STATIC)
    functools.update_wrapper(self, fn)

  def __call__(
    self,
    model: LanguageModel,
    params: Any,
    prompts: Array,
    prompt_mask: Array,
    rng: Array,
    **settings: Any,
  ) -> SampleOutput:
    check_prompts(prompts, prompt_mask, model.cfg.vocab_size)
    return self._jitted(model, params, prompts, prompt_mask, rng, **settings)

  def __getattr__(self, name: str) -> Any:
    return getattr(self._jitted, name)


sample = _CheckedSampler(generate)


@_CheckedSampler
def sample_uncached(
  model: LanguageModel,
  params: Any,
  prompts: Array,
  prompt_mask: Array,
  rng: Array,
  *,
  max_length: int,
  tokens: SpecialTokens,
  temperature: float = 1.0,
  top_k: int = 0,
  top_p: float = 1.0,
) -> SampleOutput:
  """`sample` without a KV cache (the benchmark baseline): the same tokens for the same key.

  Every step re-runs the teacher-forced decoder over the whole static [B, L] buffer and reads the
  logits at the current position, so a step costs O(L) decoder positions (O(L^2) per response).
  """
  check_arguments(prompts, prompt_mask, max_length, temperature, top_k, top_p, tokens)
  prompts, prompt_mask = prompts.astype(jnp.int32), prompt_mask.astype(bool)
  keys = example_keys(rng, prompts.shape[0])
  variables = {"params": params}
  first = model.apply(variables, prompts, prompt_mask, 1, method="start_decode")[0]

  def next_logits(state, token, buffer, step):
    del token  # the whole buffer is re-read; positions >= step are hidden by the causal mask
    logits = model.apply(variables, prompts, prompt_mask, buffer, method="response_logits")
    return jax.lax.dynamic_index_in_dim(logits, step, axis=1, keepdims=False), state

  return _decode_loop(
    next_logits,
    None,
    first,
    keys,
    max_length,
    temperature,
    top_k,
    top_p,
    tokens,
    [max_length],
    lambda state, length: state,
  )
