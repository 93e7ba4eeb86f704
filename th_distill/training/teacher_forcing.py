"""A model teacher-forced on a batch: its logits, and sums over the batch's response tokens of a
function of the student's and the references' logits, whole or a chunk of positions at a time.

The model (any `th_distill.models.interface.LanguageModel`) is teacher-forced through its
`response_logits`, so the logits at position t predict `responses[:, t]`: only response
positions reach the sums. `sequence_chunks` C computes the [B, Lt, V] logits and their sums C
chunks of positions at a time under `jax.checkpoint`, so at most [B, Lt/C, V] logits per model
are alive at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from th_distill import divergences
from th_distill.data.batch import Batch, TeacherTopK
from th_distill.models.interface import LanguageModel

Array = jax.Array
Metrics = dict[str, Array]  # a step's or an evaluation's scalars by name
# {name: (model, params)} of the references a student is measured against: 'proxy' (the
# teacher) and, with an oracle, 'golden'.
ReferenceModels = dict[str, tuple[LanguageModel, Any]]


def references(
  teacher: LanguageModel, teacher_params: Any, oracle: LanguageModel | None, oracle_params: Any
) -> ReferenceModels:
  """{'proxy': the teacher, 'golden': the oracle (left out when `oracle` is None)}."""
  refs = {"proxy": (teacher, teacher_params)}
  if oracle is not None:
    refs["golden"] = (oracle, oracle_params)
  return refs


def forward(
  model: LanguageModel, params: Any, batch: Batch, train: bool = False, rng: Array | None = None
) -> Array:
  """Teacher-forced logits [B, Lt, V] float32 of `model` on `batch` (`response_logits`)."""
  return _on_batch(model, params, "response_logits", batch, train, rng)


def _hidden(
  model: LanguageModel, params: Any, batch: Batch, train: bool = False, rng: Array | None = None
) -> Array:
  """Hidden states [B, Lt, E] before the final norm (`response_hidden`)."""
  return _on_batch(model, params, "response_hidden", batch, train, rng)


def _on_batch(
  model: LanguageModel, params: Any, method: str, batch: Batch, train: bool, rng: Array | None
) -> Array:
  """`method` of `model` on `batch`'s prompts, prompt mask and responses."""
  args = (batch.prompts, batch.prompt_mask, batch.responses)
  return _apply(model, params, method, *args, train=train, rng=rng)


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


def split_strided(tree: Any, parts: int, axis: int, field: str) -> Any:
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
  refs: ReferenceModels,
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
  xs = (
    jnp.arange(sequence_chunks),
    *split_strided(per_position, sequence_chunks, 1, "sequence_chunks"),
  )
  first = chunk(jax.tree_util.tree_map(lambda x: x[0], xs))
  rest = jax.tree_util.tree_map(lambda x: x[1:], xs)
  return jax.lax.scan(lambda totals, x: (optax.tree.add(totals, chunk(x)), None), first, rest)[0]
