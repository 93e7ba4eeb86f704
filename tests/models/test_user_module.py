"""Your own model, through the public API only: a Flax module defined here (not in the package),
registered as a model family, is the student of a short study run by `th_distill.experiment`.

The module is deliberately not a transformer: a gated linear recurrence whose decoding "cache"
is its recurrent state, to show that the interface (`th_distill.models.interface`) asks for a
cache of any structure, not a KV cache. docs/api.md shows the same steps.
"""

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from th_distill import experiment, sampling
from th_distill.config import base_config
from th_distill.models import init_params, register_family
from th_distill.models.interface import LanguageModel, ModelConfig
from th_distill.models.tokens import SpecialTokens
from th_distill.observing.metrics_io import read_metrics


@register_family
@dataclasses.dataclass(frozen=True)
class RecurrentConfig:
  """h_t = decay * h_{t-1} + (1 - decay) * tanh(embed(x_t)); logits_t = tanh(h_t) W."""

  family: ClassVar[str] = "test_recurrent"
  vocab_size: int = 16
  d_model: int = 16
  dtype: str = "float32"
  param_dtype: str = "float32"

  def module(self):
    return Recurrent(self)

  def describe(self) -> str:
    return f"recurrent, d_model {self.d_model}"

  def forward_flops(self, input_length: int, target_length: int) -> float:
    return float(2 * target_length * self.d_model * self.vocab_size)

  def generation_flops(self, input_length: int, target_length: int) -> float:
    return self.forward_flops(input_length, target_length)

  def activation_bytes(self, rows, prompt_length, response_length, model_split) -> float:
    return 4.0 * 3 * rows * (prompt_length + response_length) * self.d_model

  def working_set_bytes(self, rows, prompt_length, response_length, model_split) -> float:
    return 4.0 * 2 * rows * prompt_length * self.d_model

  def kv_cache_bytes(self, rows, prompt_length, response_length, model_split) -> float:
    return 4.0 * rows * self.d_model


class Recurrent(nn.Module):
  """A `LanguageModel`: teacher forcing scans the recurrence over prompt then response (prompt
  padding skipped); decoding carries the state."""

  cfg: RecurrentConfig

  def setup(self):
    v, e = self.cfg.vocab_size, self.cfg.d_model
    axes = nn.with_logical_partitioning
    self.embedding = self.param(
      "embedding", axes(nn.initializers.normal(1.0), ("vocab", "embed")), (v, e)
    )
    self.decay_logit = self.param("decay_logit", axes(nn.initializers.zeros, ("embed",)), (e,))
    self.logits_kernel = self.param(
      "logits_kernel", axes(nn.initializers.normal(e**-0.5), ("embed", "vocab")), (e, v)
    )

  def _update(self, state, token, keep):
    """One step of the recurrence; rows where `keep` is False are left as they are."""
    decay = jax.nn.sigmoid(self.decay_logit)
    new = decay * state + (1 - decay) * jnp.tanh(self.embedding[token])
    return jnp.where(keep[:, None], new, state)

  def _run(self, state, tokens, keep):
    """The states after each of `tokens` [B, L]: [B, L, E]."""
    states = []
    for t in range(tokens.shape[1]):
      state = self._update(state, tokens[:, t], keep[:, t])
      states.append(state)
    return state, jnp.stack(states, axis=1)

  def response_hidden(self, prompts, prompt_mask, responses, train=False):
    zero = jnp.zeros((prompts.shape[0], self.cfg.d_model))
    after_prompt, _ = self._run(zero, prompts, prompt_mask)
    _, later = self._run(after_prompt, responses[:, :-1], jnp.ones_like(responses[:, :-1], bool))
    return jnp.concatenate([after_prompt[:, None], later], axis=1)

  def logits_from_hidden(self, hidden, train=False):
    return jnp.tanh(hidden) @ self.logits_kernel

  def response_logits(self, prompts, prompt_mask, responses, train=False):
    return self.logits_from_hidden(self.response_hidden(prompts, prompt_mask, responses, train))

  def __call__(self, prompts, prompt_mask, responses, train=False):
    return self.response_logits(prompts, prompt_mask, responses, train)

  def start_decode(self, prompts, prompt_mask, max_decode_length):
    zero = jnp.zeros((prompts.shape[0], self.cfg.d_model))
    state, _ = self._run(zero, prompts, prompt_mask)
    first = jnp.zeros((prompts.shape[0],), jnp.int32)  # not read: step 0 only emits logits
    return first, {"state": state, "index": jnp.zeros((), jnp.int32)}

  def decode_step(self, token, cache):
    keep = jnp.broadcast_to(cache["index"] > 0, token.shape)
    state = self._update(cache["state"], token, keep)
    return self.logits_from_hidden(state), {"state": state, "index": cache["index"] + 1}

  @staticmethod
  def extend_cache(cache, max_decode_length):
    return cache  # a recurrent state does not grow


def test_the_module_implements_the_interface():
  cfg = RecurrentConfig()
  model = cfg.module()
  assert isinstance(cfg, ModelConfig) and isinstance(model, LanguageModel)
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
    {"family": "test_recurrent", **dataclasses.asdict(RecurrentConfig())}
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
