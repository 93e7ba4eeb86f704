"""T5 v1.1 encoder-decoder in Flax linen, with an explicit KV cache for incremental decoding.

Architecture (as in the public T5 v1.1 checkpoints): pre-norm residual blocks with RMSNorm (no
mean subtraction, no bias), gated-GELU MLP (tanh approximation), bucketed relative position bias
computed by the first layer of each stack and shared by its other layers, no biases anywhere,
no 1/sqrt(d) attention scaling (folded into the initialisation), an output layer untied from the
shared input embedding, and no embedding rescaling.

Every parameter carries logical axis names (`vocab, embed, heads, kv, mlp, relpos_buckets`) through
`nn.with_logical_partitioning`, and activations carry `batch, length, ...` constraints, so the
same module is sharded by `th_distill.partitioning` rules without any change here.

Shapes: B batch, Li encoder (prompt) length, Lt decoder (target) length, E d_model, H heads,
K d_kv, F d_ff, V vocab. Token id 0 is padding (and the decoder start token), 1 is EOS.

The decoding cache is a plain pytree (see `init_cache`), so it can be carried through
`lax.while_loop` and sharded like any other array.

With `cfg.scan_layers` each stack runs its layers under `nn.scan`: the parameters of a stack are
stacked along a leading axis with the logical name `layers` (`stack_layers` / `unstack_layers`
convert between the layouts), and so is the decoding cache. `cfg.remat` wraps each layer in
`nn.remat` with the policy of `REMAT_POLICIES`.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from th_distill.models.config import DECODER_START_ID, T5Config
from th_distill.models.layers import (
  LAYERS_AXIS,
  NEG_INF,
  REMAT_POLICIES,
  SELF_KV,
  GatedMlp,
  RMSNorm,
  extend_cache,
  heads_major,
  normal,
  residual_constraint,
)

Array = jax.Array
Cache = dict[str, Any]


def relative_position_bucket(
  relative_position: Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> Array:
  """Maps relative positions (key - query) to bucket ids in [0, num_buckets), as in T5.

  Half of the buckets (all of them if not bidirectional) hold exact small distances, the rest
  logarithmically larger ones up to `max_distance`; bidirectional attention splits the buckets
  between keys after and before the query. Unidirectional attention maps future keys to bucket 0.
  """
  ret = jnp.zeros_like(relative_position)
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  safe_n = jnp.maximum(n, 1).astype(jnp.float32)
  val_if_large = max_exact + (
    jnp.log(safe_n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
  ).astype(jnp.int32)
  val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
  return ret + jnp.where(is_small, n, val_if_large)


class RelativePositionBias(nn.Module):
  """Learned scalar bias per (head, relative-position bucket): returns [1, H, Lq, Lk] float32."""

  cfg: T5Config
  bidirectional: bool

  @nn.compact
  def __call__(self, query_positions: Array, key_positions: Array) -> Array:
    cfg = self.cfg
    table = self.param(
      "rel_embedding",
      nn.with_logical_partitioning(normal(cfg.d_model**-0.5), ("heads", "relpos_buckets")),
      (cfg.num_heads, cfg.relative_attention_num_buckets),
      cfg.storage_dtype,
    )
    buckets = relative_position_bucket(
      key_positions[None, :] - query_positions[:, None],
      self.bidirectional,
      cfg.relative_attention_num_buckets,
      cfg.relative_attention_max_distance,
    )  # [Lq, Lk]
    return jnp.take(table.astype(jnp.float32), buckets, axis=1)[None]  # [1, H, Lq, Lk]


class Attention(nn.Module):
  """Multi-head dot-product attention without biases or logit scaling (T5)."""

  cfg: T5Config

  def setup(self):
    cfg = self.cfg
    hk = (cfg.num_heads, cfg.d_kv)

    def kernel(name, stddev, shape, axes):
      return self.param(
        name, nn.with_logical_partitioning(normal(stddev), axes), shape, cfg.storage_dtype
      )

    self.query = kernel(
      "query", (cfg.d_model * cfg.d_kv) ** -0.5, (cfg.d_model, *hk), ("embed", "heads", "kv")
    )
    self.key = kernel("key", cfg.d_model**-0.5, (cfg.d_model, *hk), ("embed", "heads", "kv"))
    self.value = kernel("value", cfg.d_model**-0.5, (cfg.d_model, *hk), ("embed", "heads", "kv"))
    self.out = kernel(
      "out", (cfg.num_heads * cfg.d_kv) ** -0.5, (*hk, cfg.d_model), ("heads", "kv", "embed")
    )
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def _proj(self, x: Array, kernel: Array) -> Array:
    dt = self.cfg.compute_dtype
    y = jnp.einsum("ble,ehk->blhk", x.astype(dt), kernel.astype(dt))
    return nn.with_logical_constraint(y, ("batch", "length", "heads", "kv"))

  def project_kv(self, x: Array) -> tuple[Array, Array]:
    """Keys and values of `x` [B, L, E]: two [B, L, H, K] arrays."""
    return self._proj(x, self.key), self._proj(x, self.value)

  def __call__(self, x: Array, keys: Array, values: Array, bias: Array, train: bool) -> Array:
    """Attends from `x` [B, Lq, E] to `keys`/`values` [B, Lk, H, K].

    `bias` broadcasts to [B, H, Lq, Lk] (relative positions plus a large negative on masked
    entries). Returns [B, Lq, E] in the compute dtype.
    """
    dt = self.cfg.compute_dtype
    q = self._proj(x, self.query)
    logits = (
      jnp.einsum("bqhk,bshk->bhqs", q, keys.astype(dt), preferred_element_type=jnp.float32) + bias
    )
    weights = jax.nn.softmax(logits, axis=-1)
    weights = self.dropout(weights, deterministic=not train)
    mixed = jnp.einsum("bhqs,bshk->bqhk", weights.astype(dt), values.astype(dt))
    return jnp.einsum("bqhk,hke->bqe", mixed, self.out.astype(dt))

  def attend_cached(self, x: Array, keys: Array, values: Array, bias: Array) -> Array:
    """Incremental decoding (no dropout): attends from one position `x` [B, 1, E] to a cache
    `keys`/`values` [B, H, Lk, K].

    The cache is heads-major so that both products are batched matrix-vector products over its
    own layout (no per-step transpose of the cache). `bias` broadcasts to [B, H, 1, Lk].
    Returns [B, 1, E] in the compute dtype.
    """
    dt = self.cfg.compute_dtype
    q = self._proj(x, self.query)[:, 0]  # [B, H, K]
    logits = jnp.einsum("bhk,bhsk->bhs", q, keys.astype(dt), preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits[:, :, None] + bias, axis=-1)[:, :, 0]  # [B, H, Lk]
    mixed = jnp.einsum("bhs,bhsk->bhk", weights.astype(dt), values.astype(dt))
    return jnp.einsum("bhk,hke->be", mixed, self.out.astype(dt))[:, None]


class EncoderLayer(nn.Module):
  cfg: T5Config

  def setup(self):
    self.attention_norm = RMSNorm(self.cfg)
    self.attention = Attention(self.cfg)
    self.mlp_norm = RMSNorm(self.cfg)
    self.mlp = GatedMlp(self.cfg)
    self.dropout = nn.Dropout(self.cfg.dropout_rate)

  def __call__(self, x: Array, bias: Array, train: bool) -> Array:
    h = self.attention_norm(x)
    x = x + self.dropout(
      self.attention(h, *self.attention.project_kv(h), bias, train), deterministic=not train
    )
    x = x + self.dropout(self.mlp(self.mlp_norm(x), train), deterministic=not train)
    return residual_constraint(x)


class DecoderLayer(nn.Module):
  cfg: T5Config

  def setup(self):
    self.self_attention_norm = RMSNorm(self.cfg)
    self.self_attention = Attention(self.cfg)
    self.cross_attention_norm = RMSNorm(self.cfg)
    self.cross_attention = Attention(self.cfg)
    self.mlp_norm = RMSNorm(self.cfg)
    self.mlp = GatedMlp(self.cfg)
    self.dropout = nn.Dropout(self.cfg.dropout_rate)

  def cross_kv(self, encoded: Array) -> tuple[Array, Array]:
    return self.cross_attention.project_kv(encoded)

  def __call__(
    self, x: Array, self_bias: Array, encoded: Array, cross_bias: Array, train: bool
  ) -> Array:
    """One decoder block on `x` [B, Lt, E] (teacher forcing): the self-attention keys/values are
    those of `x`, the cross-attention ones those of `encoded` [B, Li, E]; biases as in
    `Attention.__call__`."""
    h = self.self_attention_norm(x)
    x = x + self.dropout(
      self.self_attention(h, *self.self_attention.project_kv(h), self_bias, train),
      deterministic=not train,
    )
    h = self.cross_attention_norm(x)
    x = x + self.dropout(
      self.cross_attention(h, *self.cross_kv(encoded), cross_bias, train), deterministic=not train
    )
    x = x + self.dropout(self.mlp(self.mlp_norm(x), train), deterministic=not train)
    return residual_constraint(x)

  def step(
    self, x: Array, self_bias: Array, cache: Cache, index: Array, cross_bias: Array
  ) -> tuple[Array, Cache]:
    """The block for one token at position `index` (incremental decoding, no dropout).

    `x` [B, 1, E]; `cache` is this layer's entry of `T5.init_cache` (heads-major [B, H, L, K]
    arrays). The token's key and value are written into the cache at `index`, attention runs
    over the whole cache (`self_bias` [1, H, 1, Lmax] masks the unwritten part) and the encoder
    projections. Returns the block's output [B, 1, E] and the updated layer cache.
    """
    h = self.self_attention_norm(x)
    written = {
      name: jax.lax.dynamic_update_slice_in_dim(
        cache[name], heads_major(new).astype(cache[name].dtype), index, axis=2
      )
      for name, new in zip(("self_keys", "self_values"), self.self_attention.project_kv(h))
    }
    x = x + self.self_attention.attend_cached(
      h, written["self_keys"], written["self_values"], self_bias
    )
    h = self.cross_attention_norm(x)
    x = x + self.cross_attention.attend_cached(
      h, cache["cross_keys"], cache["cross_values"], cross_bias
    )
    x = x + self.mlp(self.mlp_norm(x), train=False)
    return residual_constraint(x), {**cache, **written}

  def cache(self, encoded: Array, max_decode_length: int) -> Cache:
    """This layer's entry of `T5.init_cache`: zero self-attention keys/values [B, H, Lmax, K],
    cross-attention projections of `encoded` [B, H, Li, K]."""
    cfg = self.cfg
    zeros = jnp.zeros(
      (encoded.shape[0], cfg.num_heads, max_decode_length, cfg.d_kv), cfg.compute_dtype
    )
    cross_keys, cross_values = self.cross_kv(encoded)
    return dict(
      self_keys=zeros,
      self_values=zeros,
      cross_keys=heads_major(cross_keys),
      cross_values=heads_major(cross_values),
    )


def _layer_class(cls: type[nn.Module], cfg: T5Config, train_argnum: int) -> type[nn.Module]:
  """`cls`, rematerialised under `cfg.remat`; `train_argnum` is the position of `__call__`'s
  `train` flag (self = 0), a static argument."""
  if cfg.remat == "none":
    return cls
  return nn.remat(
    cls,
    policy=REMAT_POLICIES[cfg.remat],
    prevent_cse=not cfg.scan_layers,  # scan already keeps XLA from merging the recomputation
    static_argnums=(train_argnum,),
  )


def _scan(fn: Any, length: int, in_axes: Any) -> Any:
  """`fn(layer, carry, *xs) -> (carry, ys)` scanned over `length` layers whose parameters are
  stacked along a leading `LAYERS_AXIS` (each step sees one layer's slice, and its own dropout
  and init rngs); `in_axes` as in `nn.scan` (`nn.broadcast`: the same value for every layer)."""
  return nn.scan(
    fn,
    variable_axes={"params": 0},
    split_rngs={"params": True, "dropout": True},
    in_axes=in_axes,
    length=length,
    metadata_params={nn.PARTITION_NAME: LAYERS_AXIS},
  )


def _padding_bias(mask: Array) -> Array:
  """[B, Lk] bool (True = attend) -> additive [B, 1, 1, Lk] float32 bias."""
  return jnp.where(mask, 0.0, NEG_INF)[:, None, None, :].astype(jnp.float32)


class T5(nn.Module):
  """T5 v1.1 encoder-decoder.

  Methods (call through `model.apply({'params': params}, ..., method=...)`):
    __call__(input_tokens, input_mask, decoder_input_tokens, train) -> logits [B, Lt, V]
      (teacher forcing)
    encode(input_tokens, input_mask, train) -> encoded [B, Li, E]
    decode(encoded, input_mask, decoder_input_tokens, train) -> logits [B, Lt, V]
    decode_hidden(...same...) -> hidden [B, Lt, E]; logits_from_hidden(hidden, train) -> logits
    init_cache(encoded, input_mask, max_decode_length) -> cache
    decode_step(decoder_token, cache) -> (logits [B, V], cache)
  and the model interface (`th_distill.models.interface.LanguageModel`): response_logits,
  response_hidden, start_decode (encode + init_cache; the decoder start token), extend_cache.
  Logits are float32. `input_mask` [B, Li] bool marks the real input tokens: it alone fixes the
  encoder's padding, whatever id the padded positions hold.
  With `cfg.scan_layers`, `encoder_layers` / `decoder_layers` are one scanned layer each (stacked
  parameters); otherwise lists of layers (`encoder_layers_{i}`, ...).
  """

  cfg: T5Config

  def setup(self):
    cfg = self.cfg
    self.token_embedder = self.param(
      "token_embedder",
      nn.with_logical_partitioning(normal(1.0), ("vocab", "embed")),
      (cfg.vocab_size, cfg.d_model),
      cfg.storage_dtype,
    )
    self.encoder_relpos = RelativePositionBias(cfg, bidirectional=True)
    encoder_layer = _layer_class(EncoderLayer, cfg, train_argnum=3)
    decoder_layer = _layer_class(DecoderLayer, cfg, train_argnum=5)
    if cfg.scan_layers:
      self.encoder_layers = encoder_layer(cfg)
      self.decoder_layers = decoder_layer(cfg)
    else:
      self.encoder_layers = [encoder_layer(cfg) for _ in range(cfg.num_encoder_layers)]
      self.decoder_layers = [decoder_layer(cfg) for _ in range(cfg.num_decoder_layers)]
    self.encoder_norm = RMSNorm(cfg)
    self.decoder_relpos = RelativePositionBias(cfg, bidirectional=False)
    self.decoder_norm = RMSNorm(cfg)
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

  def _logits(self, x: Array, train: bool) -> Array:
    x = self.dropout(self.decoder_norm(x), deterministic=not train)
    logits = jnp.einsum(
      "...e,ev->...v",
      x,
      self.logits_kernel.astype(self.cfg.compute_dtype),
      preferred_element_type=jnp.float32,
    )
    return logits.astype(jnp.float32)

  def encode(self, input_tokens: Array, input_mask: Array, train: bool = False) -> Array:
    """Encodes `input_tokens` [B, Li] into [B, Li, E] (compute dtype); `input_mask` [B, Li] bool
    marks the real tokens (the others are masked as keys)."""
    length = input_tokens.shape[1]
    positions = jnp.arange(length)
    bias = self.encoder_relpos(positions, positions) + _padding_bias(input_mask)
    x = self._embed(input_tokens, train)
    if self.cfg.scan_layers:
      x, _ = _scan(
        lambda layer, x, bias: (layer(x, bias, train), None),
        self.cfg.num_encoder_layers,
        nn.broadcast,
      )(self.encoder_layers, x, bias)
    else:
      for layer in self.encoder_layers:
        x = layer(x, bias, train)
    return self.dropout(self.encoder_norm(x), deterministic=not train)

  def decode(
    self, encoded: Array, input_mask: Array, decoder_input_tokens: Array, train: bool = False
  ) -> Array:
    """Teacher-forced decoder: [B, Lt] shifted-right targets -> logits [B, Lt, V] float32, over
    `encoded` [B, Li, E] whose real positions `input_mask` [B, Li] marks."""
    return self._logits(self.decode_hidden(encoded, input_mask, decoder_input_tokens, train), train)

  def decode_hidden(
    self, encoded: Array, input_mask: Array, decoder_input_tokens: Array, train: bool = False
  ) -> Array:
    """`decode` up to the last decoder layer: hidden states [B, Lt, E] before the final norm.

    With `logits_from_hidden` this lets callers compute [B, Lt, V] logits a chunk of positions at
    a time (bounding their memory)."""
    length = decoder_input_tokens.shape[1]
    positions = jnp.arange(length)
    causal = positions[None, :] <= positions[:, None]
    self_bias = self.decoder_relpos(positions, positions) + jnp.where(causal, 0.0, NEG_INF)
    cross_bias = _padding_bias(input_mask)
    x = self._embed(decoder_input_tokens, train)
    if self.cfg.scan_layers:
      x, _ = _scan(
        lambda layer, x, *context: (layer(x, *context, train), None),
        self.cfg.num_decoder_layers,
        (nn.broadcast,) * 3,
      )(self.decoder_layers, x, self_bias, encoded, cross_bias)
    else:
      for layer in self.decoder_layers:
        x = layer(x, self_bias, encoded, cross_bias, train)
    return x

  def logits_from_hidden(self, hidden: Array, train: bool = False) -> Array:
    """Final norm and output layer: hidden [..., E] from `decode_hidden` -> logits [..., V]."""
    return self._logits(hidden, train)

  def __call__(
    self,
    input_tokens: Array,
    input_mask: Array,
    decoder_input_tokens: Array,
    train: bool = False,
  ) -> Array:
    encoded = self.encode(input_tokens, input_mask, train)
    return self.decode(encoded, input_mask, decoder_input_tokens, train)

  # The model interface (`th_distill.models.interface.LanguageModel`).

  def response_logits(
    self, prompts: Array, prompt_mask: Array, responses: Array, train: bool = False
  ) -> Array:
    """Teacher-forced logits [B, Lt, V] of `responses` [B, Lt] (decoder fed `shift_right`)."""
    return self(prompts, prompt_mask, shift_right(responses), train)

  def response_hidden(
    self, prompts: Array, prompt_mask: Array, responses: Array, train: bool = False
  ) -> Array:
    """`decode_hidden` [B, Lt, E] of `responses` after encoding `prompts`."""
    encoded = self.encode(prompts, prompt_mask, train)
    return self.decode_hidden(encoded, prompt_mask, shift_right(responses), train)

  def start_decode(
    self, prompts: Array, prompt_mask: Array, max_decode_length: int
  ) -> tuple[Array, Cache]:
    """`encode` and `init_cache`: (the decoder start token for every row [B], cache)."""
    cache = self.init_cache(self.encode(prompts, prompt_mask), prompt_mask, max_decode_length)
    return jnp.full((prompts.shape[0],), DECODER_START_ID, jnp.int32), cache

  @staticmethod
  def extend_cache(cache: Cache, max_decode_length: int) -> Cache:
    """Module-level `extend_cache`."""
    return extend_cache(cache, max_decode_length)

  def init_cache(self, encoded: Array, input_mask: Array, max_decode_length: int) -> Cache:
    """Decoding cache for `max_decode_length` steps after `encode` (`input_mask` [B, Li] bool:
    the real encoder positions).

    Returns {'index': int32 scalar (next position), 'cross_bias': [B, 1, 1, Li],
    'layers': [per decoder layer: {'self_keys', 'self_values': [B, H, Lmax, K] zeros,
    'cross_keys', 'cross_values': [B, H, Li, K] projections of `encoded`}]}: heads-major
    (`heads_major`), the layout `Attention.attend_cached` reads. The encoder-side projections
    are computed once here, never per step. With `cfg.scan_layers`, 'layers' is one such dict
    whose arrays are stacked along a leading layer axis ([Ld, B, H, Lmax, K], ...).
    """
    if self.cfg.scan_layers:
      _, layers = _scan(
        lambda layer, carry, encoded: (carry, layer.cache(encoded, max_decode_length)),
        self.cfg.num_decoder_layers,
        nn.broadcast,
      )(self.decoder_layers, None, encoded)
    else:
      layers = [layer.cache(encoded, max_decode_length) for layer in self.decoder_layers]
    return dict(
      index=jnp.zeros((), jnp.int32),
      layers=layers,
      cross_bias=_padding_bias(input_mask),
    )

  def decode_step(self, decoder_token: Array, cache: Cache) -> tuple[Array, Cache]:
    """Feeds `decoder_token` [B] at position `cache['index']`: logits [B, V] and the new cache."""
    index = cache["index"]
    max_length = _self_keys(cache).shape[-2]
    key_positions = jnp.arange(max_length)
    self_bias = (
      self.decoder_relpos(index[None], key_positions)
      + jnp.where(key_positions <= index, 0.0, NEG_INF)[None, None, None, :]
    )
    x = self._embed(decoder_token[:, None], train=False)
    if self.cfg.scan_layers:
      x, new_layers = self._scanned_step(x, self_bias, cache)
    else:
      new_layers = []
      for layer, layer_cache in zip(self.decoder_layers, cache["layers"]):
        x, layer_cache = layer.step(x, self_bias, layer_cache, index, cache["cross_bias"])
        new_layers.append(layer_cache)
    logits = self._logits(x[:, 0], train=False)
    return logits, {**cache, "index": index + 1, "layers": new_layers}

  def _scanned_step(self, x: Array, self_bias: Array, cache: Cache) -> tuple[Array, Cache]:
    """`decode_step`'s decoder layers under scan: `x` [B, 1, E] -> (output [B, 1, E], the
    stacked layer caches with this token's keys/values written). Only the new [Ld, B, H, 1, K]
    keys/values leave the scan and are written into the stacked cache once: the rest of the
    cache (cross-attention entries included) is only read."""
    index = cache["index"]

    def body(layer, x, layer_cache):
      x, written = layer.step(x, self_bias, layer_cache, index, cache["cross_bias"])
      return x, {k: jax.lax.dynamic_slice_in_dim(written[k], index, 1, axis=2) for k in SELF_KV}

    x, new = _scan(body, self.cfg.num_decoder_layers, 0)(self.decoder_layers, x, cache["layers"])
    layers = cache["layers"]
    return x, {
      **layers,
      **{k: jax.lax.dynamic_update_slice_in_dim(layers[k], new[k], index, axis=3) for k in SELF_KV},
    }


def _self_keys(cache: Cache) -> Array:
  """The self-attention keys of the first layer [B, H, Lmax, K], or of all [Ld, B, H, Lmax, K]."""
  layers = cache["layers"]
  return (layers[0] if isinstance(layers, list) else layers)["self_keys"]


def shift_right(targets: Array) -> Array:
  """Decoder inputs from targets [B, Lt]: prepend T5's decoder start token (`DECODER_START_ID`,
  its `decoder_start_token_id`), drop the last token."""
  return jnp.pad(targets, ((0, 0), (1, 0)), constant_values=DECODER_START_ID)[:, :-1]


@functools.partial(jax.jit, static_argnames=("model", "input_length", "target_length"))
def init_params(model: T5, rng: Array, input_length: int = 8, target_length: int = 8) -> Any:
  """Boxed (logically annotated) parameters of `model`; `nn.unbox` gives plain arrays.

  `jax.eval_shape(init_params, model, rng)` gives their shapes without computing them.
  """
  tokens = jnp.ones((1, input_length), jnp.int32)
  mask = jnp.ones((1, input_length), bool)
  return model.init(rng, tokens, mask, jnp.ones((1, target_length), jnp.int32))["params"]


def _stack(leaves: tuple[Any, ...]) -> Any:
  if all(isinstance(x, np.ndarray) for x in leaves):
    return np.stack(leaves)
  return jnp.stack(leaves)


def stack_layers(params: dict[str, Any]) -> dict[str, Any]:
  """Unrolled parameters -> the `scan_layers` layout.

  The layers `encoder_layers_{i}` (and `decoder_layers_{i}`) become one entry `encoder_layers`
  whose leaves are theirs stacked along a new leading axis in layer order ([E] -> [Le, E],
  [E, H, K] -> [Le, E, H, K], ...). Leaves are plain arrays (`nn.unbox` boxed ones first); numpy
  leaves stay numpy. The other entries, and a stack already in the scanned layout, are kept.
  """
  params = dict(params)
  for stack in ("encoder", "decoder"):
    names = sorted(
      (k for k in params if re.fullmatch(rf"{stack}_layers_\d+", k)),
      key=lambda k: int(k.rsplit("_", 1)[1]),
    )
    if names:
      layers = [params.pop(k) for k in names]
      params[f"{stack}_layers"] = jax.tree_util.tree_map(lambda *xs: _stack(xs), *layers)
  return params


def unstack_layers(params: dict[str, Any]) -> dict[str, Any]:
  """The `scan_layers` layout -> unrolled parameters: the exact inverse of `stack_layers`
  (`encoder_layers` [Le, ...] -> `encoder_layers_{i}` [...], same for the decoder). A stack
  already unrolled is kept."""
  params = dict(params)
  for stack in ("encoder", "decoder"):
    stacked = params.pop(f"{stack}_layers", None)
    if stacked is not None:
      for i in range(jax.tree_util.tree_leaves(stacked)[0].shape[0]):
        params[f"{stack}_layers_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], stacked)
  return params
