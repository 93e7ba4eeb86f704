"""The paper's headline setup: XSum, oracle -> T5-large teacher -> T5-base student, forward KL.

Task: XSum summarisation (`summarize: ` + article -> summary), articles trimmed to 1,024 tokens,
responses to 128; 25,000 oracle prompts, a distillation pool of 100,000 and 512 held-out
validation prompts. Offline data: N = 50,000 prompts x k = 4 teacher generations (the paper's
200,000 examples). Batch 32, learning rate 3e-4 after 100 warm-up steps, dropout 0,
temperature 1; 390,625 distillation steps as in the paper. The teacher's and the student's SFT
lengths (`teacher.steps`, `student.sft_steps`) are not given by the public text: ours.

Needs (docs/tasks.md, step by step):
  --config.task.vocabulary=DIR/spiece.model     T5's SentencePiece model (in any T5 HF directory)
  --config.task.data_dir=TFDS_DIR               TFDS data dir with xsum 1.1.0 built in it
  --config.oracle.checkpoint=DIR/flan-t5-xl     any T5 v1.1-style XL checkpoint (HF layout)
  --config.teacher.checkpoint=DIR/t5-v1_1-large and --config.student.checkpoint=DIR/t5-v1_1-base

Memory per device (`python -m th_distill.planning.memory --config=configs/xsum_large_to_base.py
--mesh=1,16,1`; frozen models in bfloat16, logits in 4 chunks): 5.0 GiB on a (1, 16, 1) mesh
(16 chips, e.g. a v4-32 slice), 10.0 GiB on (1, 8, 1), 2.5 GiB on (1, 32, 1), of which the
student's activations are 78 %; `--config.student.micro_batches=4` brings (1, 16, 1) to 2.1 GiB.
XLA's temporaries come on top: keep 20-30 % free.

Memory: plan for 16 GB per accelerator on mesh (data, fsdp, model) = (1, 16, 1) (e.g. 16 TPU v5e
chips); the samplers and the evaluator split their calls to fit (`--device_gb=16`).
"""

from th_distill.config import paper_config


def get_config():
  config = paper_config("xsum", prompt_length=1024, response_length=128)
  config.prompts.update(num_oracle=25_000, num_distill=100_000, num_eval=512)
  config.offline.update(num_prompts=50_000, generations_per_prompt=4)
  config.teacher.steps = 20_000
  config.student.sft_steps = 10_000
  config.student.steps = 390_625
  config.frozen_dtype = "bfloat16"
  config.sequence_chunks = 4
  config.eval_every = 5_000
  config.checkpoint_every = 5_000
  return config
