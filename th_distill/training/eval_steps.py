"""The evaluator's step functions: sums over a batch's response tokens of the student's
divergences to the references and of each model's next-token entropy (`eval_sums`, or
`eval_sums_against` the references' logits computed once for a fixed set), and their per-token
and per-sequence means (`reduce_eval_sums`); metric names in docs/metrics.md."""

from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp

from th_distill import divergences
from th_distill.data.batch import Batch, TeacherTopK
from th_distill.models.interface import LanguageModel
from th_distill.observing.metric_names import PER_SEQUENCE, REFERENCE_MODELS
from th_distill.training.teacher_forcing import (
  Array,
  Metrics,
  divergence_totals,
  forward,
  references,
  token_sums,
)


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
  refs = references(teacher, teacher_params, oracle, oracle_params)
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
