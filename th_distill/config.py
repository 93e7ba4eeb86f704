"""The experiment configuration: defaults, model sub-configs and validation.

`base_config()` is the complete set of keys (the embedded CPU default study); config files in
`configs/` start from it and change values, so every key a user can override on the command line
(`--config.student.steps=200`) exists and has a type. `validate(config)` checks values before any
compute and raises one `ConfigError` that lists every problem with the field name and what is
allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import os

import jax
import ml_collections

from th_distill import detector_config
from th_distill.data import prompts as prompt_lib
from th_distill.data import tasks, vocabularies
from th_distill.data.regimes import REGIMES
from th_distill.divergences import DIVERGENCES
from th_distill.errors import EX_USAGE, RunError
from th_distill.metric_names import PROXY
from th_distill.models import T5Config, pretrained, t5_config
from th_distill.partitioning import resolve_mesh_shape
from th_distill.sampling import MIN_TEMPERATURE


# Where the online regimes draw prompts: the offline arm's N prompts or the whole pool.
ONLINE_PROMPTS = ("offline", "pool")


# What a non-finite training step does: stop the run, or skip the step (keep the parameters).
ON_NONFINITE = ("stop", "skip")


class ConfigError(RunError, ValueError):
  """An invalid configuration value; the message names each offending field."""
  exit_code = EX_USAGE


def dotted_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every leaf field of `config` as a dotted path ('student.learning_rate', ...)."""
  keys = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      keys += dotted_keys(value, f"{prefix}{key}.")
    else:
      keys.append(f"{prefix}{key}")
  return keys


def suggest(name: str, candidates: list[str]) -> str:
  """'; did you mean X?' for the candidate nearest to `name` (difflib), or ''."""
  close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
  return f"; did you mean {close[0]}?" if close else ""


def model_config(size: str, **overrides) -> ml_collections.ConfigDict:
  """Every T5Config field of the named size (with overrides) as a ConfigDict."""
  return ml_collections.ConfigDict(dataclasses.asdict(t5_config(size, **overrides)))


def to_t5_config(model: ml_collections.ConfigDict) -> T5Config:
  return T5Config(**model.to_dict())


