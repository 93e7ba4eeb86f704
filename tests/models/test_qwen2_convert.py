"""Our decoder-only model equals Hugging Face `transformers` Qwen2 and Llama (torch, CPU) on the
same random weights: a randomly initialised model built from its config, nothing downloaded."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from th_distill import sampling
from th_distill.models import Decoder, hf_decoder, init_params, pretrained
from th_distill.models.decoder import align_prompts
from th_distill.models.tokens import SpecialTokens

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

COMMON = dict(
  vocab_size=96,
  hidden_size=32,
  intermediate_size=48,
  num_hidden_layers=3,
  num_attention_heads=4,
  num_key_value_heads=2,
  rms_norm_eps=1e-6,
  max_position_embeddings=128,
  attention_dropout=0.0,
  pad_token_id=0,
  bos_token_id=2,
  eos_token_id=1,
)
FAMILIES = {
  "qwen2": (
    transformers.Qwen2Config,
    transformers.Qwen2ForCausalLM,
    dict(tie_word_embeddings=True),
  ),
  "llama": (
    transformers.LlamaConfig,
    transformers.LlamaForCausalLM,
    dict(tie_word_embeddings=False, head_dim=16),  # head_dim != hidden / heads
  ),
}


def _hf_model(family: str):
  config_cls, model_cls, extra = FAMILIES[family]
  config = config_cls(**COMMON, **extra)
  config.rope_parameters = {"rope_type": "default", "rope_theta": 500.0}  # not the default 1e4
  torch.manual_seed(0)
  model = model_cls(config).eval()
  with torch.no_grad():  # norms start at 1 and biases at 0, which would hide a misplaced one
    for name, param in model.named_parameters():
      if "norm" in name:
        param.uniform_(0.5, 1.5)
      elif name.endswith("bias"):
        param.normal_(0.0, 0.5)
      else:
        param.normal_(0.0, 0.3)
  return model


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request):
  hf = _hf_model(request.param)
  cfg = hf_decoder.config_from_hf(hf.config)
  params = hf_decoder.params_from_hf_state_dict(hf.state_dict(), cfg)
  return request.param, hf, Decoder(cfg), params


def _tokens(batch=3, prompt=9, response=8):
  rng = np.random.default_rng(0)
  return (
    rng.integers(2, COMMON["vocab_size"], (batch, prompt)),
    rng.integers(0, COMMON["vocab_size"], (batch, response)),
  )


def test_the_config_is_read(pair):
  family, hf, model, _ = pair
  cfg = model.cfg
  assert (cfg.num_heads, cfg.num_kv_heads, cfg.num_layers, cfg.rope_theta) == (4, 2, 3, 500.0)
  assert cfg.qkv_bias == (family == "qwen2") and cfg.tie_embeddings == (family == "qwen2")
  assert cfg.d_kv == (8 if family == "qwen2" else 16)


def test_logits_equal_transformers(pair):
  _, hf, model, params = pair
  prompts, responses = _tokens()
  mask = np.ones(prompts.shape, bool)
  ours = model.apply({"params": params}, prompts, mask, responses, method="response_logits")
  with torch.no_grad():
    ids = torch.from_numpy(np.concatenate([prompts, responses], 1))
    full = hf(ids, attention_mask=torch.ones_like(ids)).logits.numpy()
  theirs = full[:, prompts.shape[1] - 1 : -1]  # the positions predicting the response
  assert float(np.max(np.abs(theirs))) > 1.0
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def _padded(prompts):
  """`prompts` with padding: row 0 left (filler 0), row 1 right (filler 1, the EOS id; we align
  it left), row 2 none; and their mask (the real lengths)."""
  prompts, mask = prompts.copy(), np.ones(prompts.shape, bool)
  mask[0, :3] = mask[1, 6:] = False
  prompts[0, :3] = 0
  prompts[1, 6:] = 1
  return prompts, mask


def _hf_inputs(prompts, mask, responses=None):
  """The rows left-aligned (padding first, as transformers expects it), followed by
  `responses`, with their attention mask and position ids (real tokens counted from 0)."""
  aligned, aligned_mask = (np.asarray(x) for x in align_prompts(prompts, mask))
  if responses is not None:
    aligned = np.concatenate([aligned, responses], 1)
    aligned_mask = np.concatenate([aligned_mask, np.ones(responses.shape, bool)], 1)
  positions = np.maximum(np.cumsum(aligned_mask, 1) - 1, 0)
  return (torch.from_numpy(x.astype(np.int64)) for x in (aligned, aligned_mask, positions))


def test_padded_prompts_equal_transformers(pair):
  """Our padded prompts (left, right, none; filler ids 0 and 1) with their mask equal
  transformers on the same rows left-padded with its attention mask and matching position ids,
  and on each row's real tokens alone."""
  _, hf, model, params = pair
  prompts, responses = _tokens()
  prompts, mask = _padded(prompts)
  ours = model.apply({"params": params}, prompts, mask, responses, method="response_logits")
  ids, attention_mask, positions = _hf_inputs(prompts, mask, responses)
  with torch.no_grad():
    batched = hf(ids, attention_mask=attention_mask, position_ids=positions).logits.numpy()
  np.testing.assert_allclose(ours, batched[:, prompts.shape[1] - 1 : -1], atol=1e-4, rtol=0)
  for row in range(3):
    real = prompts[row][mask[row]]
    ids = torch.from_numpy(np.concatenate([real, responses[row]])[None])
    with torch.no_grad():
      full = hf(ids, attention_mask=torch.ones_like(ids)).logits.numpy()[0]
    np.testing.assert_allclose(ours[row], full[len(real) - 1 : -1], atol=1e-4, rtol=0)


