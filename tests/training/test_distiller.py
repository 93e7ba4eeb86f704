"""The Distiller without the command line: a model family defined here (a bigram model) is
distilled on batches made here, given as a list, a generator and a sampling function; the first
step's divergence is checked against float64 numpy, golden metrics appear with an oracle only, a
hook fires every N steps, and a run resumed from its checkpoint ends where an uninterrupted one
does."""

import dataclasses
import os
import pathlib
import re
import warnings
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from th_distill.data.batch import Batch
from th_distill.detection import DetectorSettings
from th_distill.models import FAMILIES, MODULES, ModelConfig, init_params, register_family
from th_distill.observing.metrics_io import read_metrics
from th_distill.training.distiller import Distiller
from th_distill.training.train_data import as_batch

API = pathlib.Path(__file__).resolve().parents[2] / "docs" / "api.md"
V, LI, LT, B = 8, 3, 5, 4


@dataclasses.dataclass(frozen=True)
class BigramConfig(ModelConfig):
  """logits_t = tanh(embedding[x_{t-1}]) kernel, x_{-1} the prompt's last real token."""

  family: ClassVar[str] = "test_bigram"
  vocab_size: int = V
  d_model: int = 4
  dtype: str = "float32"
  param_dtype: str = "float32"

  def forward_flops(self, input_length, target_length):
    return float(2 * target_length * self.d_model * self.vocab_size)

  def activation_bytes(self, rows, prompt_length, response_length, model_split):
    return 4.0 * rows * response_length * (self.d_model + self.vocab_size)

  def working_set_bytes(self, rows, prompt_length, response_length, model_split):
    return 4.0 * rows * self.vocab_size

  def kv_cache_bytes(self, rows, prompt_length, response_length, model_split):
    return 4.0 * rows


class Bigram(nn.Module):
  cfg: BigramConfig

  def setup(self):
    v, e = self.cfg.vocab_size, self.cfg.d_model
    axes = nn.with_logical_partitioning
    self.embedding = self.param(
      "embedding", axes(nn.initializers.normal(1.0), ("vocab", "embed")), (v, e)
    )
    self.kernel = self.param(
      "kernel", axes(nn.initializers.normal(1.0), ("embed", "vocab")), (e, v)
    )

  def _last_prompt_token(self, prompts, prompt_mask):
    last = prompts.shape[1] - 1 - jnp.argmax(prompt_mask[:, ::-1], axis=1)
    return jnp.take_along_axis(prompts, last[:, None], axis=1)[:, 0]

  def response_hidden(self, prompts, prompt_mask, responses, train=False):
    first = self._last_prompt_token(prompts, prompt_mask)[:, None]
    return self.embedding[jnp.concatenate([first, responses[:, :-1]], axis=1)]

  def logits_from_hidden(self, hidden, train=False):
    return jnp.tanh(hidden) @ self.kernel

  def response_logits(self, prompts, prompt_mask, responses, train=False):
    return self.logits_from_hidden(self.response_hidden(prompts, prompt_mask, responses))

  def __call__(self, prompts, prompt_mask, responses, train=False):
    return self.response_logits(prompts, prompt_mask, responses, train)

  def start_decode(self, prompts, prompt_mask, max_decode_length):
    return self._last_prompt_token(prompts, prompt_mask), {}

  def decode_step(self, token, cache):
    return self.logits_from_hidden(self.embedding[token]), cache

  @staticmethod
  def extend_cache(cache, max_decode_length):
    return cache


register_family(BigramConfig, Bigram)
STUDENT, TEACHER = Bigram(BigramConfig(d_model=4)), Bigram(BigramConfig(d_model=8))


def params_of(model, seed):
  return nn.unbox(init_params(model, jax.random.PRNGKey(seed)))


