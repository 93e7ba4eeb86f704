"""th_distill side by side with its PyTorch peers, and against the machine's matmul ceiling.

  python bench/peers.py [--repeats 5] [--json peers.json] [--quick]

Peers, on identical random T5 v1.1 weights (ours converted with `th_distill.models.hf_convert`):
- sampling: `sample` vs `transformers` `generate(do_sample=True, use_cache=True)`, both forced to
  the full length (no EOS stop, top-k/top-p off, temperature 1); new tokens/s.
- distillation step: our jitted `distill_step` (generalised JSD, beta 0.5, AdamW) vs a PyTorch step
  in TRL's GKD style (teacher forward without grad, student forward/backward, TRL's generalised
  JSD formula, AdamW); target tokens/s and achieved FLOP/s (th_distill/flops.py).
- ceiling: a 2048 x 2048 float32 matmul, jitted JAX and torch; GFLOP/s.
Before any timing each pair is checked to compute the same function on the benchmark shapes: the
log-probs of our samples under the torch model, and the loss and gradient norm of one step.
Candidates are timed in turns (A B A B ...) after warm-up; medians. `--quick` runs the tiny
shapes once (a smoke run).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
import transformers

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import NEVER_STOP, interleaved_medians  # noqa: E402
from th_distill.config.settings import make_optimizer  # noqa: E402
from th_distill.models import T5, hf_convert, init_params, shift_right, t5_config  # noqa: E402
from th_distill.models.config import T5Config  # noqa: E402
from th_distill.planning.flops import distill_flops, generation_flops  # noqa: E402
from th_distill.sampling import sample  # noqa: E402
from th_distill.training.steps import Batch, create_train_state, make_distill_step  # noqa: E402

BETA, LEARNING_RATE = 0.5, 1e-4
Row = dict[str, Any]


def torch_t5(cfg: T5Config, params: Any) -> transformers.T5ForConditionalGeneration:
  """The `transformers` T5 v1.1 computing the same function as `T5(cfg)` with `params`."""
  hf_cfg = transformers.T5Config(
    vocab_size=cfg.vocab_size,
    d_model=cfg.d_model,
    d_kv=cfg.d_kv,
    d_ff=cfg.d_ff,
    num_heads=cfg.num_heads,
    num_layers=cfg.num_encoder_layers,
    num_decoder_layers=cfg.num_decoder_layers,
    relative_attention_num_buckets=cfg.relative_attention_num_buckets,
    relative_attention_max_distance=cfg.relative_attention_max_distance,
    layer_norm_epsilon=cfg.layer_norm_eps,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    dropout_rate=0.0,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
  )
  model = transformers.T5ForConditionalGeneration(hf_cfg)
  # transformers >= 5 build the output layer tied to the embedding; T5 v1.1 has its own.
  model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.lm_head.weight))
  state = hf_convert.params_to_hf_state_dict(params, cfg)
  model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()}, strict=True)
  if hf_convert.config_from_hf(model.config) != cfg.replace(dropout_rate=0.0):
    raise AssertionError("the converted config differs from ours")
  return model.eval()


def _model(cfg: T5Config, seed: int) -> tuple[T5, Any]:
  model = T5(cfg)
  return model, nn.unbox(init_params(model, jax.random.PRNGKey(seed)))


def _tokens(seed: int, shape: tuple[int, int], vocab: int) -> np.ndarray:
  """Random tokens in [2, vocab): no padding, no EOS."""
  return np.random.default_rng(seed).integers(2, vocab, shape).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Sampling


def sampling_rows(
  name: str,
  cfg: T5Config,
  batch: int,
  input_length: int,
  lengths: list[int],
  repeats: int,
  ceiling: Callable[[], Any],
) -> list[Row]:
  """New tokens/s of `sample` and of `transformers` `generate`, one row per response length;
  `ceiling` (the JAX matmul) is timed in the same turns."""
  model, params = _model(cfg, 0)
  hf = torch_t5(cfg, params)
  prompts = _tokens(1, (batch, input_length), cfg.vocab_size)
  mask = np.ones(prompts.shape, bool)
  prompts_t = torch.from_numpy(prompts).long()
  attention = torch.from_numpy(mask).long()  # the same mask on both sides
  key = jax.random.PRNGKey(2)
  rows = []
  for length in lengths:
    kwargs = dict(max_length=length, tokens=NEVER_STOP)
    ours = sample.lower(model, params, prompts, mask, key, **kwargs).compile()
    out = ours(params, prompts, mask, key)
    _check_sample(hf, prompts_t, attention, out, f"{name} L{length}")

    def peer(length=length):
      with torch.no_grad():
        return hf.generate(
          input_ids=prompts_t,
          attention_mask=attention,
          do_sample=True,
          use_cache=True,
          max_new_tokens=length,
          min_new_tokens=length,
          top_k=0,
          top_p=1.0,
          temperature=1.0,
        )

    if peer().shape != (batch, length + 1):  # the decoder start token, then `length` new ones
      raise AssertionError("generate did not produce the full length")
    seconds = interleaved_medians(
      {"ours": lambda: ours(params, prompts, mask, key), "peer": peer, "ceiling": ceiling},  # noqa: B023 (timed in this iteration)
      repeats,
      warmup=1,
    )
    tokens = batch * length
    flops = batch * generation_flops(cfg, input_length, length)
    rows.append(
      dict(
        section="sampling",
        case=f"{name} b{batch} in{input_length} L{length}",
        unit="new tok/s",
        ours=tokens / seconds["ours"],
        peer=tokens / seconds["peer"],
        ratio=seconds["peer"] / seconds["ours"],
        ours_gflops=flops / seconds["ours"] / 1e9,
        peer_gflops=flops / seconds["peer"] / 1e9,
        ceiling_gflops=CEILING_FLOPS / seconds["ceiling"] / 1e9,
        seconds=seconds,
      )
    )
    _progress(rows[-1])
  return rows


def _check_sample(
  hf: Any, prompts: torch.Tensor, attention: torch.Tensor, out: Any, case: str
) -> None:
  """Our sampler's log-probs equal those of its tokens under the torch model (teacher forced,
  with the prompts' `attention` mask)."""
  tokens = torch.from_numpy(np.array(out.tokens)).long()
  with torch.no_grad():
    logits = hf(
      input_ids=prompts,
      attention_mask=attention,
      decoder_input_ids=torch.from_numpy(np.array(shift_right(out.tokens))).long(),
    ).logits
  theirs = torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0].numpy()
  diff = float(np.max(np.abs(theirs - np.asarray(out.logprobs))))
  if not diff < 1e-3:
    raise AssertionError(f"sampling {case}: log-probs differ from torch's by {diff}")