def test_greedy_decode_equals_transformers(pair):
  """Greedy decoding of padded prompts (`_padded`) equals transformers' `generate` on the same
  rows left-padded with its attention mask."""
  _, hf, model, params = pair
  prompts, mask = _padded(_tokens()[0])
  steps = 12
  ours = sampling.sample(
    model,
    params,
    jnp.asarray(prompts),
    jnp.asarray(mask),
    jax.random.PRNGKey(0),
    max_length=steps,
    tokens=SpecialTokens(pad_id=0, stop_ids=()),
    temperature=0.0,
  )
  ids, attention_mask, _ = _hf_inputs(prompts, mask)
  with torch.no_grad():
    generated = hf.generate(
      ids,
      attention_mask=attention_mask,
      max_new_tokens=steps,
      min_new_tokens=steps,
      do_sample=False,
      eos_token_id=None,
      pad_token_id=0,
    ).numpy()
  np.testing.assert_array_equal(ours.tokens, generated[:, prompts.shape[1] :])
  assert len(np.unique(generated[:, prompts.shape[1] :])) > 3  # not a constant sequence


def test_round_trip_and_save_pretrained(pair, tmp_path):
  family, hf, model, params = pair
  state = hf_decoder.params_to_hf_state_dict(params, model.cfg)
  hf_state = {k: v.numpy() for k, v in hf.state_dict().items()}
  assert set(state) == set(hf_state)
  for key, value in state.items():
    np.testing.assert_array_equal(value, hf_state[key], err_msg=key)
  # The converted tree is the model's own tree.
  shapes = jax.tree_util.tree_map(np.shape, nn.unbox(init_params(model, jax.random.PRNGKey(0))))
  assert jax.tree_util.tree_map(np.shape, params) == shapes
  hf.save_pretrained(tmp_path)
  checkpoint = pretrained.load_checkpoint(tmp_path)
  assert (checkpoint.config, checkpoint.model_type) == (model.cfg, family)
  jax.tree_util.tree_map(np.testing.assert_array_equal, checkpoint.params, params)
  assert pretrained.mismatches(tmp_path, model.cfg) == []
  assert pretrained.mismatches(tmp_path, model.cfg.replace(num_layers=2)) == [
    f"model.num_layers: 2, but 3 in {tmp_path}"
  ]


def test_what_does_not_fit_is_named(pair):
  _, hf, model, params = pair
  state = dict(hf.state_dict())
  state.pop("model.layers.1.mlp.up_proj.weight")
  with pytest.raises(ValueError, match=r"lacks 1 expected key.*layers\.1\.mlp\.up_proj"):
    hf_decoder.params_from_hf_state_dict(state, model.cfg)
  state = dict(hf.state_dict(), **{"model.extra.weight": np.zeros(3)})
  with pytest.raises(ValueError, match="unexpected key.*model.extra.weight"):
    hf_decoder.params_from_hf_state_dict(state, model.cfg)
  state = dict(hf.state_dict(), **{"model.norm.weight": np.zeros(5)})
  with pytest.raises(ValueError, match=r"model.norm.weight: shape \(5,\), expected \(32,\)"):
    hf_decoder.params_from_hf_state_dict(state, model.cfg)
  with pytest.raises(ValueError, match="hidden_act"):
    hf_decoder.config_from_hf({**hf.config.to_dict(), "hidden_act": "gelu"})
  with pytest.raises(ValueError, match="model_type"):
    hf_decoder.config_from_hf({**hf.config.to_dict(), "model_type": "gemma"})
