"""Our T5 equals Hugging Face `transformers` T5 v1.1 (torch, CPU) on the same random weights."""

import copy
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from th_distill.models import T5, hf_convert, init_params, pretrained, shift_right, stack_layers
from th_distill.models.tokens import T5_TOKENS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

HF_CONFIG = dict(
  vocab_size=96,
  d_model=32,
  d_kv=8,
  d_ff=48,
  num_heads=4,
  num_layers=2,
  num_decoder_layers=3,
  relative_attention_num_buckets=8,
  relative_attention_max_distance=20,
  feed_forward_proj="gated-gelu",
  tie_word_embeddings=False,
  dropout_rate=0.0,
  decoder_start_token_id=0,
  pad_token_id=0,
  eos_token_id=1,
)


@pytest.fixture(scope="module")
def hf_model():
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(**HF_CONFIG)).eval()
  with torch.no_grad():  # norm scales start at 1, which would hide a missing or misplaced one
    for name, param in model.named_parameters():
      if "layer_norm" in name:
        param.uniform_(0.5, 1.5)
  # transformers >= 5 build the output layer tied to the embedding; T5 v1.1 has its own.
  model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.2)
  assert not getattr(model.config, "scale_decoder_outputs", False)
  return model


@pytest.fixture(scope="module")
def converted(hf_model):
  cfg = hf_convert.config_from_hf(hf_model.config)
  return T5(cfg), hf_convert.params_from_hf_state_dict(hf_model.state_dict(), cfg)


def _inputs(batch=3, input_length=30, target_length=10):
  """Prompts of 30 tokens (beyond max_distance 20: logarithmic buckets) with encoder padding,
  their mask (real lengths 20, 25 and 30; the filler is ids 0 and 1, so only the mask can tell
  it), and shifted-right decoder inputs."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(2, HF_CONFIG["vocab_size"], (batch, input_length))
  mask = np.arange(input_length)[None] < np.array([20, 25, 30])[:batch, None]
  tokens[0, 20:] = 0
  tokens[1, 25:] = 1
  targets = rng.integers(2, HF_CONFIG["vocab_size"], (batch, target_length))
  return tokens, mask, np.asarray(shift_right(jnp.asarray(targets)))


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, tokens, mask, decoder_inputs):
  return model.apply({"params": params}, tokens, mask, decoder_inputs)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _init_cache(model, params, tokens, mask, length):
  encoded = model.apply({"params": params}, tokens, mask, method=T5.encode)
  return model.apply({"params": params}, encoded, mask, length, method=T5.init_cache)


@functools.partial(jax.jit, static_argnums=0)
def _decode_step(model, params, token, cache):
  return model.apply({"params": params}, token, cache, method=T5.decode_step)


def _step_by_step(model, params, tokens, mask, decoder_inputs):
  """Our logits [B, V] at each decoder position, through encode / init_cache / decode_step."""
  cache = _init_cache(model, params, tokens, mask, decoder_inputs.shape[1])
  logits = []
  for t in range(decoder_inputs.shape[1]):
    step_logits, cache = _decode_step(model, params, decoder_inputs[:, t], cache)
    logits.append(np.asarray(step_logits))
  return logits


def _assert_forward_equals_transformers(hf_model, model_and_params):
  tokens, mask, decoder_inputs = _inputs()
  with torch.no_grad():
    hf = hf_model(
      input_ids=torch.tensor(tokens),
      attention_mask=torch.tensor(mask),
      decoder_input_ids=torch.tensor(decoder_inputs),
    ).logits.numpy()
  np.testing.assert_allclose(
    _forward(*model_and_params, tokens, mask, decoder_inputs), hf, atol=1e-4, rtol=0
  )


def test_forward_logits_equal_transformers(hf_model, converted):
  _assert_forward_equals_transformers(hf_model, converted)


def _assert_incremental_equals_transformers(hf_model, model_and_params):
  """Our step-by-step logits (KV cache) equal `transformers`' with its own cache, step by step."""
  tokens, prompt_mask, decoder_inputs = _inputs()
  ours = _step_by_step(*model_and_params, tokens, prompt_mask, decoder_inputs)
  mask = torch.tensor(prompt_mask)
  with torch.no_grad():
    encoder_out = hf_model.get_encoder()(input_ids=torch.tensor(tokens), attention_mask=mask)
    past = None
    for t, logits in enumerate(ours):
      out = hf_model(
        encoder_outputs=encoder_out,
        attention_mask=mask,
        decoder_input_ids=torch.tensor(decoder_inputs[:, t : t + 1]),
        past_key_values=past,
        use_cache=True,
      )
      past = out.past_key_values
      np.testing.assert_allclose(
        logits, out.logits[:, 0].numpy(), atol=1e-4, rtol=0, err_msg=f"step {t}"
      )


def test_incremental_decoding_equals_transformers(hf_model, converted):
  _assert_incremental_equals_transformers(hf_model, converted)


def test_step_by_step_decoding_equals_teacher_forcing(converted):
  tokens, mask, decoder_inputs = _inputs()
  full = np.asarray(_forward(*converted, tokens, mask, decoder_inputs))
  for t, logits in enumerate(_step_by_step(*converted, tokens, mask, decoder_inputs)):
    np.testing.assert_allclose(logits, full[:, t], atol=1e-5, rtol=0, err_msg=f"step {t}")


def _save(hf_model, directory, fmt):
  if fmt == "safetensors":
    hf_model.save_pretrained(directory)  # safetensors: the default (from v5 the only) format
  elif fmt == "sharded":
    hf_model.save_pretrained(directory, max_shard_size="20KB")
    assert (directory / "model.safetensors.index.json").is_file()
  elif fmt == "bfloat16":
    copy.deepcopy(hf_model).to(torch.bfloat16).save_pretrained(directory)
  else:
    hf_model.config.save_pretrained(directory)
    torch.save(hf_model.state_dict(), directory / "pytorch_model.bin")


