"""Train state, optimiser, and the jitted SFT, distillation and evaluation steps.

A batch is a `Batch` of prompts [B, Li] int32, responses [B, Lt] int32 and a response mask
[B, Lt] float32 (1 on real response tokens, EOS included; 0 on padding). The decoder is
teacher-forced on `shift_right(responses)`, so the logits at position t predict `responses[:, t]`.

Conventions (see docs/metrics.md): the distillation loss is the token-level divergence D(teacher,
student) averaged over the valid tokens of the batch; the step also logs fkl, rkl and jsd against
the teacher (`proxy`) and the oracle (`golden`). Frozen models' parameters are arguments of the
jitted functions (never closed over), so they are not baked into the compiled program.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from th_distill import divergences
from th_distill.models import T5, shift_right

Array = jax.Array
Metrics = dict[str, Array]


@flax.struct.dataclass
class Batch:
  prompts: Array    # [B, Li] int32, 0 = padding
  responses: Array  # [B, Lt] int32, 0 after EOS
  mask: Array       # [B, Lt] float32, 1 on real response tokens

  @property
  def num_tokens(self) -> Array:
    return jnp.sum(self.mask)


class TrainState(train_state.TrainState):
  """Flax train state: step, params, optimiser state (`apply_fn` is unused and left None)."""


@functools.lru_cache(maxsize=None)
def make_optimizer(learning_rate: float, warmup_steps: int = 0, total_steps: int = 0,
                   schedule: str = "constant", weight_decay: float = 0.0,
                   grad_clip: float = 0.0) -> optax.GradientTransformation:
  """AdamW with linear warm-up then a constant, linear-decay or cosine schedule.

  `total_steps` is needed by the decaying schedules; `grad_clip` > 0 clips the global norm.
  Cached: equal settings give the same object, so train states built from them share compiled
  steps (the optimiser is static metadata of `TrainState`).
  """
  if schedule == "constant":
    decay = optax.constant_schedule(learning_rate)
  elif schedule == "linear":
    decay = optax.linear_schedule(learning_rate, 0.0, max(total_steps - warmup_steps, 1))
  elif schedule == "cosine":
    decay = optax.cosine_decay_schedule(learning_rate, max(total_steps - warmup_steps, 1))
  else:
    raise ValueError(f"Unknown schedule {schedule!r}; expected constant, linear or cosine.")
  lr = optax.join_schedules(
      [optax.linear_schedule(0.0, learning_rate, warmup_steps), decay], [warmup_steps]
  ) if warmup_steps > 0 else decay
  parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
  parts.append(optax.adamw(lr, weight_decay=weight_decay))
  return optax.chain(*parts)


def create_train_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
  """A fresh state on a copy of `params` (the steps donate the state, never the caller's arrays)."""
  return TrainState.create(apply_fn=None, params=jax.tree_util.tree_map(jnp.copy, params),
                           tx=optimizer)


def forward(model: T5, params: Any, batch: Batch, train: bool = False,
            rng: Array | None = None) -> Array:
  """Teacher-forced logits [B, Lt, V] float32 of `model` on `batch`."""
  rngs = {"dropout": rng} if (train and rng is not None) else None
  return model.apply({"params": params}, batch.prompts, shift_right(batch.responses),
                     train=train, rngs=rngs)


def sequence_sums(values: Array, mask: Array) -> Array:
  """Per-sequence masked sums [B] of per-token `values` [B, Lt] (padding never counts)."""
  return jnp.sum(jnp.where(mask > 0, values, 0.0), axis=-1)


def divergence_sums(ref_logits: Array, student_logits: Array, mask: Array,
                    prefix: str) -> Metrics:
  """Per-sequence sums [B] of fkl, rkl and jsd(0.5) of the student against `ref_logits`."""
  per_token = divergences.all_divergences(ref_logits, student_logits)
  return {f"{prefix}/{name}": sequence_sums(value, mask) for name, value in per_token.items()}


def _sft_loss(model: T5, params: Any, batch: Batch, rng: Array) -> tuple[Array, Array]:
  logits = forward(model, params, batch, train=True, rng=rng)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch.responses[..., None],
                             axis=-1)[..., 0]
  correct = (jnp.argmax(logits, -1) == batch.responses).astype(jnp.float32)
  return (divergences.per_token_mean(nll, batch.mask),
          divergences.per_token_mean(correct, batch.mask))


@functools.partial(jax.jit, static_argnames=("model",), donate_argnames=("state",))
def sft_step(state: TrainState, batch: Batch, rng: Array, *, model: T5
             ) -> tuple[TrainState, Metrics]:
  """Cross-entropy step on (prompt, response) pairs; metrics `sft/{loss,accuracy,grad_norm}`."""
  (loss, accuracy), grads = jax.value_and_grad(
      lambda p: _sft_loss(model, p, batch, rng), has_aux=True)(state.params)
  metrics = {"sft/loss": loss, "sft/accuracy": accuracy, "sft/grad_norm": optax.tree.norm(grads)}
  return state.apply_gradients(grads=grads), metrics