# ---------------------------------------------------------------------------------------------
# Distillation step


def trl_generalized_jsd(
  student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
  """TRL's GKD loss: m = beta p + (1 - beta) q in log space (logsumexp), beta KL(p || m) +
  (1 - beta) KL(q || m) per token (p teacher, q student), masked mean over tokens."""
  log_q = F.log_softmax(student_logits, dim=-1)
  log_p = F.log_softmax(teacher_logits, dim=-1)
  beta_t = torch.tensor(beta, dtype=log_q.dtype)
  log_m = torch.logsumexp(
    torch.stack([log_q + torch.log(1 - beta_t), log_p + torch.log(beta_t)]), dim=0
  )
  kl_p = F.kl_div(log_m, log_p, reduction="none", log_target=True)
  kl_q = F.kl_div(log_m, log_q, reduction="none", log_target=True)
  per_token = (beta * kl_p + (1 - beta) * kl_q).sum(-1)
  return (per_token * mask).sum() / mask.sum()


class TorchDistillStep:
  """One GKD-style step in PyTorch: teacher forward (no grad), student forward/backward, TRL's
  generalised JSD, gradient norm, AdamW. `__call__` returns (loss, grad_norm)."""

  def __init__(self, student: Any, teacher: Any, batch: Batch):
    self.student, self.teacher = student.train(), teacher.eval()
    self.optimizer = torch.optim.AdamW(student.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    self.prompts = torch.from_numpy(np.array(batch.prompts)).long()
    self.attention = torch.from_numpy(np.array(batch.prompt_mask)).long()
    self.decoder_inputs = torch.from_numpy(np.array(shift_right(batch.responses))).long()
    self.mask = torch.from_numpy(np.array(batch.mask))

  def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = dict(
      input_ids=self.prompts, attention_mask=self.attention, decoder_input_ids=self.decoder_inputs
    )
    with torch.no_grad():
      teacher_logits = self.teacher(**inputs).logits
    loss = trl_generalized_jsd(self.student(**inputs).logits, teacher_logits, self.mask, BETA)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(self.student.parameters(), math.inf)
    self.optimizer.step()
    return loss.detach(), grad_norm


def step_row(
  name: str,
  student_cfg: T5Config,
  teacher_cfg: T5Config,
  batch_size: int,
  input_length: int,
  target_length: int,
  repeats: int,
  ceiling: Callable[[], Any],
) -> Row:
  """Target tokens/s and FLOP/s of our jitted distillation step and of the torch step;
  `ceiling` (the JAX matmul) is timed in the same turns."""
  student, s_params = _model(student_cfg, 0)
  teacher, t_params = _model(teacher_cfg, 1)
  vocab = student_cfg.vocab_size
  batch = Batch(
    prompts=jnp.asarray(_tokens(2, (batch_size, input_length), vocab)),
    prompt_mask=jnp.ones((batch_size, input_length), bool),
    responses=jnp.asarray(_tokens(3, (batch_size, target_length), vocab)),
    mask=jnp.ones((batch_size, target_length), jnp.float32),
  )
  peer = TorchDistillStep(torch_t5(student_cfg, s_params), torch_t5(teacher_cfg, t_params), batch)
  step = jax.jit(make_distill_step(student, teacher, None, "jsd", beta=BETA), donate_argnums=0)
  holder = {"state": create_train_state(s_params, make_optimizer(LEARNING_RATE))}
  rng = jax.random.PRNGKey(4)

  def ours():
    holder["state"], metrics = step(holder["state"], t_params, None, batch, rng)
    return metrics

  metrics, (loss, grad_norm) = ours(), peer()  # the same function: loss and gradient norm
  checks = {
    "loss": (metrics["train/loss"], loss),
    "grad norm": (metrics["train/grad_norm"], grad_norm),
  }
  for what, (a, b) in checks.items():
    if not abs(float(a) - float(b)) <= 1e-4 * abs(float(b)) + 1e-6:
      raise AssertionError(f"step {name}: {what} {float(a)} (ours) vs {float(b)} (torch)")
  seconds = interleaved_medians({"ours": ours, "peer": peer, "ceiling": ceiling}, repeats, warmup=1)
  flops = batch_size * distill_flops(student_cfg, teacher_cfg, input_length, target_length)
  tokens = batch_size * target_length
  row = dict(
    section="step",
    case=f"{name} b{batch_size} in{input_length} t{target_length}",
    unit="target tok/s",
    ours=tokens / seconds["ours"],
    peer=tokens / seconds["peer"],
    ratio=seconds["peer"] / seconds["ours"],
    ours_gflops=flops / seconds["ours"] / 1e9,
    peer_gflops=flops / seconds["peer"] / 1e9,
    step_gflop=flops / 1e9,
    ceiling_gflops=CEILING_FLOPS / seconds["ceiling"] / 1e9,
    seconds=seconds,
  )
  _progress(row)
  return row


# ---------------------------------------------------------------------------------------------
# The ceiling


CEILING_SIZE = 2048
CEILING_FLOPS = 2.0 * CEILING_SIZE**3


def matmuls() -> dict[str, Callable[[], Any]]:
  """The ceiling: float32 [2048, 2048] x [2048, 2048] matmuls, jitted JAX ('ours') and torch."""
  a = np.random.default_rng(0).standard_normal((2, CEILING_SIZE, CEILING_SIZE), np.float32)
  ja, jb = jnp.asarray(a[0]), jnp.asarray(a[1])
  ta, tb = torch.from_numpy(a[0]), torch.from_numpy(a[1])
  matmul = jax.jit(jnp.matmul)
  return {"ours": lambda: matmul(ja, jb), "peer": lambda: ta @ tb}


def ceiling_row(candidates: dict[str, Callable[[], Any]], repeats: int) -> Row:
  """GFLOP/s of the JAX and torch matmuls, timed in turns."""
  seconds = interleaved_medians(candidates, repeats, warmup=2)
  return dict(
    section="ceiling",
    case=f"matmul {CEILING_SIZE}x{CEILING_SIZE} f32",
    unit="GFLOP/s",
    ours=CEILING_FLOPS / seconds["ours"] / 1e9,
    peer=CEILING_FLOPS / seconds["peer"] / 1e9,
    ratio=seconds["peer"] / seconds["ours"],
    seconds=seconds,
  )


# ---------------------------------------------------------------------------------------------


def _progress(row: Row) -> None:
  print(
    f"{row['section']} {row['case']}: {row['ratio']:.2f}x ({row['seconds']})",
    file=sys.stderr,
    flush=True,
  )


def _format(rows: list[Row], header: str) -> str:
  """The table; 'of JAX ceil' divides our FLOP/s by the JAX matmul's, timed in the same turns."""
  lines = [
    header,
    f"{'section':<9} {'case':<34} {'th_distill':>11} {'peer':>11} {'ratio':>7}"
    f"  {'unit':<12} {'ours GFLOP/s':>12} {'peer GFLOP/s':>12} {'of JAX ceil':>11}",
  ]
  for r in rows:
    flops = (
      (
        f"{r['ours_gflops']:>12.1f} {r['peer_gflops']:>12.1f} "
        f"{100 * r['ours_gflops'] / r['ceiling_gflops']:>10.0f}%"
      )
      if "ours_gflops" in r
      else ""
    )
    lines.append(
      f"{r['section']:<9} {r['case']:<34} {r['ours']:>11,.1f} {r['peer']:>11,.1f} "
      f"{r['ratio']:>6.2f}x  {r['unit']:<12} {flops}"
    )
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--json", default="")
  parser.add_argument("--quick", action="store_true", help="tiny shapes, one repetition")
  parser.add_argument(
    "--sections",
    nargs="+",
    default=["sampling", "step"],
    choices=["sampling", "step"],
    help="the ceiling is always measured",
  )
  args = parser.parse_args()
  threads = os.cpu_count() or 1
  torch.set_num_threads(threads)
  repeats = 1 if args.quick else args.repeats
  tiny = t5_config("tiny")
  wide = tiny.replace(d_model=2 * tiny.d_model, d_kv=2 * tiny.d_kv, d_ff=2 * tiny.d_ff)
  load = [os.getloadavg()]
  ceiling = matmuls()
  rows = [ceiling_row(ceiling, max(repeats, 3))]
  if "sampling" in args.sections:
    rows += sampling_rows(
      "tiny", tiny, 64, 16, [8] if args.quick else [32, 128, 512], repeats, ceiling["ours"]
    )
    if not args.quick:
      rows += sampling_rows(
        "small", t5_config("small"), 8, 128, [64, 128], repeats, ceiling["ours"]
      )
  if "step" in args.sections:
    rows.append(step_row("tiny<-tiny x2 wide", tiny, wide, 32, 16, 32, repeats, ceiling["ours"]))
    if not args.quick:
      rows.append(
        step_row(
          "small<-base", t5_config("small"), t5_config("base"), 8, 128, 64, repeats, ceiling["ours"]
        )
      )
  load.append(os.getloadavg())
  header = (
    f"th_distill {jax.__version__} (XLA CPU, its own thread pool over {threads} cores) vs "
    f"torch {torch.__version__} ({torch.get_num_threads()} threads) + transformers "
    f"{transformers.__version__}; float32; medians of {repeats}; load average "
    f"{load[0][0]:.2f} at start, {load[1][0]:.2f} at end"
  )
  print(_format(rows, header))
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(
        {
          "date": datetime.date.today().isoformat(),
          "command": " ".join(sys.argv),
          "header": header,
          "load_average": load,
          "rows": rows,
        },
        f,
        indent=2,
      )


if __name__ == "__main__":
  main()
