"""The one loader (`pretrained.load_checkpoint`, `mismatches`, `load_params`): a tiny random
Qwen2 saved by `transformers` with its tokenizer is read with its config, parameters and special
tokens; every refusal names the directory's `model_type`."""

import json

import jax
import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import hf_artifacts  # noqa: E402

from th_distill import config as config_lib  # noqa: E402
from th_distill.models import hf_convert, hf_decoder, pretrained, t5_config  # noqa: E402
from th_distill.models.tokens import SpecialTokens  # noqa: E402


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
  return hf_artifacts.write_qwen2(tmp_path_factory.mktemp("qwen"))


def test_a_qwen2_directory_loads_with_its_config_and_special_tokens(qwen):
  checkpoint = pretrained.load_checkpoint(qwen.directory)
  assert checkpoint.model_type == "qwen2"
  assert checkpoint.config == hf_decoder.config_from_hf(qwen.model.config)
  expected = hf_decoder.params_from_hf_state_dict(qwen.model.state_dict(), checkpoint.config)
  jax.tree_util.tree_map(np.testing.assert_array_equal, checkpoint.params, expected)
  ids = qwen.ids
  assert checkpoint.special_tokens == SpecialTokens(
    pad_id=ids["<|endoftext|>"], stop_ids=(ids["<|im_end|>"], ids["<|endoftext|>"])
  )
  assert pretrained.special_tokens(qwen.directory) == checkpoint.special_tokens
  assert pretrained.mismatches(qwen.directory, checkpoint.config) == []


def test_a_qwen2_directory_where_a_t5_is_expected_names_its_model_type(qwen, micro):
  t5 = t5_config("tiny", vocab_size=331)
  for read in (
    lambda: pretrained.mismatches(qwen.directory, t5),
    lambda: pretrained.load_params(qwen.directory, t5),
  ):
    with pytest.raises(
      ValueError, match=r"model_type = 'qwen2' .* but the model config is family 't5'"
    ):
      read()
  with pytest.raises(ValueError, match=r"model_type = 'qwen2': this is not a T5 checkpoint"):
    hf_convert.read_hf_config(qwen.directory)
  micro.teacher.checkpoint = qwen.directory
  with pytest.raises(config_lib.ConfigError, match=r"teacher.checkpoint: model_type = 'qwen2'"):
    config_lib.validate(micro)


def _config_dir(tmp_path, **config):
  directory = tmp_path / str(config.get("model_type"))
  directory.mkdir()
  (directory / "config.json").write_text(json.dumps(config))
  return directory


@pytest.mark.parametrize(
  "model_type, why",
  [
    ("gemma", "sqrt"),
    ("mistral", "sliding-window"),
    ("phi", "partial rotary"),
    ("bert", "not a model type th_distill converts"),
    (None, "not a model type"),
  ],
)
def test_other_model_types_are_refused_by_name(tmp_path, model_type, why):
  directory = _config_dir(tmp_path, model_type=model_type)
  with pytest.raises(ValueError, match=rf"model_type = {model_type!r} in .*config.json.*{why}"):
    pretrained.load_checkpoint(directory)
  with pytest.raises(ValueError, match=rf"model_type = {model_type!r}"):
    pretrained.mismatches(directory, t5_config("tiny"))


def test_a_converter_refusal_names_the_model_type(qwen, tmp_path):
  config = qwen.model.config.to_dict()
  config["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0}
  config["rope_parameters"] = {"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4}
  config["model_type"] = "llama"
  directory = _config_dir(tmp_path, **config)
  with pytest.raises(ValueError, match=r"model_type = 'llama' in .*: rope_type = 'llama3'"):
    pretrained.load_checkpoint(directory)
  with pytest.raises(FileNotFoundError, match="is not a directory"):
    pretrained.load_checkpoint(tmp_path / "absent")
