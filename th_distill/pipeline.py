"""The controlled experiment, stage by stage, each stage cached in the workdir.

Stage 1 (`run_stage1`, cached in `WORKDIR/stage1/`): the oracle (synthetic or a checkpoint)
samples responses to the oracle prompts; the teacher is trained on them by SFT; the student's
initial parameters are either fresh (`student.init = 'scratch'`) or an SFT on the same data
(`'sft'`). The fixed evaluation sets (oracle and teacher samples on held-out prompts) are built
here too, and the teacher's own golden distance to the oracle is recorded.

Stage 2 (`run_regime`, one directory per regime): the student is distilled from the teacher under
one data regime (`th_distill.data.regimes`), evaluated every `eval_every` steps, checkpointed
every `checkpoint_every` steps, and resumed from its latest checkpoint if the run was stopped.

Randomness: every key is `fold_in` of the config seed with a fixed purpose id (and the step), so a
run is reproducible and a resumed run sees the batches and samples an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from th_distill import checkpoints, sampling
from th_distill.config import to_t5_config
from th_distill.data import prompts as prompt_lib
from th_distill.data import regimes as regime_lib
from th_distill.metrics_io import MetricsWriter
from th_distill.models import T5, init_params
from th_distill.oracle import calibrate_oracle
from th_distill.train import (DISTILL_METRICS, Batch, create_train_state, make_distill_step,
                              make_eval_sums, make_optimizer, make_sft_step, reduce_eval_sums)

# Purpose ids folded into the seed key: one independent stream per use.
_ORACLE_INIT, _ORACLE_CALIBRATE, _ORACLE_DATA, _TEACHER_INIT, _TEACHER_TRAIN = 1, 2, 3, 4, 5
_STUDENT_INIT, _STUDENT_SFT, _EVAL_SETS, _OFFLINE_DATA, _ONLINE = 6, 7, 8, 9, 10
_TRAIN_DROPOUT, _EVAL_STUDENT, _TRAIN_PROMPT_SET = 11, 12, 13

STAGE1_SECTIONS = ("seed", "task", "prompts", "oracle", "teacher", "student.model",
                   "student.init", "student.sft_steps", "sampling")


def _key(seed: int, purpose: int) -> jax.Array:
  return jax.random.fold_in(jax.random.PRNGKey(seed), purpose)


def fingerprint(config: ml_collections.ConfigDict, sections: tuple[str, ...]) -> str:
  """Hash of the named config sections (dotted paths): what a cached stage depends on."""
  def lookup(path):
    value = config
    for part in path.split("."):
      value = value[part]
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
  text = json.dumps({s: lookup(s) for s in sections}, sort_keys=True, default=list)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_fingerprint(marker: str, expected: str) -> None:
  found = checkpoints.read_json(marker)["fingerprint"]
  if found != expected:
    raise ValueError(f"{marker} was written by a different configuration (fingerprint {found}, "
                     f"this run {expected}); use a fresh --workdir or restore the old config.")


@dataclasses.dataclass(frozen=True)
class Models:
  oracle: T5
  teacher: T5
  student: T5

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "Models":
    return cls(*(T5(to_t5_config(config[name].model)) for name in ("oracle", "teacher", "student")))


def make_sampler(model: T5, config: ml_collections.ConfigDict) -> regime_lib.SampleFn:
  """`fn(params, prompts [B, Li], rng) -> (tokens [B, Lt], mask [B, Lt])` with the config's
  sampling settings and response length."""
  settings = dict(max_length=config.task.response_length, temperature=config.sampling.temperature,
                  top_k=config.sampling.top_k, top_p=config.sampling.top_p)

  def fn(params, prompts, rng):
    out = sampling.sample(model, params, prompts, rng, **settings)
    return out.tokens, out.mask.astype(jnp.float32)

  return fn


def prompt_pools(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """Disjoint prompt pools {'oracle', 'distill', 'eval'}: [size, prompt_length] int32 each."""
  sizes = dict(oracle=config.prompts.num_oracle, distill=config.prompts.num_distill,
               eval=config.prompts.num_eval)
  task = config.task
  pool = prompt_lib.zipf_prompts(config.seed, sum(sizes.values()), task.prompt_length,
                                 task.vocab_size, task.zipf_exponent)
  return prompt_lib.split_pools(pool, sizes)


def _as_batch(arrays: dict[str, np.ndarray]) -> Batch:
  return Batch(prompts=jnp.asarray(arrays["prompts"]), responses=jnp.asarray(arrays["responses"]),
               mask=jnp.asarray(arrays["mask"], jnp.float32))


def train_sft(model: T5, params: Any, data: dict[str, np.ndarray], section, seed: int,
              key: jax.Array, name: str) -> tuple[Any, dict[str, float]]:
  """Cross-entropy training of `params` on `data` for `section.steps` steps."""
  optimizer = make_optimizer(section.learning_rate, section.warmup_steps, section.steps,
                             section.schedule)
  state = create_train_state(params, optimizer)
  step_fn = make_sft_step(model)
  batches = regime_lib.offline_batches(data, section.batch_size, seed)
  metrics: dict[str, Any] = {}
  start = time.time()
  for step in range(section.steps):
    state, metrics = step_fn(state, batches(step), jax.random.fold_in(key, step))
    if (step + 1) % max(section.steps // 5, 1) == 0:
      logging.info("%s SFT step %d/%d loss %.4f (%.1fs)", name, step + 1, section.steps,
                   float(metrics["sft/loss"]), time.time() - start)
  return state.params, {k: float(v) for k, v in metrics.items()}


@dataclasses.dataclass
class Stage1:
  oracle_params: Any
  teacher_params: Any
  student_init_params: Any
  eval_sets: dict[str, dict[str, np.ndarray]]  # 'oracle' / 'teacher' samples on eval prompts
  info: dict[str, Any]


def _fresh_params(model: T5, key: jax.Array) -> Any:
  return nn.unbox(init_params(model, key))


def run_stage1(config: ml_collections.ConfigDict, workdir: str, models: Models,
               pools: dict[str, np.ndarray]) -> Stage1:
  """Oracle, oracle data, teacher SFT, student initialisation and the fixed eval sets (cached)."""
  directory = os.path.join(workdir, "stage1")
  marker = os.path.join(directory, "info.json")
  expected = fingerprint(config, STAGE1_SECTIONS)
  templates = {name: jax.eval_shape(functools.partial(_fresh_params, getattr(models, name)),
                                    jax.random.PRNGKey(0))
               for name in ("oracle", "teacher", "student")}
  if os.path.exists(marker):
    _check_fingerprint(marker, expected)
    logging.info("Stage 1: reusing %s", directory)
    return Stage1(
        oracle_params=checkpoints.load_params(os.path.join(directory, "oracle"),
                                              templates["oracle"]),
        teacher_params=checkpoints.load_params(os.path.join(directory, "teacher"),
                                               templates["teacher"]),
        student_init_params=checkpoints.load_params(os.path.join(directory, "student_init"),
                                                    templates["student"]),
        eval_sets={name: checkpoints.load_arrays(os.path.join(directory, f"eval_{name}.npz"))
                   for name in ("oracle", "teacher")},
        info=checkpoints.read_json(marker))

  os.makedirs(directory, exist_ok=True)
  seed, start = config.seed, time.time()
  info: dict[str, Any] = {"fingerprint": expected}
  sample_oracle = make_sampler(models.oracle, config)
  if config.oracle.source == "synthetic":
    oracle_params, calibration = calibrate_oracle(
        models.oracle, _fresh_params(models.oracle, _key(seed, _ORACLE_INIT)), sample_oracle,
        jnp.asarray(pools["eval"][:256]), _key(seed, _ORACLE_CALIBRATE),
        config.oracle.target_entropy, config.oracle.weight_scale)
    info["oracle"] = calibration
    logging.info("Stage 1: synthetic oracle, logit scale %.3f, entropy %.3f nats/token",
                 calibration["logit_scale"], calibration["entropy"])
  else:
    from th_distill.models import hf_convert  # optional dependency path (safetensors)
    _, oracle_params = hf_convert.load_hf_checkpoint(config.oracle.checkpoint)
    info["oracle"] = {"checkpoint": config.oracle.checkpoint}

  oracle_data = regime_lib.build_offline(sample_oracle, oracle_params, pools["oracle"], 1,
                                         _key(seed, _ORACLE_DATA))
  teacher_params, info["teacher_sft"] = train_sft(
      models.teacher, _fresh_params(models.teacher, _key(seed, _TEACHER_INIT)), oracle_data,
      config.teacher, seed, _key(seed, _TEACHER_TRAIN), "teacher")
  student_params = _fresh_params(models.student, _key(seed, _STUDENT_INIT))
  if config.student.init == "sft":
    sft = config.student.copy_and_resolve_references()
    sft.steps = config.student.sft_steps
    student_params, info["student_sft"] = train_sft(models.student, student_params, oracle_data,
                                                     sft, seed, _key(seed, _STUDENT_SFT),
                                                     "student")
  eval_key = _key(seed, _EVAL_SETS)
  eval_sets = {
      "oracle": regime_lib.build_offline(sample_oracle, oracle_params, pools["eval"], 1,
                                         jax.random.fold_in(eval_key, 0)),
      "teacher": regime_lib.build_offline(make_sampler(models.teacher, config), teacher_params,
                                          pools["eval"], 1, jax.random.fold_in(eval_key, 1)),
  }
  # The teacher's own distance to the oracle: how imperfect the teacher is.
  teacher_vs_oracle = make_eval_sums(models.teacher, models.teacher, models.oracle)
  for source, data in eval_sets.items():
    sums = teacher_vs_oracle(teacher_params, teacher_params, oracle_params, _as_batch(data))
    for name, value in reduce_eval_sums(sums, f"eval_{source}").items():
      if "/golden/" in name:
        info[f"teacher/golden/{name.split('/')[-1]}@{source}_samples"] = value
  logging.info("Stage 1: teacher golden fkl %.3f (on oracle samples), %.1fs",
               info["teacher/golden/fkl@oracle_samples"], time.time() - start)

  for name, params in (("oracle", oracle_params), ("teacher", teacher_params),
                       ("student_init", student_params)):
    checkpoints.save_params(os.path.join(directory, name), params)
  checkpoints.save_arrays(os.path.join(directory, "oracle_data.npz"), oracle_data)
  for name, data in eval_sets.items():
    checkpoints.save_arrays(os.path.join(directory, f"eval_{name}.npz"), data)
  info["seconds"] = time.time() - start
  checkpoints.write_json(marker, info)
  return Stage1(oracle_params, teacher_params, student_params, eval_sets, info)


def offline_dataset(config: ml_collections.ConfigDict, workdir: str, models: Models,
                    stage1: Stage1, pools: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The fixed N x k teacher-generated dataset, built once into `WORKDIR/offline_dataset.npz`."""
  path = os.path.join(workdir, "offline_dataset.npz")
  expected = fingerprint(config, STAGE1_SECTIONS + ("offline",))
  if os.path.exists(path):
    data = checkpoints.load_arrays(path)
    if str(data["fingerprint"]) == expected:
      return data
    raise ValueError(f"{path} was built by a different configuration; use a fresh --workdir.")
  data = regime_lib.build_offline(
      make_sampler(models.teacher, config), stage1.teacher_params,
      pools["distill"][:config.offline.num_prompts], config.offline.generations_per_prompt,
      _key(config.seed, _OFFLINE_DATA))
  data["fingerprint"] = np.asarray(expected)
  checkpoints.save_arrays(path, data)
  return data


