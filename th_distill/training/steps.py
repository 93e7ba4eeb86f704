"""Train state and the SFT, distillation and evaluation step functions (the optimiser is
`th_distill.config.settings.make_optimizer`).

One step each; the loops that run them are the stages' (`th_distill.stages.sft.train_sft`,
`th_distill.stages.distill.run_regime`), compiled for the mesh by `th_distill.training.programs`.

A batch is a `Batch` (defined in `th_distill.data.batch`, importable from here too) of prompts
[B, Li] int32, responses [B, Lt] int32 and a response mask [B, Lt] float32 (1 on real response
tokens, EOS included; 0 on padding). The model (any `th_distill.models.interface.LanguageModel`)
is teacher-forced through its `response_logits`, so the logits at position t predict
`responses[:, t]`: only response positions reach the losses and metrics.

Conventions (see docs/metrics.md): the distillation loss is the token-level divergence D(teacher,
student) averaged over the valid tokens of the batch; the step also logs fkl, rkl and jsd against
the teacher (`proxy`) and the oracle (`golden`).

The steps are plain traceable functions; `th_distill.partitioning.Partitioner.jit` compiles them
for a mesh (on one device, `jax.jit` of a `make_*` binder does too). Frozen models' parameters are
arguments (never closed over), so they are not baked into the compiled program.

Memory: `micro_batches` M splits the batch into M micro-batches whose gradients are accumulated
(loss and gradient equal the full batch's: sums are divided by the whole batch's token count);
`sequence_chunks` C computes the [B, Lt, V] logits and divergences C chunks of positions at a time
under `jax.checkpoint`, so at most [B/M, Lt/C, V] logits per model are alive at once.

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
from th_distill.observing.metric_names import PER_SEQUENCE, REFERENCE_MODELS
from th_distill.partitioning import Partitioner, boxed_param_shapes

Array = jax.Array
Metrics = dict[str, Array]


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


def forward(
  model: LanguageModel, params: Any, batch: Batch, train: bool = False, rng: Array | None = None
) -> Array:
  """Teacher-forced logits [B, Lt, V] float32 of `model` on `batch` (`response_logits`)."""
  return _apply(
    model,
    params,
    "response_logits",
    batch.prompts,
    batch.prompt_mask,
    batch.responses,
    train=train,
    rng=rng,
  )


def _apply(
  model: LanguageModel,
  params: Any,
  method: str,
  *args,
  train: bool = False,
  rng: Array | None = None,
) -> Array:
  rngs = {"dropout": rng} if (train and rng is not None) else None
  return model.apply({"params": params}, *args, train=train, rngs=rngs, method=method)


def _hidden(
  model: LanguageModel, params: Any, batch: Batch, train: bool = False, rng: Array | None = None
) -> Array:
  """Hidden states [B, Lt, E] before the final norm (`response_hidden`)."""
  return _apply(
    model,
    params,
    "response_hidden",
    batch.prompts,
    batch.prompt_mask,
    batch.responses,
    train=train,
    rng=rng,
  )


def _split(tree: Any, parts: int, axis: int, field: str) -> Any:
  """Splits every array of `tree` along `axis` into `parts` strided pieces stacked first:
  [..., N, ...] -> [parts, ..., N / parts, ...], piece i holding indices i, i + parts, ..., so a
  dimension sharded in contiguous blocks stays sharded without communication."""

  def one(x):
    size = x.shape[axis]
    if size % parts:
      raise ValueError(f"{field} = {parts} does not divide the dimension of size {size}.")
    x = x.reshape(*x.shape[:axis], size // parts, parts, *x.shape[axis + 1 :])
    return jnp.moveaxis(x, axis + 1, 0)

  return jax.tree_util.tree_map(one, tree)


def divergence_totals(
  student_logits: Array, refs: dict[str, Array], mask: Array
) -> dict[str, Array]:
  """Masked sums (float32 scalars) of fkl, rkl and jsd(0.5) of the student against every
  reference: `student_logits` and `refs[name]` [B, L, V], `mask` [B, L] -> {'name/div': sum}."""
  totals = {}
  for name, ref_logits in refs.items():
    for div, values in divergences.all_divergences(ref_logits, student_logits).items():
      totals[f"{name}/{div}"] = divergences.masked_sum(values, mask)
  return totals


# sums_fn(student_logits [B, L, V], {ref: logits [B, L, V]}, mask [B, L], the batch's
# `teacher_top` (positions [B, L]) or None) -> {name: scalar sum}
SumsFn = Callable[[Array, dict[str, Array], Array, TeacherTopK | None], dict[str, Array]]


def token_sums(
  sums_fn: SumsFn,
  student: LanguageModel,
  student_params: Any,
  refs: dict[str, tuple[LanguageModel, Any]],
  batch: Batch,
  *,
  sequence_chunks: int = 1,
  train: bool = False,
  rng: Array | None = None,
) -> dict[str, Array]:
  """`sums_fn` of the student's and the references' logits on `batch`.

  With `sequence_chunks` C > 1 the logits are never built whole: the decoders' hidden states are
  split into C strided chunks of positions, and each chunk's logits are computed, reduced and, in
  the backward pass, recomputed (`jax.checkpoint`) in turn. The sums are the same up to float
  rounding.
  """
  if sequence_chunks == 1:
    ref_logits = {name: forward(model, params, batch) for name, (model, params) in refs.items()}
    s_logits = forward(student, student_params, batch, train, rng)
    return sums_fn(s_logits, ref_logits, batch.mask, batch.teacher_top)

  student_hidden = _hidden(student, student_params, batch, train, rng)
  ref_hidden = {name: _hidden(model, params, batch) for name, (model, params) in refs.items()}

  @jax.checkpoint
  def chunk(inputs):
    index, s_hidden, r_hidden, mask, teacher_top = inputs
    key = None if rng is None else jax.random.fold_in(rng, index)
    s_logits = _apply(student, student_params, "logits_from_hidden", s_hidden, train=train, rng=key)
    r_logits = {
      name: _apply(model, params, "logits_from_hidden", r_hidden[name])
      for name, (model, params) in refs.items()
    }
    return sums_fn(s_logits, r_logits, mask, teacher_top)

  per_position = (student_hidden, ref_hidden, batch.mask, batch.teacher_top)
  xs = (jnp.arange(sequence_chunks), *_split(per_position, sequence_chunks, 1, "sequence_chunks"))
  first = chunk(jax.tree_util.tree_map(lambda x: x[0], xs))
  rest = jax.tree_util.tree_map(lambda x: x[1:], xs)
  return jax.lax.scan(lambda totals, x: (optax.tree.add(totals, chunk(x)), None), first, rest)[0]


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
  (`divergences.truncated_divergence` with `tail`), read from `batch.teacher_top` when the data
  stores it, else taken from the teacher's logits; the logged proxy and golden metrics stay
  full-vocabulary.
  `metrics` holds the scalars named in `metric_names.DISTILL_METRICS`: `train/loss`,
  `train/{proxy,golden}/{fkl,rkl,jsd}` (per token, on the batch's responses), `train/grad_norm` and
  `train/tokens` (valid response tokens in the batch). With `oracle=None` (no ground truth, e.g.
  benchmarks or real tasks without an oracle) the golden metrics are left out. `micro_batches`
  must divide B and `sequence_chunks` must divide Lt (see the module doc).
  """
  refs = {"proxy": (teacher, teacher_params)}
  if oracle is not None:
    refs["golden"] = (oracle, oracle_params)

  def sums_fn(s_logits, r_logits, mask, teacher_top):
    settings = dict(beta=beta, temperature=temperature, normalized=normalized)
    if teacher_top_k:
      if teacher_top is None:
        teacher_top = TeacherTopK(
          *divergences.top_k_log_probs(r_logits["proxy"], teacher_top_k, temperature)
        )
      per_token = divergences.truncated_divergence(
        loss,
        teacher_top.values,
        teacher_top.indices,
        teacher_top.tail,
        s_logits,
        mode=tail,
        **settings,
      )
    else:
      per_token = divergences.token_divergence(loss, r_logits["proxy"], s_logits, **settings)
    totals = divergence_totals(jax.lax.stop_gradient(s_logits), r_logits, mask)
    return {"loss": divergences.masked_sum(per_token, mask), **totals}

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

  micro = (jnp.arange(micro_batches), _split(batch, micro_batches, 0, "micro_batches"))
  zeros = optax.tree.zeros_like(
    jax.eval_shape(micro_sums, jax.tree_util.tree_map(lambda x: x[0], micro))
  )
  grad_sums, sums = jax.lax.scan(
    lambda acc, x: (optax.tree.add(acc, micro_sums(x)), None), zeros, micro
  )[0]
  num_tokens = jnp.maximum(batch.num_tokens, 1.0)
  grads = jax.tree_util.tree_map(lambda g: g / num_tokens, grad_sums)
  metrics = {f"train/{name}": value / num_tokens for name, value in sums.items()}
  metrics.update({"train/grad_norm": optax.tree.norm(grads), "train/tokens": batch.num_tokens})
  return state.apply_gradients(grads=grads), metrics


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


