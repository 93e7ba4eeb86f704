"""A decoder-only (Llama / Qwen2-style) transformer in Flax linen, with an explicit KV cache.

Architecture: pre-norm residual blocks with RMSNorm (T5's, float32), rotary position embeddings
(the rotate-half convention of Llama and Qwen2), grouped-query attention scaled by 1/sqrt(K),
optional query/key/value biases (`qkv_bias`, Qwen2), T5's gated MLP `(act(x wi_0) * (x wi_1)) wo`
with SiLU (or GELU), a final norm and an output layer tied to the input embedding or not (`tie_embeddings`).

It implements `th_distill.models.interface.LanguageModel`: a (prompt, response) pair is one causal
sequence, prompt then response, and the logits are read at the response positions only, so the
losses and metrics (which take [B, Lt] logits and masks) see the response alone. Prompts are left
aligned first (`align_prompts`): their padding (the positions `prompt_mask` marks False, whatever
id they hold) goes to the front, is masked as a key and takes no position, so a row's last real prompt token is always at Li - 1 and its logits
predict the first response token; positions count the real tokens before each one.

Every parameter carries logical axis names (`vocab, embed, heads, kv_heads, kv, mlp`), residual
and MLP activations `batch, length, ...` constraints, so `th_distill.partitioning` shards it as
it shards T5.

Shapes: B batch, Li prompt length, Lt response length, L = Li + Lt - 1 positions, E d_model,
H heads, G kv heads, K d_kv, F d_ff, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from th_distill.models.decoder_config import DecoderConfig
from th_distill.models.layers import (
  NEG_INF,
  REMAT_POLICIES,
  GatedMlp,
  RMSNorm,
  extend_cache,
  gelu_tanh,
  heads_major,
  normal,
  residual_constraint,
)

Array = jax.Array
Cache = dict[str, Any]

_ACTIVATIONS = {"silu": jax.nn.silu, "gelu_tanh": gelu_tanh}


def align_prompts(prompts: Array, prompt_mask: Array) -> tuple[Array, Array]:
  """`prompts` [B, Li] and their `prompt_mask` [B, Li] bool with the padded positions moved to
  the front, the real tokens kept in order."""
  order = jnp.argsort(prompt_mask, axis=1, stable=True)
  return (
    jnp.take_along_axis(prompts, order, axis=1),
    jnp.take_along_axis(prompt_mask, order, axis=1),
  )


def rotate(x: Array, positions: Array, theta: float) -> Array:
  """Rotary embedding of `x` [B, L, heads, K] at integer `positions` [B, L] (float32 math,
  returned in `x`'s dtype): pairs (i, i + K/2) turned by positions * theta^(-2i/K)."""
  half = x.shape[-1] // 2
  inv_freq = 1.0 / theta ** (jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, K/2]
  cos, sin = jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]
  x32 = x.astype(jnp.float32)
  first, second = x32[..., :half], x32[..., half:]
  out = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
  return out.astype(x.dtype)


