"""Your own models on your own prompts: an oracle, a teacher and a student read from local Hugging
Face checkpoint directories (Qwen2 / Qwen2.5 or Llama; T5 v1.1 / Flan-T5 too), and a JSONL file
of prompts through the tokenizer's chat template. docs/your_model.md walks through it.

  python -m th_distill.main --config=configs/your_model.py --workdir=W \\
    --config.oracle.checkpoint=DIR/Qwen2.5-3B-Instruct \\
    --config.teacher.checkpoint=DIR/Qwen2.5-1.5B-Instruct \\
    --config.student.checkpoint=DIR/Qwen2.5-0.5B-Instruct \\
    --config.task.vocabulary=DIR/Qwen2.5-0.5B-Instruct \\
    --config.task.prompt_file=prompts.jsonl --config.task.vocab_size=151936

Each model's architecture is its checkpoint's (`model.family = 'checkpoint'`: read from its
config.json when the config is validated; the `dtype`, `param_dtype` and `remat` given beside it stay
the run's choice). The tokenizer (`task.vocabulary`: a directory with tokenizer.json, or a
SentencePiece model file) gives the special tokens: pad, every stop id of generation_config.json
(Qwen's `<|im_end|>` and `<|endoftext|>`), BOS where the family adds one. `task.vocab_size` is
the models' embedding rows (Qwen2.5: 151,936, more than the tokenizer's 151,665 ids).

Stage 1 as in the paper: the oracle is its checkpoint as it is (`oracle.source = 'checkpoint'`),
the teacher starts from its checkpoint and is trained by SFT on oracle samples, the student starts
from its checkpoint and is trained by SFT on the same samples; then every regime distils it.
Prompts: 8,192 oracle, 16,384 distillation and 256 held-out ones from the file (split by a hash
of their text), at most 512 tokens each (longer texts lose their end, the chat markup stays);
responses of at most 128 tokens; every model rematerialised (`remat = 'full'`).

Memory: plan for 80 GB per accelerator on mesh (data, fsdp, model) = (1, 1, 1), with the Qwen2.5
3B / 1.5B / 0.5B triple (the teacher's SFT step takes about 39 GiB; docs/your_model.md has the
command and a TPU v5e-8).
"""

import ml_collections

from th_distill.config import base_config


def get_config():
  c = base_config()
  c.task.update(
    source="prompt_file",
    prompt_file="",
    prompt_field="text",
    chat_template=True,
    vocabulary="",
    vocab_size=151_936,
    prompt_length=512,
    response_length=128,
  )
  c.prompts.update(num_oracle=8_192, num_distill=16_384, num_eval=256)
  c.oracle.source = "checkpoint"
  for name in ("oracle", "teacher", "student"):
    c[name].model = ml_collections.ConfigDict({"family": "checkpoint", "remat": "full"})
  c.teacher.update(steps=2_000, batch_size=32, learning_rate=1e-5, warmup_steps=100)
  c.student.update(
    init="sft", sft_steps=500, steps=5_000, batch_size=32, learning_rate=1e-5, warmup_steps=100
  )
  c.offline.update(num_prompts=8_192, generations_per_prompt=2)
  c.loss.update(name="fkl", temperature=1.0)
  c.sampling.update(temperature=1.0, top_k=0, top_p=1.0)
  c.eval.update(batch_size=32, num_train_prompts=256)
  c.frozen_dtype = "bfloat16"
  c.sequence_chunks = 4
  c.eval_every = 250
  c.eval_log_points = 4
  c.checkpoint_every = 500
  c.mesh.update(data=1, fsdp=-1, model=1)
  return c
