"""The decoder-only family: shapes, logical axes, grouped-query attention, tied and untied
embeddings, response-only logits, and its KV-cache decode against its own forward pass."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from th_distill import sampling
from th_distill.models import Decoder, DecoderConfig, decoder_config, init_params, param_count
from th_distill.models.decoder import align_prompts
from th_distill.models.tokens import SpecialTokens
from th_distill.partitioning import DEFAULT_RULES

VOCAB = 40
NEVER_STOP = SpecialTokens(pad_id=0, stop_ids=())


def _model(**overrides) -> Decoder:
  return Decoder(decoder_config("tiny", vocab_size=VOCAB, num_layers=2, **overrides))


def _params(model: Decoder, seed: int = 0):
  params = nn.unbox(init_params(model, jax.random.PRNGKey(seed)))
  # Random norm scales and biases, so that a misplaced norm or bias shows.
  return jax.tree_util.tree_map_with_path(
    lambda path, x: (
      x + 0.3 * jax.random.normal(jax.random.PRNGKey(len(str(path))), x.shape)
      if "scale" in str(path) or "bias" in str(path)
      else x
    ),
    params,
  )


def _prompts(batch: int = 4, length: int = 6) -> tuple[jax.Array, jax.Array]:
  """Prompts [batch, length] and their mask: rows 1-3 are right-padded, left-padded and a
  one-token prompt (filler 0)."""
  prompts = jax.random.randint(jax.random.PRNGKey(1), (batch, length), 2, VOCAB)
  mask = jnp.ones((batch, length), bool).at[1, 4:].set(False).at[2, :3].set(False)
  mask = mask.at[3, 1:].set(False)
  return jnp.where(mask, prompts, 0), mask


def _responses(batch: int = 4, length: int = 7) -> jax.Array:
  return jax.random.randint(jax.random.PRNGKey(2), (batch, length), 0, VOCAB)


def _decode_logits(model, params, prompts, prompt_mask, responses, segment):
  """Logits [B, Lt, V] of feeding `start_decode`'s first token then `responses` one at a time,
  the cache allocated for `segment` tokens and extended to Lt half-way."""
  variables = {"params": params}
  first, cache = model.apply(variables, prompts, prompt_mask, segment, method="start_decode")
  token, steps = first, []
  for t in range(responses.shape[1]):
    if t == segment:
      cache = model.extend_cache(cache, responses.shape[1])
    logits, cache = model.apply({"params": params}, token, cache, method="decode_step")
    steps.append(logits)
    token = responses[:, t]
  return jnp.stack(steps, axis=1)


@pytest.mark.parametrize(
  "overrides",
  [
    dict(),  # GQA 4 heads over 2 kv heads, untied
    dict(num_kv_heads=4, tie_embeddings=True),  # multi-head, tied
    dict(num_kv_heads=1, qkv_bias=True, mlp_activation="gelu_tanh"),  # multi-query, Qwen2 biases
  ],
)
def test_decode_equals_forward(overrides):
  model = _model(**overrides)
  params = _params(model)
  (prompts, mask), responses = _prompts(), _responses()
  forward = model.apply({"params": params}, prompts, mask, responses, method="response_logits")
  assert forward.shape == (4, 7, VOCAB) and forward.dtype == jnp.float32
  decoded = _decode_logits(model, params, prompts, mask, responses, segment=3)
  np.testing.assert_allclose(decoded, forward, atol=1e-5, rtol=0)
  assert float(jnp.max(jnp.abs(forward))) > 0.5  # not trivially equal


def test_the_sampler_emits_what_the_forward_pass_scores():
  model = _model()
  params = _params(model)
  prompts, mask = _prompts()
  settings = dict(temperature=1.0, tokens=NEVER_STOP)
  out = sampling.sample(
    model, params, prompts, mask, jax.random.PRNGKey(3), max_length=70, **settings
  )
  assert out.tokens.shape == (4, 70)  # past the first cache segment (64)
  logits = model.apply({"params": params}, prompts, mask, out.tokens, method="response_logits")
  logprobs = jnp.take_along_axis(jax.nn.log_softmax(logits), out.tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(out.logprobs, logprobs, atol=1e-4)
  uncached = sampling.sample_uncached(
    model, params, prompts, mask, jax.random.PRNGKey(3), max_length=12, **settings
  )
  np.testing.assert_array_equal(uncached.tokens, out.tokens[:, :12])


def test_padding_is_invisible():
  """A prompt's padding, wherever it lies and whatever ids fill it, changes no logit: the same
  real tokens padded left, right or not at all give the same response logits."""
  model = _model()
  params = _params(model)
  real = jnp.array([[5, 9, 3, 7]])
  responses = _responses(1, 5)
  variants = [
    (real, jnp.ones((1, 4), bool)),
    (jnp.pad(real, ((0, 0), (0, 3))), jnp.arange(7)[None] < 4),
    (jnp.pad(real, ((0, 0), (2, 0)), constant_values=9), jnp.arange(6)[None] >= 2),
  ]
  logits = [
    model.apply({"params": params}, p, m, responses, method="response_logits") for p, m in variants
  ]
  for other in logits[1:]:
    np.testing.assert_allclose(other, logits[0], atol=1e-5)
  aligned = align_prompts(jnp.array([[0, 4, 0, 5]]), jnp.array([[False, True, False, True]]))
  np.testing.assert_array_equal(aligned[0], [[0, 0, 4, 5]])
  np.testing.assert_array_equal(aligned[1], [[False, False, True, True]])
  # Id 0 is an ordinary token where the mask says it is real.
  aligned = align_prompts(jnp.array([[0, 4, 3, 5]]), jnp.array([[True, False, False, True]]))
  np.testing.assert_array_equal(aligned[0], [[4, 3, 0, 5]])
  np.testing.assert_array_equal(aligned[1], [[False, False, True, True]])


def test_responses_change_only_later_logits():
  """Causality over the concatenation: the logits at response position t depend on the prompt
  and responses[:, :t] only."""
  model = _model()
  params = _params(model)
  (prompts, mask), responses = _prompts(), _responses()
  changed = responses.at[:, 4].set((responses[:, 4] + 1) % VOCAB)
  a, b = (
    model.apply({"params": params}, prompts, mask, r, method="response_logits")
    for r in (responses, changed)
  )
  np.testing.assert_array_equal(a[:, :5], b[:, :5])
  assert float(jnp.max(jnp.abs(a[:, 5:] - b[:, 5:]))) > 1e-3


def test_shapes_axes_and_tied_embeddings():
  untied, tied = _model(), _model(tie_embeddings=True)
  boxed = jax.eval_shape(init_params, untied, jax.random.PRNGKey(0))
  specs = nn.get_partition_spec(boxed)
  assert specs["token_embedder"] == P("vocab", "embed")
  assert specs["logits_kernel"] == P("embed", "vocab")
  attention = specs["layers_0"]["attention"]
  assert attention["query"] == P("embed", "heads", "kv")
  assert attention["key"] == P("embed", "kv_heads", "kv")
  shapes = nn.unbox(boxed)
  assert shapes["layers_0"]["attention"]["key"].shape == (64, 2, 16)  # 2 kv heads of 16
  assert shapes["layers_0"]["attention"]["query"].shape == (64, 4, 16)
  # Every logical name has a partitioning rule.
  names = {n for leaf in jax.tree_util.tree_leaves(specs) for n in leaf}
  assert names <= {rule for rule, _ in DEFAULT_RULES}
  tied_params = jax.eval_shape(init_params, tied, jax.random.PRNGKey(0))
  assert "logits_kernel" not in tied_params
  assert param_count(boxed) - param_count(tied_params) == 64 * VOCAB


def test_config_checks_and_costs():
  with pytest.raises(ValueError, match="num_kv_heads"):
    DecoderConfig(num_heads=6, num_kv_heads=4)
  with pytest.raises(ValueError, match="mlp_activation"):
    DecoderConfig(mlp_activation="relu")
  cfg = decoder_config("tiny")
  # Generation does the same projections as a forward pass over the same positions, and less
  # attention (each step attends to the keys before it, not the whole causal square).
  assert cfg.generation_flops(8, 16) < cfg.forward_flops(8, 16)
  assert cfg.kv_cache_bytes(2, 8, 16, 1) == 4 * 2 * 4 * 2 * 24 * 2 * 16


@pytest.mark.parametrize(
  "overrides, li, lt", [(dict(), 16, 8), (dict(num_kv_heads=1, d_ff=96), 8, 40)]
)
def test_forward_flops_match_xla_cost_analysis(overrides, li, lt):
  cfg = decoder_config("tiny", **overrides)
  model = Decoder(cfg)
  params = jax.eval_shape(lambda: nn.unbox(init_params(model, jax.random.PRNGKey(0))))
  forward = jax.jit(
    lambda p, a, m, b: model.apply({"params": p}, a, m, b, method="response_logits")
  )
  compiled = forward.lower(
    params, jnp.ones((2, li), jnp.int32), jnp.ones((2, li), bool), jnp.ones((2, lt), jnp.int32)
  ).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  # XLA also counts element-wise work (norms, softmax, RoPE, SiLU): a few percent more.
  ratio = cost["flops"] / 2 / cfg.forward_flops(li, lt)
  assert 1.0 <= ratio < 1.08, ratio