class Attention(nn.Module):
  """Grouped-query self-attention with RoPE."""

  cfg: DecoderConfig

  def setup(self):
    cfg = self.cfg
    e, h, g, k = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.d_kv

    def param(name, init, shape, axes):
      return self.param(name, nn.with_logical_partitioning(init, axes), shape, cfg.storage_dtype)

    self.query = param("query", normal(e**-0.5), (e, h, k), ("embed", "heads", "kv"))
    self.key = param("key", normal(e**-0.5), (e, g, k), ("embed", "kv_heads", "kv"))
    self.value = param("value", normal(e**-0.5), (e, g, k), ("embed", "kv_heads", "kv"))
    self.out = param("out", normal((h * k) ** -0.5), (h, k, e), ("heads", "kv", "embed"))
    if cfg.qkv_bias:
      zeros = nn.initializers.zeros
      self.query_bias = param("query_bias", zeros, (h, k), ("heads", "kv"))
      self.key_bias = param("key_bias", zeros, (g, k), ("kv_heads", "kv"))
      self.value_bias = param("value_bias", zeros, (g, k), ("kv_heads", "kv"))

  def _proj(self, x: Array, name: str) -> Array:
    dt = self.cfg.compute_dtype
    y = jnp.einsum("ble,ehk->blhk", x.astype(dt), getattr(self, name).astype(dt))
    if self.cfg.qkv_bias:
      y = y + getattr(self, f"{name}_bias").astype(dt)
    return y

  def project(self, x: Array, positions: Array) -> tuple[Array, Array, Array]:
    """Rotated queries [B, L, H, K] and keys [B, L, G, K], and values [B, L, G, K] of `x`
    [B, L, E] at `positions` [B, L]."""
    theta = self.cfg.rope_theta
    query = rotate(self._proj(x, "query"), positions, theta)
    return query, rotate(self._proj(x, "key"), positions, theta), self._proj(x, "value")

  def attend(self, query: Array, keys: Array, values: Array, bias: Array) -> Array:
    """`query` [B, Lq, H, K] over heads-major `keys`/`values` [B, G, Lk, K]; `bias` broadcasts
    to [B, G, 1, Lq, Lk]. Returns [B, Lq, E] in the compute dtype."""
    cfg, dt = self.cfg, self.cfg.compute_dtype
    groups = cfg.num_heads // cfg.num_kv_heads
    q = query.reshape(*query.shape[:2], cfg.num_kv_heads, groups, cfg.d_kv) * cfg.d_kv**-0.5
    logits = jnp.einsum(
      "bqgnk,bgsk->bgnqs", q.astype(dt), keys.astype(dt), preferred_element_type=jnp.float32
    )
    weights = jax.nn.softmax(logits + bias, axis=-1)
    mixed = jnp.einsum("bgnqs,bgsk->bqgnk", weights.astype(dt), values.astype(dt))
    mixed = mixed.reshape(*query.shape[:2], cfg.num_heads, cfg.d_kv)
    return jnp.einsum("bqhk,hke->bqe", mixed, self.out.astype(dt))


class Layer(nn.Module):
  """One pre-norm block: attention then MLP, each added to the residual stream."""

  cfg: DecoderConfig

  def setup(self):
    self.attention_norm = RMSNorm(self.cfg)
    self.attention = Attention(self.cfg)
    self.mlp_norm = RMSNorm(self.cfg)
    self.mlp = GatedMlp(self.cfg, activation=_ACTIVATIONS[self.cfg.mlp_activation])
    self.dropout = nn.Dropout(self.cfg.dropout_rate)

  def _block(
    self, x: Array, positions: Array, bias: Array, context: Callable, train: bool
  ) -> tuple[Array, Any]:
    """The block on `x` [B, L, E] at `positions` [B, L]: `context(keys, values)` (heads-major
    [B, G, L, K]) gives the keys and values attended to and what the block returns beside its
    output; `bias` broadcasts to [B, G, H / G, L, keys]."""
    h = self.attention_norm(x)
    query, keys, values = self.attention.project(h, positions)
    all_keys, all_values, out = context(heads_major(keys), heads_major(values))
    x = x + self.dropout(
      self.attention.attend(query, all_keys, all_values, bias), deterministic=not train
    )
    x = x + self.dropout(self.mlp(self.mlp_norm(x), train), deterministic=not train)
    return residual_constraint(x), out

  def __call__(
    self, x: Array, positions: Array, bias: Array, train: bool
  ) -> tuple[Array, tuple[Array, Array]]:
    """Causal self-attention over `x` [B, L, E] alone (`bias` [B, 1, 1, L, L]): the output
    [B, L, E] and the block's heads-major keys and values [B, G, L, K] (what a cache stores)."""
    return self._block(x, positions, bias, lambda k, v: (k, v, (k, v)), train)

  def step(
    self, x: Array, positions: Array, bias: Array, entry: Cache, index: Array
  ) -> tuple[Array, Cache]:
    """One token `x` [B, 1, E] at `positions` [B, 1] (no dropout): its key and value written into
    this layer's cache `entry` at `index`, attention over the prompt's entries then the written
    ones (`bias` [B, 1, 1, 1, P + Lmax]). Returns the output [B, 1, E] and the new entry."""

    def context(keys: Array, values: Array) -> tuple[Array, Array, Cache]:
      new = {
        name: jax.lax.dynamic_update_slice_in_dim(
          entry[name], fresh.astype(entry[name].dtype), index, axis=2
        )
        for name, fresh in (("self_keys", keys), ("self_values", values))
      }
      return (
        jnp.concatenate([entry["prompt_keys"], new["self_keys"]], axis=2),
        jnp.concatenate([entry["prompt_values"], new["self_values"]], axis=2),
        {**entry, **new},
      )

    return self._block(x, positions, bias, context, False)


