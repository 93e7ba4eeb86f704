"""Train state and the SFT and distillation step functions (the optimiser is
`th_distill.config.settings.make_optimizer`; the evaluator's are `th_distill.training.eval_steps`).

One step each; the loops that run them are the stages' (`th_distill.stages.sft.train_sft`,
`th_distill.stages.distill.run_regime`), compiled for the mesh by
`th_distill.training.program_builders`.

A batch is a `Batch` (defined in `th_distill.data.batch`, importable from here too) of prompts
[B, Li] int32, responses [B, Lt] int32 and a response mask [B, Lt] float32 (1 on real response
tokens, EOS included; 0 on padding); the models are teacher-forced on it
(`th_distill.training.teacher_forcing`). Conventions (see docs/metrics.md): the distillation loss
is the token-level divergence D(teacher, student) averaged over the valid tokens of the batch;
the step also logs fkl, rkl and jsd against the teacher (`proxy`) and the oracle (`golden`)
(`th_distill.training.distill_loss`).

The steps are plain traceable functions; `th_distill.partitioning.Partitioner.jit` compiles them
for a mesh (on one device, `jax.jit` of a `make_*` binder does too). Frozen models' parameters are
arguments (never closed over), so they are not baked into the compiled program.

Memory: `micro_batches` M splits the batch into M micro-batches whose gradients are accumulated
(loss and gradient equal the full batch's: sums are divided by the whole batch's token count);
`sequence_chunks` C computes the logits C chunks of positions at a time
(`teacher_forcing.token_sums`), so at most [B/M, Lt/C, V] logits per model are alive at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from th_distill import divergences
from th_distill.data.batch import Batch, TeacherTopK
from th_distill.models.interface import LanguageModel
from th_distill.partitioning import Partitioner, boxed_param_shapes
from th_distill.training.distill_loss import distill_sums
from th_distill.training.teacher_forcing import (
  Array,
  Metrics,
  forward,
  references,
  split_strided,
  token_sums,
)


class TrainState(train_state.TrainState):
  """Flax train state: step, params, optimiser state (`apply_fn` is unused and left None)."""


def state_shardings(partitioner: Partitioner, model: LanguageModel, optimizer: Any) -> Any:
  """Shardings of a `TrainState` of `model` under `optimizer`: the optimiser's per-parameter
  moments follow their parameter; counters are replicated."""
  boxed = jax.eval_shape(
    lambda p: TrainState.create(apply_fn=None, params=p, tx=optimizer), boxed_param_shapes(model)
  )
  return partitioner.tree_shardings(boxed)


def create_train_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
  """A fresh state on a copy of `params` (the steps donate the state, never the caller's arrays)."""
  return TrainState.create(
    apply_fn=None, params=jax.tree_util.tree_map(jnp.copy, params), tx=optimizer
  )


def _sft_loss(model: LanguageModel, params: Any, batch: Batch, rng: Array) -> tuple[Array, Array]:
  logits = forward(model, params, batch, train=True, rng=rng)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch.responses[..., None], axis=-1)[
    ..., 0
  ]
  correct = (jnp.argmax(logits, -1) == batch.responses).astype(jnp.float32)
  return (
    divergences.per_token_mean(nll, batch.mask),
    divergences.per_token_mean(correct, batch.mask),
  )


def sft_step(
  state: TrainState, batch: Batch, rng: Array, *, model: LanguageModel
) -> tuple[TrainState, Metrics]:
  """Cross-entropy step on (prompt, response) pairs; metrics `sft/{loss,accuracy,grad_norm}`."""
  (loss, accuracy), grads = jax.value_and_grad(
    lambda p: _sft_loss(model, p, batch, rng), has_aux=True
  )(state.params)
  metrics = {"sft/loss": loss, "sft/accuracy": accuracy, "sft/grad_norm": optax.tree.norm(grads)}
  return state.apply_gradients(grads=grads), metrics


def make_sft_step(
  model: LanguageModel,
) -> Callable[[TrainState, Batch, Array], tuple[TrainState, Metrics]]:
  """`sft_step` bound to `model`: (state, batch, rng) -> (state, metrics)."""
  return functools.partial(sft_step, model=model)


