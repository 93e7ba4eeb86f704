"""WMT-14 English -> German with the paper's models: oracle -> T5-large teacher -> T5-base student.

Task: `translate English to German: ` + English sentence -> German, both trimmed to 80 tokens as
in the paper; 50,000 oracle prompts, a distillation pool of 450,000 and 512 held-out validation
prompts. Offline data: N = 150,000 prompts x k = 3 generations (the paper's 450,000 examples).
Batch 32, learning rate 3e-4 after 100 warm-up steps, dropout 0, temperature 1; 703,125
distillation steps as in the paper; the SFT lengths are ours.

Needs (docs/tasks.md):
  --config.task.vocabulary=DIR/spiece.model     T5's SentencePiece model
  --config.task.data_dir=TFDS_DIR               TFDS data dir with wmt14_translate/de-en 1.0.0
  --config.oracle.checkpoint, --config.teacher.checkpoint, --config.student.checkpoint
                                                local T5 v1.1-style XL / large / base checkpoints

Memory per device (`python -m th_distill.planning.memory --config=configs/wmt.py --mesh=1,16,1`, frozen
models in bfloat16, logits in 4 chunks): 1.0 GiB on (1, 16, 1), 2.0 GiB on (1, 8, 1), before
XLA's temporaries.

Memory: plan for 16 GB per accelerator on mesh (data, fsdp, model) = (1, 16, 1) (e.g. 16 TPU v5e
chips); the samplers and the evaluator split their calls to fit (`--device_gb=16`).
"""

from th_distill.config import paper_config


def get_config():
  config = paper_config("wmt14_en_de", prompt_length=80, response_length=80)
  config.prompts.update(num_oracle=50_000, num_distill=450_000, num_eval=512)
  config.offline.update(num_prompts=150_000, generations_per_prompt=3)
  config.teacher.steps = 20_000
  config.student.sft_steps = 10_000
  config.student.steps = 703_125
  config.frozen_dtype = "bfloat16"
  config.sequence_chunks = 4
  config.eval_every = 5_000
  config.checkpoint_every = 5_000
  return config
