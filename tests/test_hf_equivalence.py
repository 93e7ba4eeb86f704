"""Our T5 equals Hugging Face `transformers` T5 v1.1 (torch, CPU) on the same random weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from th_distill.models import T5, shift_right
from th_distill.models import hf_convert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

HF_CONFIG = dict(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_layers=2,
                 num_decoder_layers=3, relative_attention_num_buckets=8,
                 relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
                 tie_word_embeddings=False, dropout_rate=0.0, decoder_start_token_id=0,
                 pad_token_id=0, eos_token_id=1)


@pytest.fixture(scope="module")
def hf_model():
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(**HF_CONFIG)).eval()
  with torch.no_grad():  # norm scales start at 1, which would hide a missing or misplaced one
    for name, param in model.named_parameters():
      if "layer_norm" in name:
        param.uniform_(0.5, 1.5)
  # Recent `transformers` build the output layer tied to the embedding; T5 v1.1 has its own.
  model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.2)
  assert not model.config.scale_decoder_outputs
  return model


@pytest.fixture(scope="module")
def converted(hf_model):
  cfg = hf_convert.config_from_hf(hf_model.config)
  return T5(cfg), hf_convert.params_from_hf_state_dict(hf_model.state_dict(), cfg)


def _inputs(batch=3, input_length=30, target_length=9):
  rng = np.random.default_rng(0)
  tokens = rng.integers(2, HF_CONFIG["vocab_size"], (batch, input_length))
  tokens[0, 20:] = 0  # padding in the encoder input
  tokens[1, 25:] = 0
  targets = rng.integers(2, HF_CONFIG["vocab_size"], (batch, target_length))
  return tokens, targets


def _hf_logits(hf_model, tokens, targets):
  with torch.no_grad():
    out = hf_model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(tokens != 0),
                   labels=torch.tensor(targets))
  return out.logits.numpy()


def test_forward_logits_equal_transformers(hf_model, converted):
  # Prompts of 30 tokens with max_distance 20 exercise the logarithmic buckets.
  model, params = converted
  tokens, targets = _inputs()
  ours = model.apply({"params": params}, jnp.asarray(tokens), shift_right(jnp.asarray(targets)))
  np.testing.assert_allclose(ours, _hf_logits(hf_model, tokens, targets), atol=1e-4, rtol=0)


def test_incremental_decoding_equals_transformers(hf_model, converted):
  model, params = converted
  tokens, targets = _inputs()
  decoder_inputs = np.asarray(shift_right(jnp.asarray(targets)))
  variables = {"params": params}
  encoded = model.apply(variables, jnp.asarray(tokens), method=T5.encode)
  cache = model.apply(variables, encoded, jnp.asarray(tokens), targets.shape[1],
                      method=T5.init_cache)
  with torch.no_grad():
    encoder_out = hf_model.get_encoder()(input_ids=torch.tensor(tokens),
                                         attention_mask=torch.tensor(tokens != 0))
    past = None
    for t in range(targets.shape[1]):
      out = hf_model(encoder_outputs=encoder_out, attention_mask=torch.tensor(tokens != 0),
                     decoder_input_ids=torch.tensor(decoder_inputs[:, t:t + 1]),
                     past_key_values=past, use_cache=True)
      past = out.past_key_values
      logits, cache = model.apply(variables, jnp.asarray(decoder_inputs[:, t]), cache,
                                  method=T5.decode_step)
      np.testing.assert_allclose(logits, out.logits[:, 0].numpy(), atol=1e-4, rtol=0,
                                 err_msg=f"step {t}")


def test_step_by_step_decoding_equals_teacher_forcing(converted):
  model, params = converted
  tokens, targets = _inputs(target_length=12)
  variables = {"params": params}
  decoder_inputs = shift_right(jnp.asarray(targets))
  full = model.apply(variables, jnp.asarray(tokens), decoder_inputs)
  encoded = model.apply(variables, jnp.asarray(tokens), method=T5.encode)
  cache = model.apply(variables, encoded, jnp.asarray(tokens), 12, method=T5.init_cache)
  for t in range(12):
    logits, cache = model.apply(variables, decoder_inputs[:, t], cache, method=T5.decode_step)
    np.testing.assert_allclose(logits, full[:, t], atol=1e-5, rtol=0, err_msg=f"step {t}")


def test_safetensors_directory_loads_to_the_same_model(hf_model, converted, tmp_path):
  hf_model.save_pretrained(tmp_path, safe_serialization=True)
  cfg, params = hf_convert.load_hf_checkpoint(str(tmp_path))
  model, expected = converted
  assert cfg == model.cfg
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, expected)


def test_round_trip_is_exact(hf_model, converted):
  model, params = converted
  state = hf_convert.params_to_hf_state_dict(params, model.cfg)
  for key, value in hf_model.state_dict().items():
    if key in state:
      np.testing.assert_array_equal(state[key], value.numpy(), err_msg=key)


def test_errors_name_the_problem(hf_model, converted):
  model, _ = converted
  state = dict(hf_model.state_dict())
  key = "decoder.block.1.layer.1.EncDecAttention.k.weight"
  state[key] = state[key][:, :-1]
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    hf_convert.params_from_hf_state_dict(state, model.cfg)
  with pytest.raises(ValueError, match="gated-gelu"):
    hf_convert.config_from_hf({**HF_CONFIG, "feed_forward_proj": "relu"})
  with pytest.raises(ValueError, match="tie_word_embeddings"):
    hf_convert.config_from_hf({**HF_CONFIG, "tie_word_embeddings": True})
  with pytest.raises(ValueError, match="scale_decoder_outputs"):
    hf_convert.config_from_hf({**HF_CONFIG, "scale_decoder_outputs": True})
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf_convert.load_hf_checkpoint("/nonexistent/t5")


def test_bfloat16_compute_stays_close_to_float32(converted):
  model, params = converted
  tokens, targets = _inputs()
  args = (jnp.asarray(tokens), shift_right(jnp.asarray(targets)))
  full = model.apply({"params": params}, *args)
  half = T5(model.cfg.replace(dtype="bfloat16")).apply({"params": params}, *args)
  assert half.dtype == jnp.float32
  scale = float(jnp.max(jnp.abs(full)))
  assert float(jnp.max(jnp.abs(half - full))) < 5e-2 * scale