def eval_totals(
  student_logits: Array, refs: dict[str, Array], mask: Array, teacher_top: TeacherTopK | None
) -> dict[str, Array]:
  """`divergence_totals` plus the masked sums of each model's next-token entropy:
  `entropy/student`, and `entropy/teacher` / `entropy/oracle` for the `proxy` / `golden`
  references (full-vocabulary: `teacher_top` is not read)."""
  del teacher_top
  totals = divergence_totals(student_logits, refs, mask)
  totals["entropy/student"] = divergences.masked_sum(divergences.entropy(student_logits), mask)
  for name, logits in refs.items():
    totals[f"entropy/{REFERENCE_MODELS[name]}"] = divergences.masked_sum(
      divergences.entropy(logits), mask
    )
  return totals


def eval_sums(
  student_params: Any,
  teacher_params: Any,
  oracle_params: Any,
  batch: Batch,
  *,
  student: LanguageModel,
  teacher: LanguageModel,
  oracle: LanguageModel | None,
  sequence_chunks: int = 1,
) -> Metrics:
  """Totals over `batch` (float32 scalars): masked sums of `proxy/{fkl,rkl,jsd}`,
  `golden/{fkl,rkl,jsd}` and `entropy/{student,teacher,oracle}` (next-token entropy), `tokens`
  (valid tokens) and `sequences` (rows with at least one valid token; all-padding rows added to
  fill a batch do not count). Sum them over chunks, then `reduce_eval_sums` gives per-token and
  per-sequence means. With `oracle=None` the golden and oracle sums are left out."""
  refs = {"proxy": (teacher, teacher_params)}
  if oracle is not None:
    refs["golden"] = (oracle, oracle_params)
  totals = token_sums(
    eval_totals, student, student_params, refs, batch, sequence_chunks=sequence_chunks
  )
  return _with_counts(totals, batch)