def make_batches(count, seed=0):
  """`count` batches of random prompts (1 to LI real tokens) and responses (2 to LT real)."""
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(count):
    prompt_lengths, lengths = rng.integers(1, LI + 1, B), rng.integers(2, LT + 1, B)
    batches.append(
      Batch(
        rng.integers(0, V, (B, LI)).astype(np.int32),
        np.arange(LI)[None] < prompt_lengths[:, None],
        rng.integers(0, V, (B, LT)).astype(np.int32),
        (np.arange(LT)[None] < lengths[:, None]).astype(np.float32),
      )
    )
  return batches


def distiller(oracle=True, **kwargs):
  return Distiller(
    STUDENT,
    TEACHER,
    optax.adam(3e-2),
    student_params=params_of(STUDENT, 0),
    teacher_params=params_of(TEACHER, 1),
    oracle=TEACHER if oracle else None,
    oracle_params=params_of(TEACHER, 2) if oracle else None,
    **kwargs,
  )


def numpy_logits(params, batch):
  """The bigram's logits in float64 numpy."""
  embedding, kernel = (np.asarray(params[k], np.float64) for k in ("embedding", "kernel"))
  last = LI - 1 - np.argmax(batch.prompt_mask[:, ::-1], axis=1)
  first = batch.prompts[np.arange(B), last][:, None]
  previous = np.concatenate([first, batch.responses[:, :-1]], axis=1)
  return np.tanh(embedding[previous]) @ kernel


def log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_the_first_steps_divergence_is_numpys_float64_one():
  batch = make_batches(1)[0]
  seen = {}
  distiller(oracle=False).add_hook(lambda step, params, metrics: seen.update(metrics)).train(
    [batch], 1
  )
  t = log_softmax(numpy_logits(params_of(TEACHER, 1), batch))
  s = log_softmax(numpy_logits(params_of(STUDENT, 0), batch))
  fkl = (np.exp(t) * (t - s)).sum(-1)
  expected = (fkl * batch.mask).sum() / batch.mask.sum()
  assert seen["train/proxy/fkl"] == pytest.approx(expected, rel=1e-5)
  assert seen["train/loss"] == seen["train/proxy/fkl"]  # the loss is fkl
  assert seen["train/tokens"] == batch.mask.sum()


def test_it_learns_with_golden_metrics_only_given_an_oracle():
  batches, held_out = make_batches(4), make_batches(1, seed=9)[0]
  for oracle in (True, False):
    rows = distiller(oracle).evaluate_on(held_out, every=5).train(batches, 10)
    assert [r["step"] for r in rows] == [0, 5, 10]
    assert rows[-1]["eval/proxy/fkl"] < 0.8 * rows[0]["eval/proxy/fkl"]
    assert rows[-1]["train/proxy/fkl"] < rows[1]["train/proxy/fkl"]
    golden = {name for row in rows for name in row if "golden" in name or "oracle" in name}
    assert bool(golden) == oracle
    if oracle:
      assert {"eval/golden/fkl", "train/golden/fkl", "eval/entropy/oracle"} <= golden


def test_a_hook_fires_every_n_steps_and_the_detector_watches_the_rows():
  fired = []
  d = distiller().evaluate_on(make_batches(1, seed=9)[0], every=2)
  d.watch(DetectorSettings(min_step=0, min_fit_points=3))
  rows = d.add_hook(lambda step, params, metrics: fired.append(step), every=3).train(
    make_batches(3), 10
  )
  assert fired == [3, 6, 9]
  assert all("detector/fired" in row for row in rows)
  assert d.monitor.result is not None and len(d.monitor.result.steps) == len(rows)