def make_sft_step(model: T5) -> Callable[[TrainState, Batch, Array], tuple[TrainState, Metrics]]:
  """`sft_step` bound to `model`: (state, batch, rng) -> (state, metrics)."""
  return functools.partial(sft_step, model=model)


DISTILL_METRICS = tuple(f"train/{ref}/{div}" for ref in ("proxy", "golden")
                        for div in ("fkl", "rkl", "jsd")) + (
                            "train/loss", "train/grad_norm", "train/tokens")


@functools.partial(jax.jit, static_argnames=("student", "teacher", "oracle", "loss", "beta",
                                             "normalized", "temperature"),
                   donate_argnames=("state",))
def distill_step(state: TrainState, teacher_params: Any, oracle_params: Any, batch: Batch,
                 rng: Array, *, student: T5, teacher: T5, oracle: T5 | None, loss: str = "fkl",
                 beta: float = 0.5, normalized: bool = False, temperature: float = 1.0
                 ) -> tuple[TrainState, Metrics]:
  """One distillation step of the student on `batch`.

  The loss is the per-token mean of `loss`(teacher, student) over the batch's valid tokens;
  `metrics` holds the scalars named in `DISTILL_METRICS`: `train/loss`,
  `train/{proxy,golden}/{fkl,rkl,jsd}` (per token, on the batch's responses), `train/grad_norm` and
  `train/tokens` (valid response tokens in the batch). With `oracle=None` (no ground truth, e.g.
  benchmarks or real tasks without an oracle) the golden metrics are left out.
  """
  teacher_logits = forward(teacher, teacher_params, batch)

  def loss_fn(params):
    logits = forward(student, params, batch, train=True, rng=rng)
    per_token = divergences.token_divergence(loss, teacher_logits, logits, beta=beta,
                                             temperature=temperature, normalized=normalized)
    return divergences.per_token_mean(per_token, batch.mask), logits

  (value, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  logits = jax.lax.stop_gradient(logits)
  sums = divergence_sums(teacher_logits, logits, batch.mask, "train/proxy")
  if oracle is not None:
    sums.update(divergence_sums(forward(oracle, oracle_params, batch), logits, batch.mask,
                                "train/golden"))
  num_tokens = jnp.maximum(batch.num_tokens, 1.0)
  metrics = {name: jnp.sum(s) / num_tokens for name, s in sums.items()}
  metrics.update({"train/loss": value, "train/grad_norm": optax.tree.norm(grads),
                  "train/tokens": batch.num_tokens})
  return state.apply_gradients(grads=grads), metrics


def make_distill_step(student: T5, teacher: T5, oracle: T5 | None, loss: str = "fkl",
                      beta: float = 0.5, normalized: bool = False, temperature: float = 1.0):
  """`distill_step` bound to the models and loss settings:
  `(state, teacher_params, oracle_params, batch, rng) -> (state, metrics)`."""
  divergences.get(loss)  # validates the name early
  return functools.partial(distill_step, student=student, teacher=teacher, oracle=oracle,
                           loss=loss, beta=beta, normalized=normalized, temperature=temperature)


@functools.partial(jax.jit, static_argnames=("student", "teacher", "oracle"))
def eval_sums(student_params: Any, teacher_params: Any, oracle_params: Any, batch: Batch, *,
              student: T5, teacher: T5, oracle: T5) -> Metrics:
  """Per-sequence sums [B] of `proxy/{fkl,rkl,jsd}` and `golden/{fkl,rkl,jsd}`, and `tokens`
  (valid tokens per sequence); `reduce_eval_sums` turns concatenated chunks into per-token and
  per-sequence means."""
  logits = forward(student, student_params, batch)
  sums = {**divergence_sums(forward(teacher, teacher_params, batch), logits, batch.mask, "proxy"),
          **divergence_sums(forward(oracle, oracle_params, batch), logits, batch.mask, "golden")}
  sums["tokens"] = jnp.sum(batch.mask, axis=-1)
  return sums


def make_eval_sums(student: T5, teacher: T5, oracle: T5):
  """`eval_sums` bound to the models: `(student_params, teacher_params, oracle_params, batch)`."""
  return functools.partial(eval_sums, student=student, teacher=teacher, oracle=oracle)


def reduce_eval_sums(sums: dict[str, Any], prefix: str) -> dict[str, float]:
  """{name: [N] per-sequence sums} -> {prefix/name: per-token mean, prefix/name_seq: per-seq mean}."""
  tokens = float(jnp.sum(sums["tokens"]))
  out = {}
  for name, values in sums.items():
    if name == "tokens":
      continue
    out[f"{prefix}/{name}"] = float(jnp.sum(values)) / max(tokens, 1.0)
    out[f"{prefix}/{name}_seq"] = float(jnp.mean(values))
  return out
