"""What one distillation step sums over a batch's response tokens: the loss D(teacher, student)
(full-vocabulary, or against the teacher truncated to its top K) and the logged fkl, rkl and jsd
of the student against every reference (see docs/metrics.md)."""

from __future__ import annotations

import jax

from th_distill import divergences
from th_distill.data.batch import TeacherTopK
from th_distill.training.teacher_forcing import SumsFn, divergence_totals


def distill_sums(
  loss: str = "fkl",
  beta: float = 0.5,
  normalized: bool = False,
  temperature: float = 1.0,
  teacher_top_k: int = 0,
  tail: str = "renormalize",
) -> SumsFn:
  """The `SumsFn` of a distillation step: {'loss': masked sum of `loss`(teacher, student) per
  token, 'proxy/fkl', ...: `divergence_totals` of the student (no gradient) against every
  reference}. With `teacher_top_k` K > 0 the loss is `divergences.truncated_divergence` (with
  `tail`) of the teacher's top K, read from the batch's `teacher_top` when the data stores it,
  else taken from the teacher's ('proxy') logits."""

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

  return sums_fn
