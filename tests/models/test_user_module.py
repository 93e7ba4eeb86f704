"""Your own model, through the public API only: docs/api.md's custom family (a gated linear
recurrence whose decoding "cache" is its recurrent state: the interface asks for a cache of any
structure, not a KV cache), run here as written there, is the student of a short study run by
`th_distill.experiment`; `register_family` checks a family when it is registered.
"""

import dataclasses
import pathlib
import re
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from th_distill import experiment, sampling
from th_distill.config import base_config
from th_distill.models import (
  FAMILIES,
  MODULES,
  ModelConfig,
  init_params,
  module_of,
  register_family,
)
from th_distill.models.families import missing_members
from th_distill.models.interface import LanguageModel
from th_distill.models.tokens import SpecialTokens
from th_distill.observing.metrics_io import read_metrics

API = pathlib.Path(__file__).resolve().parents[2] / "docs" / "api.md"


def docs_family() -> dict:
  """The namespace of docs/api.md's block that defines and registers the custom family."""
  blocks = re.findall(r"```python\n(.*?)```", API.read_text(), re.S)
  (block,) = [b for b in blocks if "register_family(" in b]
  namespace: dict = {"__name__": "docs_api_family"}
  exec(compile(block, str(API), "exec"), namespace)
  return namespace


DOCS = docs_family()
RecurrentConfig, Recurrent = DOCS["RecurrentConfig"], DOCS["Recurrent"]


def test_the_module_implements_the_interface():
  cfg = RecurrentConfig()
  model = module_of(cfg)
  assert isinstance(cfg, ModelConfig) and isinstance(model, LanguageModel)
  assert FAMILIES["recurrent"] is RecurrentConfig and MODULES["recurrent"] is Recurrent
  assert cfg.describe() == "recurrent, d_model 16"  # ModelConfig's defaults
  assert cfg.generation_flops(4, 6) == cfg.forward_flops(4, 6) == 2 * 6 * 16 * 16
  params = nn.unbox(init_params(model, jax.random.PRNGKey(0)))
  prompts = jnp.array([[3, 4, 0, 5], [0, 0, 7, 8]])
  mask = prompts != 0  # the filler is 0 here
  never_stop = SpecialTokens(pad_id=0, stop_ids=())
  out = sampling.sample(
    model, params, prompts, mask, jax.random.PRNGKey(1), max_length=6, tokens=never_stop
  )
  logits = model.apply({"params": params}, prompts, mask, out.tokens, method="response_logits")
  logprobs = jnp.take_along_axis(jax.nn.log_softmax(logits), out.tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(out.logprobs, logprobs, atol=1e-5)


@pytest.mark.slow
def test_a_user_module_is_the_student_of_a_short_study(tmp_path):
  c = base_config()
  c.task.update(vocab_size=16, prompt_length=4, response_length=4)
  c.prompts.update(num_oracle=64, num_distill=32, num_eval=16)
  small = dict(vocab_size=16, d_model=16, d_kv=4, d_ff=32, num_heads=2)
  for name in ("oracle", "teacher"):
    c[name].model.update(**small, num_encoder_layers=1, num_decoder_layers=1)
  c.oracle.target_entropy = 1.5
  c.student.model = ml_collections.ConfigDict(
    {"family": "recurrent", **dataclasses.asdict(RecurrentConfig())}
  )
  c.teacher.update(steps=5, batch_size=8)
  c.student.update(steps=6, sft_steps=3, batch_size=8)
  c.offline.update(num_prompts=8, generations_per_prompt=2)
  c.eval.update(num_train_prompts=8, batch_size=8)
  c.update(
    eval_every=3, eval_log_points=0, checkpoint_every=4, regimes=("offline", "online_student")
  )
  summary = experiment.run(c, str(tmp_path))
  for regime in ("offline", "online_student"):
    rows = read_metrics(str(tmp_path / regime / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [0, 3, 6], regime
    assert all(np.isfinite(r["eval_oracle/golden/fkl"]) for r in rows), regime
    assert rows[0]["eval_oracle/golden/fkl"] != rows[-1]["eval_oracle/golden/fkl"]  # it learnt
    assert summary["regimes"][regime]["final_step"] == 6
  assert (tmp_path / "report.md").exists() and (tmp_path / "summary.json").exists()


def test_register_family_names_every_missing_member_at_once():
  @dataclasses.dataclass(frozen=True)
  class Half:  # no ModelConfig base: no defaults either
    family = "test_half"
    vocab_size: int = 16
    dtype: str = "float32"
    param_dtype: str = "float32"

    def forward_flops(self, input_length, target_length):
      return 0.0

  class HalfModel(nn.Module):
    cfg: Half

    def response_logits(self, prompts, responses, train=False):
      return jnp.zeros(responses.shape + (16,))

  message = (
    "Model family 'test_half' lacks Half.d_model, Half.describe(), Half.generation_flops(), "
    "Half.activation_bytes(), Half.working_set_bytes(), Half.kv_cache_bytes(), "
    "HalfModel.__call__(), HalfModel.response_hidden(), HalfModel.logits_from_hidden(), "
    "HalfModel.start_decode(), HalfModel.decode_step(), HalfModel.extend_cache() (the "
    "protocols of th_distill.models.interface; subclass ModelConfig for its defaults)."
  )
  with pytest.raises(ValueError) as e:
    register_family(Half, HalfModel)
  assert str(e.value) == message
  assert "test_half" not in FAMILIES and "test_half" not in MODULES
  for name in ("t5", "decoder"):  # the built-in families are complete by the same check
    assert missing_members(FAMILIES[name], MODULES[name]) == [], name


def test_register_family_refuses_what_it_cannot_use():
  @dataclasses.dataclass
  class Mutable(ModelConfig):  # not hashable: a compiled program cannot take it as static
    family = "test_mutable"

  with pytest.raises(ValueError, match="Mutable must be a frozen dataclass"):
    register_family(Mutable, Recurrent)
  with pytest.raises(ValueError, match="is not a flax.linen.Module"):
    register_family(RecurrentConfig, object)
  nameless = dataclasses.make_dataclass("Nameless", [("d_model", int)], frozen=True)
  with pytest.raises(ValueError, match="Nameless needs a class attribute `family`"):
    register_family(nameless, Recurrent)


def test_registering_a_family_again_replaces_it_with_a_warning():
  @dataclasses.dataclass(frozen=True)
  class Again(RecurrentConfig):
    family = "test_again"

  register_family(Again, Recurrent)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    register_family(Again, Recurrent)  # the same classes: nothing replaced, no warning
  Again2 = dataclasses.make_dataclass("Again2", [], bases=(Again,), frozen=True)
  with pytest.warns(UserWarning, match="'test_again' registered again: Again and Recurrent "):
    register_family(Again2, Recurrent)
  assert FAMILIES["test_again"] is Again2
  del FAMILIES["test_again"], MODULES["test_again"]