def regime_dir(workdir: str, regime: str) -> str:
  return os.path.join(workdir, regime)


def run_regime(config: ml_collections.ConfigDict, workdir: str, regime: str, models: Models,
               stage1: Stage1, pools: dict[str, np.ndarray], is_main_process: bool = True) -> None:
  """Distils the student under `regime`, logging to `WORKDIR/<regime>/` (resumable)."""
  directory = regime_dir(workdir, regime)
  marker = os.path.join(directory, "done.json")
  expected = fingerprint(config, tuple(k for k in config.keys() if k != "regimes"))
  if os.path.exists(marker):
    _check_fingerprint(marker, expected)
    logging.info("%s: already finished, reusing %s", regime, directory)
    return
  seed, student = config.seed, config.student
  sample_teacher = make_sampler(models.teacher, config)
  sample_student = make_sampler(models.student, config)
  num_train = config.eval.num_train_prompts
  if regime == "offline":
    data = offline_dataset(config, workdir, models, stage1, pools)
    batch_at = regime_lib.offline_batches(data, student.batch_size, seed)
    # Training-prompt evaluation on the student's own training examples.
    train_set = {k: data[k][:num_train] for k in ("prompts", "responses", "mask")}
  else:
    batch_at = regime_lib.online_batches(
        regime, pools["distill"], student.batch_size, _key(seed, _ONLINE), sample_teacher,
        sample_student, stage1.teacher_params, config.mixture.student_fraction)
    train_set = regime_lib.build_offline(sample_teacher, stage1.teacher_params,
                                         pools["distill"][:num_train], 1,
                                         _key(seed, _TRAIN_PROMPT_SET))
  fixed_sets = {"eval_oracle": _as_batch(stage1.eval_sets["oracle"]),
                "eval_teacher": _as_batch(stage1.eval_sets["teacher"]),
                "train_teacher": _as_batch(train_set)}
  eval_prompts = jnp.asarray(pools["eval"])

  optimizer = make_optimizer(student.learning_rate, student.warmup_steps, student.steps,
                             student.schedule, student.weight_decay, student.grad_clip)
  # The checkpointed state: the train state and the running sums of the train metrics since the
  # last logged row, so a resumed run logs exactly what an uninterrupted one would.
  carry = {"state": create_train_state(stage1.student_init_params, optimizer),
           "window": {name: jnp.zeros((), jnp.float32) for name in DISTILL_METRICS + ("steps",)}}
  checkpointer = checkpoints.RunCheckpointer(os.path.join(directory, "checkpoints"))
  if checkpointer.latest_step() is not None:
    carry = checkpointer.restore_latest(carry)
  start_step = int(carry["state"].step)
  writer = MetricsWriter(directory, resume_step=start_step, enabled=is_main_process)
  distill_step = make_distill_step(models.student, models.teacher, models.oracle,
                                   config.loss.name, config.loss.beta, config.loss.normalized,
                                   config.loss.temperature)
  eval_sums = make_eval_sums(models.student, models.teacher, models.oracle)
  frozen = (stage1.teacher_params, stage1.oracle_params)

  def evaluate(student_params: Any, step: int) -> dict[str, float]:
    results = {}
    student_samples = sample_student(student_params, eval_prompts,
                                     jax.random.fold_in(_key(seed, _EVAL_STUDENT), step))
    sets = {**fixed_sets, "eval_student": Batch(eval_prompts, *student_samples)}
    for name, batch in sets.items():
      chunks = [eval_sums(student_params, *frozen, jax.tree_util.tree_map(
          lambda x: x[i:i + config.eval.batch_size], batch))
                for i in range(0, batch.prompts.shape[0], config.eval.batch_size)]
      sums = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *chunks)
      results.update(reduce_eval_sums(sums, name))
    return results

  timers = {"generate": 0.0, "train": 0.0}
  run_start = time.time()
  logging.info("%s: steps %d..%d", regime, start_step, student.steps)
  for step in range(start_step, student.steps + 1):
    state, window = carry["state"], carry["window"]
    if step % config.eval_every == 0 or step == student.steps:
      eval_start = time.time()
      row = evaluate(state.params, step)
      count = float(window["steps"])
      if count:
        row.update({k: float(v) / count for k, v in window.items()
                    if k not in ("steps", "train/tokens")})
        busy = timers["generate"] + timers["train"]
        row.update({"train/tokens": float(window["train/tokens"]),
                    "throughput/train_tokens_per_s": float(window["train/tokens"]) / max(busy, 1e-9),
                    "time/generate_s": timers["generate"], "time/train_s": timers["train"],
                    "time/eval_s": time.time() - eval_start})
        window = jax.tree_util.tree_map(jnp.zeros_like, window)
        timers = {"generate": 0.0, "train": 0.0}
      writer.write(step, row)
      done = step - start_step
      eta = (time.time() - run_start) / max(done, 1) * (student.steps - step)
      logging.info("%s step %d/%d golden %.4f proxy %.4f (ETA %.0fs)", regime, step,
                   student.steps, row["eval_oracle/golden/fkl"], row["eval_teacher/proxy/fkl"],
                   eta if done else float("nan"))
    if step == student.steps:
      break
    tic = time.time()
    batch = jax.block_until_ready(batch_at(step, state.params))
    toc = time.time()
    state, metrics = distill_step(state, *frozen, batch,
                                  jax.random.fold_in(_key(seed, _TRAIN_DROPOUT), step))
    window = {k: v + (1.0 if k == "steps" else metrics[k]) for k, v in window.items()}
    carry = jax.block_until_ready({"state": state, "window": window})
    timers["generate"] += toc - tic
    timers["train"] += time.time() - toc
    if (step + 1) % config.checkpoint_every == 0:
      checkpointer.save(step + 1, carry)
  checkpointer.save(student.steps, carry)
  checkpointer.close()
  writer.close()
  if is_main_process:
    checkpoints.write_json(marker, {"fingerprint": expected, "steps": student.steps,
                                    "seconds": time.time() - run_start})
