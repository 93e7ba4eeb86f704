"""The default configurations: `base_config()` and the variants config files start from.

`base_config()` is the complete set of keys (the embedded CPU default study); config files in
`configs/` start from it (or from `overfit_config`, `strong_teacher_config`, `paper_config`) and
change values, so every key a user can override on the command line
(`--config.student.steps=200`) exists and has a type.
A model's sub-config holds every `T5Config` field (`model_config`, `to_t5_config`), or `family`
and every field of that family's config (`decoder_model_config`: `family = 'decoder'`).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from th_distill.models import T5Config, decoder_config, fields_of, t5_config
from th_distill.observing.metrics_io import PROXY


def model_config(size: str, **overrides) -> ml_collections.ConfigDict:
  """Every T5Config field of the named size (with overrides) as a ConfigDict."""
  return ml_collections.ConfigDict(dataclasses.asdict(t5_config(size, **overrides)))


def decoder_model_config(size: str, **overrides) -> ml_collections.ConfigDict:
  """A decoder-only model sub-config: `family = 'decoder'` and every `DecoderConfig` field of
  the named size (`th_distill.models.decoder_config`), with overrides."""
  return ml_collections.ConfigDict(fields_of(decoder_config(size, **overrides)))


def to_t5_config(model: ml_collections.ConfigDict) -> T5Config:
  """The T5Config of a model sub-config (`config.student.model`, ...)."""
  return T5Config(**model.to_dict())


def base_config() -> ml_collections.ConfigDict:
  """The embedded default: a CPU-sized study of a student pulled toward a worse teacher.

  A synthetic oracle (random T5, weights at their init scale, sharpened to 2 nats/token), a
  teacher of the same size trained by SFT on 4,096 oracle samples past its best golden distance
  (0.80-0.92 nats/token), and a student of the same size initialised by SFT on the same oracle
  samples (the paper's initialisation; about 0.70, better than the teacher), distilled with
  forward KL on N = 4,096 prompts x k = 1 teacher generation (about 16 epochs in 2,000 steps of
  batch 32); the online regimes use the same 4,096 prompts. On held-out prompts the offline
  student's golden distance falls, then turns up toward the teacher's while its proxy keeps
  falling; the online arms drift up more slowly (docs/results.md, docs/signature_search.md)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.regimes = ("offline", "online_teacher", "online_student")
  # The task: `source` 'synthetic' (Zipf prompts over the vocabulary), 'seqio' (a real task:
  # `name` of th_distill.data.tasks.TASKS, SentencePiece `vocabulary` path, `data_dir`) or
  # 'prompt_file' (the user's prompts: JSONL `prompt_file`, its text in `prompt_field`, through
  # `prompt_template` ('Summarize: {text}'; '' = the text as it is) and, if `chat_template`, the
  # chat template of the `vocabulary` directory; docs/tasks.md).
  # vocab_size is every model's embedding size; prompts and responses are trimmed to the lengths.
  c.task = dict(
    source="synthetic",
    vocab_size=64,
    prompt_length=8,
    response_length=16,
    zipf_exponent=1.1,
    name="",
    vocabulary="",
    data_dir="",
    prompt_file="",
    prompt_field="text",
    prompt_template="",
    chat_template=False,
  )
  # Disjoint prompt pools: oracle data (stage 1), distillation (stage 2), held-out evaluation.
  c.prompts = dict(num_oracle=4096, num_distill=4096, num_eval=512)
  tiny = dict(vocab_size=64)
  c.oracle = dict(
    source="synthetic",
    checkpoint="",
    target_entropy=2.0,
    weight_scale=1.0,
    model=model_config("tiny", **tiny),
  )
  # `checkpoint`: initial weights from a local checkpoint instead of a random init ('' = random).
  # `temperature`: the teacher is its SFT'd logits divided by this, in every later use (its samples,
  # the loss, the proxy, its own golden distance); < 1 makes an over-confident teacher whose
  # samples are less diverse than the oracle's, 1 leaves it as trained.
  c.teacher = dict(
    model=model_config("tiny", **tiny),
    checkpoint="",
    steps=1500,
    batch_size=32,
    learning_rate=3e-3,
    warmup_steps=0,
    schedule="constant",
    temperature=1.0,
  )
  c.student = dict(
    model=model_config("tiny", **tiny),
    checkpoint="",
    init="sft",
    sft_steps=500,
    steps=2000,
    batch_size=32,
    micro_batches=1,
    learning_rate=1e-3,
    warmup_steps=0,
    schedule="constant",
    weight_decay=0.0,
    grad_clip=0.0,
  )
  # teacher_top_k K > 0: the loss sees only the teacher's top-K log-probabilities per position,
  # renormalised over them (tail 'renormalize') or with the rest of the mass as one more class
  # ('bucket'); 0 = the full vocabulary. The proxy and golden metrics stay full-vocabulary.
  c.loss = dict(
    name="fkl", beta=0.5, normalized=False, temperature=1.0, teacher_top_k=0, tail="renormalize"
  )
  c.sampling = dict(temperature=1.0, top_k=0, top_p=1.0)
  # refresh_every R > 0: the teacher regenerates the N x k responses (same prompts) every R steps.
  c.offline = dict(num_prompts=4096, generations_per_prompt=1, refresh_every=0)
  # Prompts of the online regimes: 'offline' = the offline arm's N prompts (only the responses
  # are fresh; the paper's setting), 'pool' = the whole distillation pool (prompts.num_distill).
  # reuse U: each generated batch is trained on U times; staleness S: online samples come from
  # the student's parameters S steps old (an asynchronous pipeline's); 1 and 0 = fresh each step.
  c.online = dict(prompts="offline", reuse=1, staleness=0)
  c.mixture = dict(student_fraction=0.5)
  c.eval = dict(num_train_prompts=256, batch_size=512)
  c.eval_every = 100
  # Extra evaluations log-spaced over [1, steps]: the early, fast part of the curves, where the
  # convergence law of the hacking detector is fitted (see th_distill.observing.eval_schedule).
  c.eval_log_points = 30
  c.checkpoint_every = 1000
  # A distillation step with a non-finite loss or gradient norm stops the run ('stop'; its last
  # good checkpoint is kept) or is skipped ('skip': parameters and optimiser state unchanged).
  c.on_nonfinite = "stop"
  # Devices: (data, fsdp, model) mesh, -1 = the remaining devices (see docs/scaling.md). A plan
  # needing more memory per device than a device has stops before any compute, unless
  # ignore_memory_estimate is True (th_distill.planning.memory's estimate is conservative).
  # steps_per_dispatch K: training steps per call of the compiled program (a loop inside it,
  # th_distill.training.dispatch; results unchanged), 0 = 1 on a CPU, else from a step's FLOPs.
  # regimes_at_once: stage 2's regimes (and stage 1's two SFTs) side by side, a thread each
  # (th_distill.stages.side_by_side; results unchanged), 0 = all on a CPU run of one process, else 1.
  c.mesh = dict(
    data=-1,
    fsdp=1,
    model=1,
    ignore_memory_estimate=False,
    steps_per_dispatch=0,
    regimes_at_once=0,
  )
  # Memory: dtype of the frozen teacher and oracle in stage 2, and the number of chunks of the
  # response positions over which logits and divergences are computed (1 = all at once).
  c.frozen_dtype = "float32"
  c.sequence_chunks = 1
  c.hacking_threshold_pct = 5.0
  # The run's figures (curves.png, proxy_golden.png, detector.png; ~2 s on a CPU): False for
  # sweeps that only read summary.json and metrics.jsonl.
  c.write_figures = True
  # The hacking detector (th_distill.detection), run on `metric` at every evaluation. Default
  # rule 'slowdown': it fires after `patience` consecutive evaluations at which the curve's
  # log-log slope over the last x`window` of steps is below `slope_ratio` times its slope over the
  # span before (convergence slowing down from its power law); evaluations before `min_step` (the
  # transient) are not scored; settings chosen on calibration seeds (docs/detection.md).
  # `on_detect`: 'continue', 'stop' or 'refresh' (offline: back to the best_predicted
  # parameters, kept whatever `keep` says, then fresh teacher samples to the end); `keep`:
  # checkpoints to keep in the run directory, of 'best_golden', 'best_predicted'.
  c.detection = dict(
    metric=PROXY,
    rule="slowdown",
    window=3.0,
    slope_ratio=0.7,
    patience=1,
    min_fit_points=4,
    law="power",
    threshold=2.5,
    noise_floor=0.01,
    direction="above",
    min_step=100,
    on_detect="continue",
    keep=(),
  )
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


def strong_teacher_config() -> ml_collections.ConfigDict:
  """The paper's conditions at CPU scale (`configs/tiny_strong_teacher.py`): a teacher twice as
  wide as the student (d_model 128, d_ff 256, d_kv 32) trained by SFT at learning rate 1e-3 for
  1,500 steps on 16,384 oracle samples, near its best golden distance; the student (the
  default's size) starts from 500 SFT steps on the same samples. The teacher is better than the
  student at its start (the online students end level with it or a hair below); no regime hacks
  it (docs/signature_search.md section 5)."""
  c = base_config()
  c.prompts.num_oracle = 16384
  c.teacher.model = model_config("tiny", d_model=128, d_ff=256, d_kv=32, vocab_size=64)
  c.teacher.update(learning_rate=1e-3, steps=1500)
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
  c.task.update(
    source="seqio",
    name=task,
    vocab_size=vocab,
    prompt_length=prompt_length,
    response_length=response_length,
  )
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