def test_the_data_forms_give_the_same_student():
  batches = make_batches(3)
  finals = []
  for data in (
    batches,
    (batches[i % 3] for i in range(4)),
    lambda step, params: {
      k: getattr(batches[step % 3], k) for k in ("prompts", "prompt_mask", "responses", "mask")
    },
  ):
    d = distiller(oracle=False)
    d.train(data, 4)
    finals.append(d.params)
  for final in finals[1:]:
    jax.tree_util.tree_map(np.testing.assert_array_equal, finals[0], final)


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
  batches, held_out = make_batches(4), make_batches(1, seed=9)[0]
  whole = distiller(workdir=str(tmp_path / "whole"), checkpoint_every=3)
  whole.evaluate_on(held_out, every=2).train(batches, 10)
  first = distiller(workdir=str(tmp_path / "cut"), checkpoint_every=3)
  first.evaluate_on(held_out, every=2).train(batches, 6)
  again = distiller(workdir=str(tmp_path / "cut"), checkpoint_every=3)
  rows = again.evaluate_on(held_out, every=2).train(iter(batches * 3), 10)  # resumes at 6
  jax.tree_util.tree_map(np.testing.assert_array_equal, whole.params, again.params)
  written = read_metrics(str(tmp_path / "cut" / "metrics.jsonl"))
  assert [r["step"] for r in written] == [r["step"] for r in rows] == [0, 2, 4, 6, 8, 10]
  for a, b in zip(read_metrics(str(tmp_path / "whole" / "metrics.jsonl")), written):
    assert {k: v for k, v in a.items() if not k.startswith(("time/", "throughput/"))} == {
      k: v for k, v in b.items() if not k.startswith(("time/", "throughput/"))
    }


def test_bad_data_is_named_in_one_line():
  batch = make_batches(1)[0]
  with pytest.raises(ValueError, match="A batch lacks mask"):
    as_batch(
      {"prompts": batch.prompts, "prompt_mask": batch.prompt_mask, "responses": batch.responses}
    )
  with pytest.raises(ValueError, match="responses and mask must both be"):
    as_batch(dataclasses.replace(batch, mask=batch.mask[:, :-1]))
  with pytest.raises(TypeError, match="one batch: pass"):
    distiller().train(batch, 2)
  with pytest.raises(ValueError, match="The batches ran out at step 2"):
    distiller(oracle=False).train(iter(make_batches(2)), 4)
  with pytest.raises(ValueError, match="loss.name: 'kl' is not one of"):
    distiller(loss="kl")
  with pytest.raises(ValueError, match="evaluate_on: every must be >= 1"):
    distiller().evaluate_on(batch, every=0)
  with pytest.raises(ValueError, match="oracle and oracle_params"):
    Distiller(
      STUDENT, TEACHER, optax.adam(1e-3), student_params={}, teacher_params={}, oracle=TEACHER
    )


def test_the_docs_example_runs_as_written(tmp_path, capsys):
  """docs/api.md's Distiller block, after its custom family's block (that family's
  registration is put back as it was afterwards: tests/models/test_user_module.py holds it)."""
  blocks = re.findall(r"```python\n(.*?)```", API.read_text(), re.S)
  (family,) = [b for b in blocks if "register_family(" in b]
  (example,) = [b for b in blocks if "Distiller(" in b]
  assert example.count('"/tmp/my_distill"') == 2
  before = FAMILIES.get("recurrent"), MODULES.get("recurrent")
  namespace = {"__name__": "docs_api_distiller"}
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # the family registered again
      exec(compile(family, str(API), "exec"), namespace)
    exec(compile(example.replace("/tmp/my_distill", str(tmp_path)), str(API), "exec"), namespace)
  finally:
    for table, old in zip((FAMILIES, MODULES), before):
      if old is None:
        table.pop("recurrent", None)
      else:
        table["recurrent"] = old
  rows = namespace["rows"]
  assert [r["step"] for r in rows] == [0, 10, 20, 30, 40, 50]
  assert rows[-1]["eval/golden/fkl"] > 0 and rows[-1]["eval/proxy/fkl"] < rows[0]["eval/proxy/fkl"]
  assert (tmp_path / "metrics.jsonl").exists() and os.listdir(tmp_path / "checkpoints")
  printed = capsys.readouterr().out.splitlines()
  assert [line.split()[0] for line in printed[:2]] == ["25", "50"]