def base_config() -> ml_collections.ConfigDict:
  """The embedded default: a CPU-sized study that shows teacher hacking in minutes.

  A synthetic oracle (random T5, weights at their init scale, sharpened to 2 nats/token), a
  teacher of the same size trained by SFT on 4,096 oracle samples past its best golden distance,
  and a student of the same size initialised by SFT on the same oracle samples (the paper's
  initialisation), distilled with forward KL on N = 4,096 prompts x k = 1 teacher generation
  (about 16 epochs in 2,000 steps of batch 32); the online regimes use the same 4,096 prompts.
  On held-out prompts the offline student's golden distance turns up while its proxy keeps
  falling (docs/results.md, docs/signature_search.md)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.regimes = ("offline", "online_teacher", "online_student")
  # The task: `source` 'synthetic' (Zipf prompts over the vocabulary) or 'seqio' (a real task:
  # `name` of th_distill.data.tasks.TASKS, SentencePiece `vocabulary` path, `data_dir`).
  # vocab_size is every model's embedding size; prompts and responses are trimmed to the lengths.
  c.task = dict(source="synthetic", vocab_size=64, prompt_length=8, response_length=16,
                zipf_exponent=1.1, name="", vocabulary="", data_dir="")
  # Disjoint prompt pools: oracle data (stage 1), distillation (stage 2), held-out evaluation.
  c.prompts = dict(num_oracle=4096, num_distill=4096, num_eval=512)
  tiny = dict(vocab_size=64)
  c.oracle = dict(source="synthetic", checkpoint="", target_entropy=2.0, weight_scale=1.0,
                  model=model_config("tiny", **tiny))
  # `checkpoint`: initial weights from a local checkpoint instead of a random init ('' = random).
  c.teacher = dict(model=model_config("tiny", **tiny), checkpoint="", steps=1500, batch_size=32,
                   learning_rate=3e-3, warmup_steps=0, schedule="constant")
  c.student = dict(model=model_config("tiny", **tiny), checkpoint="", init="sft", sft_steps=500,
                   steps=2000, batch_size=32, micro_batches=1, learning_rate=1e-3, warmup_steps=0,
                   schedule="constant",
                   weight_decay=0.0, grad_clip=0.0)
  c.loss = dict(name="fkl", beta=0.5, normalized=False, temperature=1.0)
  c.sampling = dict(temperature=1.0, top_k=0, top_p=1.0)
  c.offline = dict(num_prompts=4096, generations_per_prompt=1)
  # Prompts of the online regimes: 'offline' = the offline arm's N prompts (only the responses
  # are fresh; the paper's setting), 'pool' = the whole distillation pool (prompts.num_distill).
  c.online = dict(prompts="offline")
  c.mixture = dict(student_fraction=0.5)
  c.eval = dict(num_train_prompts=256, batch_size=512)
  c.eval_every = 100
  # Extra evaluations log-spaced over [1, steps]: the early, fast part of the curves, where the
  # convergence law of the hacking detector is fitted (see th_distill.eval_schedule).
  c.eval_log_points = 30
  c.checkpoint_every = 1000
  # A distillation step with a non-finite loss or gradient norm stops the run ('stop'; its last
  # good checkpoint is kept) or is skipped ('skip': parameters and optimiser state unchanged).
  c.on_nonfinite = "stop"
  # Devices: (data, fsdp, model) mesh, -1 = the remaining devices (see docs/scaling.md).
  c.mesh = dict(data=-1, fsdp=1, model=1)
  # Memory: dtype of the frozen teacher and oracle in stage 2, and the number of chunks of the
  # response positions over which logits and divergences are computed (1 = all at once).
  c.frozen_dtype = "float32"
  c.sequence_chunks = 1
  c.hacking_threshold_pct = 5.0
  # The hacking detector (th_distill.detection), run on `metric` at every evaluation. Default
  # rule 'slowdown': it fires after `patience` consecutive evaluations at which the curve's
  # log-log slope over the last x`window` of steps is below `slope_ratio` times its slope over the
  # span before (convergence slowing down from its power law); evaluations before `min_step` (the
  # transient) are not scored; settings chosen on calibration seeds (docs/detection.md). `on_detect`: 'continue' or 'stop'; `keep`: checkpoints to keep
  # in the run directory, of 'best_golden', 'best_predicted'.
  c.detection = dict(metric=PROXY, rule="slowdown", window=3.0, slope_ratio=0.7, patience=1,
                     min_fit_points=4, law="power", threshold=2.5, noise_floor=0.01,
                     direction="above", min_step=100, on_detect="continue", keep=())
  return c


def overfit_config() -> ml_collections.ConfigDict:
  """The former embedded default (`configs/tiny_overfit.py`), kept as a contrast: a rougher
  oracle (`weight_scale` 2), a narrower student (d_model 32) from scratch, and offline data of
  only N = 128 prompts (about 750 epochs in 3,000 steps), online regimes on a pool of 1,024
  prompts. On held-out prompts its offline student over-fits: golden and proxy rise together
  (docs/results.md)."""
  c = base_config()
  c.oracle.weight_scale = 2.0
  c.student.model = model_config("tiny", d_model=32, d_kv=8, d_ff=64, vocab_size=64)
  c.student.init = "scratch"
  c.prompts.num_distill = 1024
  c.offline.num_prompts = 128
  c.online.prompts = "pool"
  c.student.steps = 3000
  return c


def paper_config(task: str, prompt_length: int, response_length: int) -> ml_collections.ConfigDict:
  """The paper's setup on a real task (`configs/xsum_large_to_base.py`, `wmt.py`,
  `natural_instructions.py` start here): a pretrained oracle (T5 v1.1 XL shapes), a T5-large
  teacher and a T5-base student with T5's vocabulary (32,128 embedding rows), forward KL, batch
  32, learning rate 3e-4 after 100 warm-up steps, dropout 0, temperature 1; the student starts
  by SFT on the oracle data. Paths are left empty (task.vocabulary, task.data_dir,
  oracle/teacher/student.checkpoint): the command line gives them."""
  c = base_config()
  vocab = 32128
  c.task.update(source="seqio", name=task, vocab_size=vocab, prompt_length=prompt_length,
                response_length=response_length)
  c.oracle.update(source="checkpoint", model=model_config("xl", vocab_size=vocab))
  c.teacher.model = model_config("large", vocab_size=vocab)
  c.student.model = model_config("base", vocab_size=vocab)
  c.student.init = "sft"
  for section in (c.teacher, c.student):
    section.update(batch_size=32, learning_rate=3e-4, warmup_steps=100, schedule="constant")
  c.loss.update(name="fkl", temperature=1.0)
  c.sampling.update(temperature=1.0, top_k=0, top_p=1.0)
  c.eval.batch_size = 128
  c.mesh.update(data=1, fsdp=-1, model=1)
  return c


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file (as `--config=PATH` loads it); ConfigError naming the file
  if it is missing or has no `get_config`."""
  if not os.path.isfile(path):
    raise ConfigError(f"--config: no config file at {path!r}")
  spec = importlib.util.spec_from_file_location("th_distill_config_file", path)
  if spec is None or spec.loader is None:
    raise ConfigError(f"--config: {path!r} is not a Python config file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"--config: {path!r} defines no get_config() function")
  return module.get_config()


def _non_finite_fields(c: ml_collections.ConfigDict) -> list[str]:
  """The dotted names of the float fields of `c` that hold NaN or an infinity."""
  fields = []
  for key in dotted_keys(c):
    value = c
    for part in key.split("."):
      value = value[part]
    if isinstance(value, float) and not math.isfinite(value):
      fields.append(key)
  return fields


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError listing every invalid field of `c` (nothing is computed before this):
  one message per field, the first problem found."""
  errors: list[str] = []
  reported: set[str] = set()

  def check(ok: bool, field: str, message: str) -> None:
    if not ok and field not in reported:
      reported.add(field)
      errors.append(f"{field}: {message}")

  known = dotted_keys(base_config()) + [f"detection.{k}"
                                        for k in detector_config.SETTINGS_FIELDS]
  model_keys = ("oracle.model.", "teacher.model.", "student.model.")  # checked by T5Config
  for key in dotted_keys(c):
    if key not in known and not key.startswith(model_keys):
      check(False, key, "no such field" + suggest(key, known))
  for key in _non_finite_fields(c):
    check(False, key, "must be a finite number")
  check(0 <= c.seed < 2**32, "seed", f"must be in [0, 2**32), got {c.seed}")

  regimes = tuple(c.regimes)
  check(len(regimes) > 0, "regimes", "must name at least one regime")
  for regime in regimes:
    check(regime in REGIMES, "regimes", f"unknown regime {regime!r}; allowed: {REGIMES}")
  check(len(set(regimes)) == len(regimes), "regimes", "must not repeat a regime")
  check(c.loss.name in DIVERGENCES, "loss.name",
        f"{c.loss.name!r} is not one of {tuple(DIVERGENCES)}")
  check(0.0 <= c.loss.beta <= 1.0, "loss.beta", f"must be in [0, 1], got {c.loss.beta}")
  check(c.loss.temperature > 0, "loss.temperature", f"must be > 0, got {c.loss.temperature}")
  check(c.sampling.temperature == 0 or c.sampling.temperature >= MIN_TEMPERATURE,
        "sampling.temperature", f"must be 0 (greedy) or >= {MIN_TEMPERATURE:.3g}, got "
        f"{c.sampling.temperature}")
  check(0 < c.sampling.top_p <= 1, "sampling.top_p", f"must be in (0, 1], got {c.sampling.top_p}")
  check(c.sampling.top_k >= 0, "sampling.top_k", f"must be >= 0 (0 = off), got {c.sampling.top_k}")
  check(c.online.prompts in ONLINE_PROMPTS, "online.prompts",
        f"must be one of {ONLINE_PROMPTS}, got {c.online.prompts!r}")
  check(0.0 <= c.mixture.student_fraction <= 1.0, "mixture.student_fraction",
        f"must be in [0, 1], got {c.mixture.student_fraction}")
  check(c.oracle.source in ("synthetic", "checkpoint"), "oracle.source",
        f"must be 'synthetic' or 'checkpoint', got {c.oracle.source!r}")
  check(c.oracle.source != "checkpoint" or bool(c.oracle.checkpoint), "oracle.checkpoint",
        "must be a local checkpoint path when oracle.source = 'checkpoint'")
  check(c.student.init in ("scratch", "sft"), "student.init",
        f"must be 'scratch' or 'sft', got {c.student.init!r}")
  check(c.on_nonfinite in ON_NONFINITE, "on_nonfinite",
        f"must be one of {ON_NONFINITE}, got {c.on_nonfinite!r}")
  if c.oracle.source == "synthetic":
    max_entropy = math.log(max(c.task.vocab_size, 1))
    check(0 < c.oracle.target_entropy < max_entropy, "oracle.target_entropy",
          f"must be in (0, log task.vocab_size = {max_entropy:.3f}) nats, got "
          f"{c.oracle.target_entropy}")
    check(c.oracle.weight_scale > 0, "oracle.weight_scale",
          f"must be > 0, got {c.oracle.weight_scale}")

  check(c.task.source in ("synthetic", "seqio"), "task.source",
        f"must be 'synthetic' or 'seqio', got {c.task.source!r}")
  if c.task.source == "seqio":
    check(importlib.util.find_spec("seqio") is not None, "task.source",
          "'seqio' needs the seqio extra: pip install -e '.[seqio]'")
    errors.extend(tasks.data_errors(c.task.name, c.task.data_dir))
  try:
    vocabulary = vocabularies.task_vocabulary(c.task)
  except (OSError, ValueError, ImportError) as e:
    errors.append(f"task.vocabulary: {e}")
  else:  # each model's vocab_size must equal task.vocab_size (below)
    check(vocabulary.fits(c.task.vocab_size), "task.vocab_size",
          f"{c.task.vocab_size} embedding rows (every model's vocab_size) cannot hold the "
          f"{vocabulary.vocab_size} ids of {c.task.vocabulary}")
  for name in ("oracle", "teacher", "student"):
    try:
      model = to_t5_config(c[name].model)
    except (TypeError, ValueError) as e:
      errors.append(f"{name}.model: {e}")
      continue
    check(model.vocab_size == c.task.vocab_size, f"{name}.model.vocab_size",
          f"{model.vocab_size} differs from task.vocab_size = {c.task.vocab_size}; oracle, "
          "teacher and student must share one vocabulary")
    path = c[name].checkpoint if name != "oracle" or c.oracle.source == "checkpoint" else ""
    if path:
      try:
        errors.extend(f"{name}.{problem}" for problem in pretrained.mismatches(path, model))
      except (OSError, ValueError) as e:
        errors.append(f"{name}.checkpoint: {e}")

  for field in ("teacher", "student"):
    section = c[field]
    check(section.learning_rate > 0, f"{field}.learning_rate",
          f"must be > 0, got {section.learning_rate}")
    check(section.steps >= 0, f"{field}.steps", f"must be >= 0, got {section.steps}")
    check(section.warmup_steps >= 0, f"{field}.warmup_steps", "must be >= 0")
    check(section.batch_size > 0, f"{field}.batch_size", "must be > 0")
    check(section.schedule in ("constant", "linear", "cosine"), f"{field}.schedule",
          f"must be constant, linear or cosine, got {section.schedule!r}")
  check(c.student.sft_steps >= 0, "student.sft_steps", "must be >= 0")
  for key in ("weight_decay", "grad_clip"):
    check(c.student[key] >= 0, f"student.{key}", f"must be >= 0 (0 = off), got {c.student[key]}")

  for key in ("vocab_size", "prompt_length", "response_length"):
    check(c.task[key] > 0, f"task.{key}", f"must be > 0, got {c.task[key]}")
  for key in ("num_oracle", "num_distill", "num_eval"):
    check(c.prompts[key] > 0, f"prompts.{key}", f"must be > 0, got {c.prompts[key]}")
  if c.task.source == "synthetic":
    tokens = c.task.vocab_size - prompt_lib.FIRST_TOKEN  # ids 0 and 1 never start a prompt
    pool = c.prompts.num_oracle + c.prompts.num_distill + c.prompts.num_eval
    check(tokens >= 2, "task.vocab_size",
          f"must be >= {prompt_lib.FIRST_TOKEN + 2} for synthetic prompts, got {c.task.vocab_size}")
    # As data.prompts.zipf_prompts requires: 4 x the pool fits in tokens ** prompt_length.
    check(tokens < 2 or c.task.prompt_length <= 0 or
          math.log(4 * max(pool, 1)) <= c.task.prompt_length * math.log(tokens),
          "task.prompt_length", f"{c.task.prompt_length} tokens over {tokens} ids cannot make "
          f"{pool} distinct prompts (prompts.num_*); use longer prompts or fewer of them")
  n, k = c.offline.num_prompts, c.offline.generations_per_prompt
  check(n > 0, "offline.num_prompts", f"N must be > 0, got {n}")
  check(k > 0, "offline.generations_per_prompt", f"k must be > 0, got {k}")
  check(n <= c.prompts.num_distill, "offline.num_prompts",
        f"N = {n} exceeds the distillation prompt pool prompts.num_distill = "
        f"{c.prompts.num_distill} (N x k = {n * k} examples are drawn from N distinct prompts)")
  check(c.eval.num_train_prompts > 0, "eval.num_train_prompts", "must be > 0")
  check(c.eval.batch_size > 0, "eval.batch_size", "must be > 0")
  check(c.eval_every > 0, "eval_every", f"must be > 0, got {c.eval_every}")
  check(c.eval_log_points >= 0, "eval_log_points", f"must be >= 0 (0 = off), got "
        f"{c.eval_log_points}")
  check(c.checkpoint_every > 0, "checkpoint_every", f"must be > 0, got {c.checkpoint_every}")
  check(c.hacking_threshold_pct >= 0, "hacking_threshold_pct", "must be >= 0")
  errors.extend(detector_config.problems(c.detection))

  check(c.frozen_dtype in ("float32", "bfloat16"), "frozen_dtype",
        f"must be 'float32' or 'bfloat16', got {c.frozen_dtype!r}")
  check(c.sequence_chunks > 0 and c.task.response_length % c.sequence_chunks == 0,
        "sequence_chunks", f"{c.sequence_chunks} must be > 0 and divide task.response_length = "
        f"{c.task.response_length}")
  check(c.student.micro_batches > 0, "student.micro_batches", "must be > 0")
  try:
    mesh = resolve_mesh_shape(c.mesh.data, c.mesh.fsdp, c.mesh.model, jax.device_count())
  except ValueError as e:
    errors.append(f"mesh: {e}")
  else:
    data_parallel = mesh[0] * mesh[1]
    for field, parts in (("teacher", 1), ("student", max(c.student.micro_batches, 1))):
      check(c.prompts.num_eval >= data_parallel, "prompts.num_eval",
          f"{c.prompts.num_eval} must be at least the {data_parallel} data-parallel devices (the "
          "synthetic oracle is calibrated on held-out prompts, split over them)")
    check(c[field].batch_size % (data_parallel * parts) == 0, f"{field}.batch_size",
            f"{c[field].batch_size} must be a multiple of the {data_parallel} data-parallel "
            f"devices (mesh.data x mesh.fsdp = {mesh[0]} x {mesh[1]})" +
            (f" times student.micro_batches = {parts}" if parts > 1 else ""))
  if errors:
    raise ConfigError("Invalid configuration:" + "".join(f"\n  {e}" for e in errors)
                      if len(errors) > 1 else f"Invalid configuration: {errors[0]}")