def reference_logits(
  teacher_params: Any,
  oracle_params: Any,
  batch: Batch,
  *,
  teacher: LanguageModel,
  oracle: LanguageModel,
) -> dict[str, Array]:
  """{'proxy': the teacher's, 'golden': the oracle's} logits [B, Lt, V] float32 on `batch`:
  what `eval_sums` computes of the references, for a set evaluated many times
  (`eval_sums_against`)."""
  return {
    "proxy": forward(teacher, teacher_params, batch),
    "golden": forward(oracle, oracle_params, batch),
  }


def eval_sums_against(
  student_params: Any, batch: Batch, ref_logits: dict[str, Array], *, student: LanguageModel
) -> Metrics:
  """`eval_sums` (with `sequence_chunks` 1) against the references' logits on `batch` computed
  beforehand (`reference_logits`): only the student runs."""
  s_logits = forward(student, student_params, batch)
  return _with_counts(eval_totals(s_logits, ref_logits, batch.mask, None), batch)


def _with_counts(totals: Metrics, batch: Batch) -> Metrics:
  totals["tokens"] = jnp.sum(batch.mask)
  totals["sequences"] = jnp.sum(jnp.max(batch.mask, axis=-1) > 0).astype(jnp.float32)
  return totals


def make_eval_sums(
  student: LanguageModel,
  teacher: LanguageModel,
  oracle: LanguageModel | None,
  sequence_chunks: int = 1,
):
  """`eval_sums` bound to the models: `(student_params, teacher_params, oracle_params, batch)`."""
  return functools.partial(
    eval_sums, student=student, teacher=teacher, oracle=oracle, sequence_chunks=sequence_chunks
  )


def reduce_eval_sums(totals: dict[str, Any], prefix: str) -> dict[str, float]:
  """`eval_sums` totals -> {prefix/name: per-token mean, prefix/name_seq: per-sequence mean}."""
  tokens, sequences = float(totals["tokens"]), float(totals["sequences"])
  out = {}
  for name, value in totals.items():
    if name in ("tokens", "sequences"):
      continue
    out[f"{prefix}/{name}"] = float(value) / max(tokens, 1.0)
    out[f"{prefix}/{name}{PER_SEQUENCE}"] = float(value) / max(sequences, 1.0)
  return out