def _layer_class(cfg: DecoderConfig) -> type[nn.Module]:
  if cfg.remat == "none":
    return Layer
  # `train` is `__call__`'s argument 4 (self = 0), a static argument.
  return nn.remat(Layer, policy=REMAT_POLICIES[cfg.remat], static_argnums=(4,))


def _key_bias(valid: Array) -> Array:
  """[B, Lk] bool (True = a real key) -> additive [B, 1, 1, 1, Lk] float32 bias."""
  return jnp.where(valid, 0.0, NEG_INF)[:, None, None, None, :].astype(jnp.float32)


class Decoder(nn.Module):
  """Decoder-only language model (`th_distill.models.interface.LanguageModel`).

  Methods (`model.apply({'params': params}, ..., method=...)`), logits float32:
    __call__ / response_logits(prompts, prompt_mask, responses, train) -> [B, Lt, V]: position
      t predicts responses[:, t] from the prompt's real tokens and responses[:, :t]
    response_hidden(prompts, prompt_mask, responses, train) -> [B, Lt, E];
      logits_from_hidden(hidden, train)
    start_decode(prompts, prompt_mask, max_decode_length) -> (first token [B], cache)
    decode_step(token [B], cache) -> (logits [B, V], cache)
  and `Decoder.extend_cache(cache, length)` (no parameters).
  """

  cfg: DecoderConfig

  def setup(self):
    cfg = self.cfg
    self.token_embedder = self.param(
      "token_embedder",
      nn.with_logical_partitioning(
        normal(cfg.d_model**-0.5 if cfg.tie_embeddings else 1.0), ("vocab", "embed")
      ),
      (cfg.vocab_size, cfg.d_model),
      cfg.storage_dtype,
    )
    self.layers = [_layer_class(cfg)(cfg) for _ in range(cfg.num_layers)]
    self.final_norm = RMSNorm(cfg)
    if not cfg.tie_embeddings:
      self.logits_kernel = self.param(
        "logits_kernel",
        nn.with_logical_partitioning(normal(cfg.d_model**-0.5), ("embed", "vocab")),
        (cfg.d_model, cfg.vocab_size),
        cfg.storage_dtype,
      )
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def _embed(self, tokens: Array, train: bool) -> Array:
    x = jnp.take(self.token_embedder, tokens, axis=0).astype(self.cfg.compute_dtype)
    return residual_constraint(self.dropout(x, deterministic=not train))

  def logits_from_hidden(self, hidden: Array, train: bool = False) -> Array:
    """Final norm and output layer: hidden [..., E] -> logits [..., V] float32."""
    x = self.dropout(self.final_norm(hidden), deterministic=not train)
    kernel = self.token_embedder.T if self.cfg.tie_embeddings else self.logits_kernel
    logits = jnp.einsum(
      "...e,ev->...v",
      x,
      kernel.astype(self.cfg.compute_dtype),
      preferred_element_type=jnp.float32,
    )
    return logits.astype(jnp.float32)

  def _stack(
    self, tokens: Array, positions: Array, bias: Array, train: bool
  ) -> tuple[Array, list[tuple[Array, Array]]]:
    """Every layer on `tokens` [B, L] at `positions` [B, L]: the last hidden states [B, L, E]
    (before the final norm) and each layer's keys and values [B, G, L, K]."""
    x = self._embed(tokens, train)
    kvs = []
    for layer in self.layers:
      x, kv = layer(x, positions, bias, train)
      kvs.append(kv)
    return x, kvs

  def response_hidden(
    self, prompts: Array, prompt_mask: Array, responses: Array, train: bool = False
  ) -> Array:
    """Hidden states [B, Lt, E] (before the final norm) at the positions whose next token is a
    response token: the last prompt position and the first Lt - 1 response positions."""
    prompts, prompt_mask = align_prompts(prompts, prompt_mask)
    length = prompts.shape[1]
    tokens = jnp.concatenate([prompts, responses[:, :-1]], axis=1)  # [B, L]
    valid = jnp.concatenate([prompt_mask, jnp.ones_like(responses[:, :-1], bool)], axis=1)
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
    index = jnp.arange(tokens.shape[1])
    causal = jnp.where(index[None, :] <= index[:, None], 0.0, NEG_INF)  # [L, L]
    x, _ = self._stack(tokens, positions, causal + _key_bias(valid), train)
    return x[:, length - 1 :]

  def response_logits(
    self, prompts: Array, prompt_mask: Array, responses: Array, train: bool = False
  ) -> Array:
    """Teacher-forced logits [B, Lt, V] float32 of `responses` [B, Lt] after `prompts` [B, Li]
    (`prompt_mask` [B, Li] bool: the real prompt tokens)."""
    hidden = self.response_hidden(prompts, prompt_mask, responses, train)
    return self.logits_from_hidden(hidden, train)

  def __call__(
    self, prompts: Array, prompt_mask: Array, responses: Array, train: bool = False
  ) -> Array:
    return self.response_logits(prompts, prompt_mask, responses, train)

  def start_decode(
    self, prompts: Array, prompt_mask: Array, max_decode_length: int
  ) -> tuple[Array, Cache]:
    """Prefills the cache with the first Li - 1 (aligned) prompt positions; the first token to
    feed is the last prompt token.

    Returns (first token [B] int32, cache): {'index': int32 scalar (tokens fed so far),
    'start': [B] int32 (the position of the first fed token), 'prompt_bias': [B, 1, 1, 1, Li - 1]
    (padding masked), 'layers': [per layer: {'prompt_keys', 'prompt_values': [B, G, Li - 1, K],
    'self_keys', 'self_values': [B, G, Lmax, K] zeros}]} in the compute dtype. The layout of
    the self-attention entries is T5's, so `extend_cache` grows both the same way.
    """
    cfg = self.cfg
    prompts, prompt_mask = align_prompts(prompts, prompt_mask)
    context, last = prompts[:, :-1], prompts[:, -1]
    valid = prompt_mask[:, :-1]
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
    index = jnp.arange(context.shape[1])
    causal = jnp.where(index[None, :] <= index[:, None], 0.0, NEG_INF)
    _, kvs = self._stack(context, positions, causal + _key_bias(valid), False)
    batch = prompts.shape[0]
    zeros = jnp.zeros((batch, cfg.num_kv_heads, max_decode_length, cfg.d_kv), cfg.compute_dtype)
    layers = [
      dict(prompt_keys=k, prompt_values=v, self_keys=zeros, self_values=zeros) for k, v in kvs
    ]
    cache = dict(
      index=jnp.zeros((), jnp.int32),
      start=jnp.sum(valid, axis=1).astype(jnp.int32),
      prompt_bias=_key_bias(valid),
      layers=layers,
    )
    return last.astype(jnp.int32), cache

  def decode_step(self, token: Array, cache: Cache) -> tuple[Array, Cache]:
    """Feeds `token` [B] at position `cache['start'] + cache['index']`: logits [B, V] of the next
    token and the cache with this token's keys and values written at `index`."""
    index, prompt_bias = cache["index"], cache["prompt_bias"]
    max_length = cache["layers"][0]["self_keys"].shape[2]
    written = jnp.where(jnp.arange(max_length) <= index, 0.0, NEG_INF)
    bias = jnp.concatenate(
      [prompt_bias, jnp.broadcast_to(written, (*prompt_bias.shape[:-1], max_length))], axis=-1
    )
    positions = (cache["start"] + index)[:, None]  # [B, 1]
    x = self._embed(token[:, None], train=False)
    layers = []
    for layer, entry in zip(self.layers, cache["layers"]):
      x, entry = layer.step(x, positions, bias, entry, index)
      layers.append(entry)
    logits = self.logits_from_hidden(x[:, 0])
    return logits, {**cache, "index": index + 1, "layers": layers}

  @staticmethod
  def extend_cache(cache: Cache, max_decode_length: int) -> Cache:
    """`cache` with room for `max_decode_length` fed tokens (T5's `extend_cache`)."""
    return extend_cache(cache, max_decode_length)
