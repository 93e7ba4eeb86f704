"""`T5Config.scan_layers` and `T5Config.remat`: the scanned and rematerialised models equal the
unrolled one on the same parameters (`stack_layers` / `unstack_layers`): logits, gradients, and the
KV-cache sampler's tokens and log-probs; checkpoint loaders, sharding rules and memory estimates
follow the stacked layout (float32, tiny random model)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from th_distill import sampling
from th_distill.models import (
  LAYERS_AXIS,
  T5,
  T5Config,
  extend_cache,
  init_params,
  pretrained,
  shift_right,
  stack_layers,
  t5_config,
  unstack_layers,
)
from th_distill.models.tokens import SpecialTokens
from th_distill.partitioning import MESH_AXES, Partitioner, make_mesh, mesh_axes
from th_distill.planning import weights

VOCAB, PROMPT, TARGET, ROWS = 32, 7, 9, 3
NEVER_STOP = SpecialTokens(pad_id=0, stop_ids=())
CFG = t5_config(
  "tiny",
  vocab_size=VOCAB,
  d_model=32,
  d_kv=8,
  d_ff=64,
  num_heads=2,
  num_encoder_layers=3,
  num_decoder_layers=2,
  relative_attention_num_buckets=8,
  relative_attention_max_distance=12,
)
# Every layout but the reference (unrolled, no remat).
LAYOUTS = [(False, "full"), (False, "dots"), (True, "none"), (True, "full"), (True, "dots")]


def _model(scan: bool, remat: str) -> T5:
  return T5(CFG.replace(scan_layers=scan, remat=remat))


def _params_for(scan: bool, params):
  return stack_layers(params) if scan else params


@pytest.fixture(scope="module")
def inputs():
  """Unrolled parameters (output layer sharpened), (prompts [ROWS, PROMPT] with padding, their
  mask), decoder inputs [ROWS, TARGET]."""
  params = nn.unbox(init_params(_model(False, "none"), jax.random.PRNGKey(0)))
  params = {**params, "logits_kernel": params["logits_kernel"] * 4.0}
  prompts = np.array(jax.random.randint(jax.random.PRNGKey(1), (ROWS, PROMPT), 2, VOCAB))
  prompts[1, 4:] = 0
  mask = np.ones(prompts.shape, bool)
  mask[1, 4:] = False  # row 1's real length is 4
  targets = jax.random.randint(jax.random.PRNGKey(2), (ROWS, TARGET), 0, VOCAB)
  return params, (prompts, mask), np.asarray(shift_right(targets))


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, prompts, decoder_inputs):
  """`prompts`: (tokens, mask)."""
  return model.apply({"params": params}, *prompts, decoder_inputs)


@functools.partial(jax.jit, static_argnums=0)
def _grads(model, params, prompts, decoder_inputs):
  def loss(p):
    logits = model.apply({"params": p}, *prompts, decoder_inputs, train=True)
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[..., 0])

  return jax.grad(loss)(params)


def test_stack_and_unstack_are_inverse_and_give_the_scanned_models_tree(inputs):
  params = inputs[0]
  stacked = stack_layers(params)
  assert "encoder_layers_0" not in stacked
  assert stacked["encoder_layers"]["mlp"]["wi_0"].shape == (3, CFG.d_model, CFG.d_ff)
  assert stacked["decoder_layers"]["cross_attention"]["out"].shape == (2, 2, 8, CFG.d_model)
  np.testing.assert_array_equal(
    stacked["decoder_layers"]["mlp_norm"]["scale"][1],
    params["decoder_layers_1"]["mlp_norm"]["scale"],
  )
  back = unstack_layers(stacked)
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, params)
  # Already in the target layout: unchanged. Numpy stays numpy.
  assert jax.tree_util.tree_structure(stack_layers(stacked)) == jax.tree_util.tree_structure(
    stacked
  )
  numpy_params = jax.tree_util.tree_map(np.asarray, params)
  assert all(
    isinstance(x, np.ndarray) for x in jax.tree_util.tree_leaves(stack_layers(numpy_params))
  )
  # The scanned model's own parameters have this tree, with a leading `layers` logical axis.
  boxed = jax.eval_shape(init_params, _model(True, "none"), jax.random.PRNGKey(0))
  shapes = jax.tree_util.tree_map(lambda x: x.shape, nn.unbox(boxed))
  assert shapes == jax.tree_util.tree_map(lambda x: x.shape, stacked)
  names = nn.get_partition_spec(boxed)
  assert tuple(names["encoder_layers"]["attention"]["query"]) == (
    LAYERS_AXIS,
    "embed",
    "heads",
    "kv",
  )
  assert tuple(names["token_embedder"]) == ("vocab", "embed")


@pytest.mark.parametrize("scan, remat", LAYOUTS)
def test_logits_and_gradients_equal_the_unrolled_model(inputs, scan, remat):
  params, prompts, decoder_inputs = inputs
  reference = _model(False, "none")
  expected = _forward(reference, params, prompts, decoder_inputs)
  assert float(jnp.std(expected)) > 1.0  # far from uniform: a misplaced layer would show
  model, ours = _model(scan, remat), _params_for(scan, params)
  np.testing.assert_allclose(
    _forward(model, ours, prompts, decoder_inputs), expected, atol=1e-5, rtol=0
  )
  grads = unstack_layers(_grads(model, ours, prompts, decoder_inputs))
  jax.tree_util.tree_map(
    lambda g, e: np.testing.assert_allclose(g, e, atol=1e-6, rtol=1e-4),
    grads,
    _grads(reference, params, prompts, decoder_inputs),
  )


@pytest.mark.parametrize(
  "scan, remat, temperatures",
  [(True, "none", (0.0, 1.0)), (True, "dots", (0.0,)), (False, "full", (0.0,))],
)
def test_the_kv_cache_sampler_equals_the_unrolled_one(inputs, scan, remat, temperatures):
  """Greedy (and temperature-1) samples over 70 positions: two cache segments (`extend_cache`)."""
  params, prompts, _ = inputs
  reference = _model(False, "none")
  model, ours = _model(scan, remat), _params_for(scan, params)
  for temperature in temperatures:
    settings = dict(max_length=70, temperature=temperature, tokens=NEVER_STOP)
    expected = sampling.sample(reference, params, *prompts, jax.random.PRNGKey(3), **settings)
    got = sampling.sample(model, ours, *prompts, jax.random.PRNGKey(3), **settings)
    np.testing.assert_array_equal(got.tokens, expected.tokens)
    np.testing.assert_array_equal(got.mask, expected.mask)
    np.testing.assert_allclose(got.logprobs, expected.logprobs, atol=1e-5, rtol=0)


def test_scanned_incremental_decoding_equals_its_teacher_forcing(inputs):
  params, prompts, decoder_inputs = inputs
  model, ours = _model(True, "none"), stack_layers(params)
  full = _forward(model, ours, prompts, decoder_inputs)
  variables = {"params": ours}
  encoded = model.apply(variables, *prompts, method=T5.encode)
  cache = model.apply(variables, encoded, prompts[1], 4, method=T5.init_cache)
  assert cache["layers"]["self_keys"].shape == (2, ROWS, 2, 4, 8)
  assert cache["layers"]["cross_keys"].shape == (2, ROWS, 2, PROMPT, 8)
  step = jax.jit(lambda token, cache: model.apply(variables, token, cache, method=T5.decode_step))
  for t in range(TARGET):
    if t == 4:
      cache = extend_cache(cache, TARGET)
    logits, cache = step(decoder_inputs[:, t], cache)
    np.testing.assert_allclose(logits, full[:, t], atol=1e-5, rtol=0, err_msg=f"step {t}")


def test_scanned_dropout_trains(inputs):
  """Dropout under scan and remat: finite gradients that depend on the dropout key."""
  params, prompts, decoder_inputs = inputs
  model = T5(CFG.replace(scan_layers=True, remat="full", dropout_rate=0.2))

  @jax.jit
  def grads(key):
    def loss(p):
      logits = model.apply({"params": p}, *prompts, decoder_inputs, True, rngs={"dropout": key})
      return jnp.mean(logits**2)

    return jax.grad(loss)(stack_layers(params))

  first, second = grads(jax.random.PRNGKey(4)), grads(jax.random.PRNGKey(5))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(first))
  assert not np.allclose(
    first["encoder_layers"]["mlp"]["wo"], second["encoder_layers"]["mlp"]["wo"]
  )


def test_config_checks_the_new_fields():
  assert T5Config().scan_layers is False and T5Config().remat == "none"
  with pytest.raises(ValueError, match="T5Config.remat must be one of"):
    T5Config(remat="minimal")
  with pytest.raises(ValueError, match="T5Config.scan_layers must be a bool"):
    T5Config(scan_layers=1)


def test_the_layers_axis_is_replicated_and_memory_estimates_match():
  scanned, unrolled = _model(True, "none"), _model(False, "none")
  mesh_shape = {"data": 1, "fsdp": 2, "model": 2}
  assert mesh_axes((LAYERS_AXIS, "embed", "mlp"), (3, 32, 64), mesh_shape) == [
    None,
    "fsdp",
    "model",
  ]
  partitioner = Partitioner(make_mesh())  # every local device on `data`
  shardings = partitioner.param_shardings(scanned)
  assert shardings["encoder_layers"]["mlp"]["wi_0"].spec[0] is None
  params = partitioner.init_params(scanned, jax.random.PRNGKey(0))
  expected = stack_layers(nn.unbox(init_params(unrolled, jax.random.PRNGKey(0))))
  assert jax.tree_util.tree_map(lambda x: x.shape, params) == jax.tree_util.tree_map(
    lambda x: x.shape, expected
  )
  whole = dict(zip(MESH_AXES, (1, 2, 2)))
  for fn in (weights.param_bytes, weights.gathered_bytes):
    assert fn(scanned.cfg, whole, "float32") == pytest.approx(fn(unrolled.cfg, whole, "float32"))


def test_checkpoint_loaders_stack_the_layers(tmp_path):
  """Hugging Face and T5X checkpoints load into a scanned model's layout; export unstacks."""
  pytest.importorskip("safetensors")
  import real_task_data

  from th_distill.models import hf_convert

  cfg = CFG.replace(num_encoder_layers=1, num_decoder_layers=1)
  scanned = cfg.replace(scan_layers=True)
  hf = real_task_data.write_hf_checkpoint(tmp_path / "hf", cfg, seed=1)
  t5x = real_task_data.write_t5x_checkpoint(tmp_path / "t5x", cfg, seed=2)
  for path, expected in ((tmp_path / "hf", hf), (tmp_path / "t5x", t5x)):
    assert pretrained.mismatches(path, scanned) == []
    params = pretrained.load_params(path, scanned)
    assert params["decoder_layers"]["mlp"]["wo"].shape == (1, cfg.d_ff, cfg.d_model)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, stack_layers(expected))
  state = hf_convert.params_to_hf_state_dict(stack_layers(hf), scanned)
  jax.tree_util.tree_map(
    np.testing.assert_array_equal, state, hf_convert.params_to_hf_state_dict(hf, cfg)
  )