@pytest.mark.parametrize("fmt", ["safetensors", "sharded", "bfloat16", "pytorch_bin"])
def test_checkpoint_directory_loads_to_the_same_params(hf_model, converted, tmp_path, fmt):
  _save(hf_model, tmp_path, fmt)
  checkpoint = pretrained.load_checkpoint(tmp_path)
  cfg, params = checkpoint.config, checkpoint.params
  model, expected = converted
  assert cfg == model.cfg and checkpoint.model_type == "t5"
  assert checkpoint.special_tokens == T5_TOKENS  # config.json: pad_token_id 0, eos_token_id 1
  if fmt == "bfloat16":
    expected = jax.tree_util.tree_map(
      lambda x: np.asarray(x.astype(jnp.bfloat16), np.float32), expected
    )
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, expected)


def test_round_trip_is_exact(hf_model, converted):
  model, params = converted
  hf_state = hf_model.state_dict()
  state = hf_convert.params_to_hf_state_dict(params, model.cfg)
  assert set(state) == set(hf_state)
  for key, value in hf_state.items():
    np.testing.assert_array_equal(state[key], value.numpy(), err_msg=key)
  for dtype in ("float32", "bfloat16"):  # ours -> HF -> ours, in either storage dtype
    cfg = model.cfg.replace(param_dtype=dtype)
    ours = hf_convert.params_from_hf_state_dict(hf_state, cfg)
    back = hf_convert.params_from_hf_state_dict(hf_convert.params_to_hf_state_dict(ours, cfg), cfg)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(ours)
    assert all(leaf.dtype == np.dtype(jnp.dtype(dtype)) for leaf in jax.tree_util.tree_leaves(back))
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, ours)
  # The converted tree is exactly the model's own.
  shapes = jax.tree_util.tree_map(
    lambda x: x.shape, nn.unbox(jax.eval_shape(init_params, model, jax.random.PRNGKey(0)))
  )
  assert jax.tree_util.tree_map(lambda x: x.shape, params) == shapes


def test_errors_name_the_problem(hf_model, converted):
  cfg = converted[0].cfg
  state = dict(hf_model.state_dict())
  key = "decoder.block.1.layer.1.EncDecAttention.k.weight"
  bad = {**state, key: state[key][:, :-1]}
  with pytest.raises(
    ValueError,
    match=rf"{key.replace('.', '[.]')}: shape \(32, 31\), "
    r"expected \(32, 32\)",
  ):
    hf_convert.params_from_hf_state_dict(bad, cfg)
  missing = "encoder.block.1.layer.1.layer_norm.weight"
  with pytest.raises(ValueError, match=missing.replace(".", "[.]")):
    hf_convert.params_from_hf_state_dict({k: v for k, v in state.items() if k != missing}, cfg)
  with pytest.raises(ValueError, match="unexpected.*decoder[.]block[.]3"):
    hf_convert.params_from_hf_state_dict(
      {**state, "decoder.block.3.layer.2.layer_norm.weight": state[missing]}, cfg
    )
  with pytest.raises(ValueError, match="feed_forward_proj.*gated-gelu"):
    hf_convert.config_from_hf({**HF_CONFIG, "feed_forward_proj": "relu"})
  with pytest.raises(ValueError, match="tie_word_embeddings"):
    hf_convert.config_from_hf({**HF_CONFIG, "tie_word_embeddings": True})
  with pytest.raises(ValueError, match="tie_word_embeddings"):  # original T5 via transformers 5
    hf_convert.config_from_hf(
      transformers.T5Config(
        **{**HF_CONFIG, "tie_word_embeddings": True, "feed_forward_proj": "gated-gelu"}
      )
    )
  with pytest.raises(FileNotFoundError, match="config.json.*model.safetensors"):
    pretrained.load_checkpoint("/nonexistent/t5")


def test_bfloat16_compute_stays_close_to_float32(converted):
  model, params = converted
  tokens, mask, decoder_inputs = _inputs()
  full = _forward(model, params, tokens, mask, decoder_inputs)
  half = _forward(T5(model.cfg.replace(dtype="bfloat16")), params, tokens, mask, decoder_inputs)
  assert half.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(half - full))) < 5e-2 * float(jnp.max(jnp.abs(full)))


@pytest.fixture(scope="module")
def scanned(hf_model):
  """The converted model with `scan_layers`: its parameters (layers stacked) straight from the
  HF state dict."""
  cfg = hf_convert.config_from_hf(hf_model.config).replace(scan_layers=True)
  return T5(cfg), hf_convert.params_from_hf_state_dict(hf_model.state_dict(), cfg)


def test_scanned_model_equals_transformers(hf_model, scanned):
  """Forward logits and incremental decoding of the scanned layout, as for the unrolled one."""
  _assert_forward_equals_transformers(hf_model, scanned)
  _assert_incremental_equals_transformers(hf_model, scanned)


def test_scanned_round_trip_is_exact(hf_model, converted, scanned):
  model, params = scanned
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, stack_layers(converted[1]))
  state = hf_convert.params_to_hf_state_dict(params, model.cfg)
  hf_state = hf_model.state_dict()
  assert set(state) == set(hf_state)
  for key, value in hf_state.items():
    np.testing.assert_array_equal(state[key], value.numpy(), err_msg=key)
  shapes = jax.tree_util.tree_map(
    lambda x: x.shape, nn.unbox(jax.eval_shape(init_params, model, jax.random.PRNGKey(0)))
  )
  assert jax.tree_util.tree_map(lambda x: x.shape, params) == shapes
