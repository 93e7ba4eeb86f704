"""bench/op_profile.py: self times of nested trace events, the sampler's bytes per decoding step
(`bench.common.decode_step_bytes`) and the attribution of a real compiled sampler's operations
to kinds."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from bench import common, op_profile
from th_distill.models import T5, init_params, t5_config
from th_distill.models.tokens import T5_TOKENS
from th_distill.sampling import sample


def test_self_times_subtract_nested_events_per_thread():
  events = [
    dict(name="outer", ts=0, dur=100, pid=1, tid=1),
    dict(name="inner", ts=10, dur=30, pid=1, tid=1),
    dict(name="inner", ts=50, dur=10, pid=1, tid=1),
    dict(name="other_thread", ts=0, dur=30, pid=1, tid=2),
  ]
  assert op_profile._self_times(events) == {"outer": 60, "inner": 40, "other_thread": 30}


def test_decode_step_bytes_counts_decoder_weights_output_layer_and_caches():
  cfg = t5_config("tiny")
  params = nn.unbox(init_params(T5(cfg), jax.random.PRNGKey(0)))
  e, a, f, v = cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff, cfg.vocab_size
  per_layer = 6 * e * a + 3 * e * f + 3 * e  # self q k v o, cross q o, gated MLP, three norms
  weights = cfg.num_decoder_layers * per_layer + e + e * v  # + final norm, output layer
  weights += cfg.relative_attention_num_buckets * cfg.num_heads  # decoder position bias
  batch, input_length = 2, 3
  kv_per_position = 2 * cfg.num_decoder_layers * batch * a
  # 100 steps: a 64-position segment, then one of 100 positions.
  cache = (64 * 64 + 36 * 100) / 100
  expected = 4 * (weights + kv_per_position * (input_length + cache))
  assert common.decode_step_bytes(cfg, params, batch, input_length, 100) == pytest.approx(expected)


def test_sampler_operations_fall_into_the_model_kinds():
  cfg = t5_config("tiny")
  model = T5(cfg)
  params = nn.unbox(init_params(model, jax.random.PRNGKey(0)))
  prompts = jnp.full((2, 5), 3, jnp.int32)
  mask, key = jnp.ones(prompts.shape, bool), jax.random.PRNGKey(1)
  compiled = sample.lower(model, params, prompts, mask, key, max_length=4, tokens=T5_TOKENS)
  compiled = compiled.compile()
  kinds = op_profile.profile(compiled, lambda: compiled(params, prompts, mask, key))
  for kind in (
    "matmul: MLP",
    "matmul: attention projections",
    "matmul: attention scores and mixing",
    "matmul: output layer",
    "sampling: random numbers, Gumbel noise, draw",
  ):
    assert kinds.get(kind, 0) > 0, (kind, kinds)
  assert "matmul: other" not in kinds