def distill_step(
  state: TrainState,
  teacher_params: Any,
  oracle_params: Any,
  batch: Batch,
  rng: Array,
  *,
  student: LanguageModel,
  teacher: LanguageModel,
  oracle: LanguageModel | None,
  loss: str = "fkl",
  beta: float = 0.5,
  normalized: bool = False,
  temperature: float = 1.0,
  micro_batches: int = 1,
  sequence_chunks: int = 1,
  teacher_top_k: int = 0,
  tail: str = "renormalize",
) -> tuple[TrainState, Metrics]:
  """One distillation step of the student on `batch` [B, ...].

  The loss is the per-token mean of `loss`(teacher, student) over the batch's valid tokens;
  with `teacher_top_k` K > 0, of the divergence of the teacher truncated to its top K
  (`distill_loss.distill_sums`); the logged proxy and golden metrics stay full-vocabulary.
  `metrics` holds the scalars named in `metric_names.DISTILL_METRICS`: `train/loss`,
  `train/{proxy,golden}/{fkl,rkl,jsd}` (per token, on the batch's responses), `train/grad_norm` and
  `train/tokens` (valid response tokens in the batch). With `oracle=None` (no ground truth, e.g.
  benchmarks or real tasks without an oracle) the golden metrics are left out. `micro_batches`
  must divide B and `sequence_chunks` must divide Lt (see the module doc).
  """
  refs = references(teacher, teacher_params, oracle, oracle_params)
  sums_fn = distill_sums(loss, beta, normalized, temperature, teacher_top_k, tail)

  def micro_sums(inputs):
    """(gradient sums, metric sums) of one micro-batch; divided by the batch's tokens below."""
    index, micro_batch = inputs

    def loss_fn(params):
      sums = token_sums(
        sums_fn,
        student,
        params,
        refs,
        micro_batch,
        sequence_chunks=sequence_chunks,
        train=True,
        rng=jax.random.fold_in(rng, index),
      )
      return sums["loss"], sums

    return jax.grad(loss_fn, has_aux=True)(state.params)

  grad_sums, sums = _accumulated(micro_sums, batch, micro_batches)
  num_tokens = jnp.maximum(batch.num_tokens, 1.0)
  grads = jax.tree_util.tree_map(lambda g: g / num_tokens, grad_sums)
  metrics = {f"train/{name}": value / num_tokens for name, value in sums.items()}
  metrics.update({"train/grad_norm": optax.tree.norm(grads), "train/tokens": batch.num_tokens})
  return state.apply_gradients(grads=grads), metrics


def _accumulated(micro_sums: Callable[[Any], Any], batch: Batch, micro_batches: int) -> Any:
  """The sum over the `micro_batches` strided micro-batches of `batch` of
  `micro_sums((index, micro_batch))`, added in order in a `lax.scan`."""
  micro = (jnp.arange(micro_batches), split_strided(batch, micro_batches, 0, "micro_batches"))
  zeros = optax.tree.zeros_like(
    jax.eval_shape(micro_sums, jax.tree_util.tree_map(lambda x: x[0], micro))
  )
  return jax.lax.scan(lambda acc, x: (optax.tree.add(acc, micro_sums(x)), None), zeros, micro)[0]


def make_distill_step(
  student: LanguageModel,
  teacher: LanguageModel,
  oracle: LanguageModel | None,
  loss: str = "fkl",
  beta: float = 0.5,
  normalized: bool = False,
  temperature: float = 1.0,
  micro_batches: int = 1,
  sequence_chunks: int = 1,
  teacher_top_k: int = 0,
  tail: str = "renormalize",
):
  """`distill_step` bound to the models and settings:
  `(state, teacher_params, oracle_params, batch, rng) -> (state, metrics)`."""
  divergences.get(loss)  # validates the name early
  return functools.partial(
    distill_step,
    student=student,
    teacher=teacher,
    oracle=oracle,
    loss=loss,
    beta=beta,
    normalized=normalized,
    temperature=temperature,
    micro_batches=micro_batches,
    sequence_chunks=sequence_chunks,
    teacher_top_k=teacher_top_k,
    tail=tail,
  )


def teacher_top_k(
  teacher_params: Any, batch: Batch, *, teacher: LanguageModel, k: int, temperature: float = 1.0
) -> TeacherTopK:
  """The teacher's top `k` log-probabilities at `temperature` at each response position of
  `batch` (teacher-forced): what an offline dataset of truncated teacher logits stores."""
  logits = forward(teacher, teacher_params, batch)
  return TeacherTopK(*divergences.top_k_log_probs(logits, k, temperature))
