"""Natural Instructions with the paper's models: oracle -> T5-large teacher -> T5-base student.

Task: `Definition: ` + task definition + `Input: ` + instance input -> the instance's first
output, from a local folder of the public task JSON files; 100,000 oracle prompts as in the
paper, a distillation pool of 200,000 and 512 held-out prompts (the instances whose id hashes to
the validation bucket, see th_distill/data/tasks.py). Prompts trimmed to 512 tokens, responses
to 128, N = 50,000 x k = 4 and the step counts are ours (the public text gives none for this
task). Batch 32, learning rate 3e-4 after 100 warm-up steps, dropout 0, temperature 1.

Needs (docs/tasks.md):
  --config.task.vocabulary=DIR/spiece.model     T5's SentencePiece model
  --config.task.data_dir=NI/tasks               the natural-instructions repository's tasks/
  --config.oracle.checkpoint, --config.teacher.checkpoint, --config.student.checkpoint
                                                local T5 v1.1-style XL / large / base checkpoints

Memory per device (`python -m th_distill.planning.memory --config=configs/natural_instructions.py
--mesh=1,16,1`; frozen models in bfloat16, logits in 4 chunks): 2.4 GiB on (1, 16, 1), 4.8 GiB
on (1, 8, 1), before XLA's temporaries.

Memory: plan for 16 GB per accelerator on mesh (data, fsdp, model) = (1, 16, 1) (e.g. 16 TPU v5e
chips); the samplers and the evaluator split their calls to fit (`--device_gb=16`).
"""

from th_distill.config import paper_config


def get_config():
  config = paper_config("natural_instructions", prompt_length=512, response_length=128)
  config.prompts.update(num_oracle=100_000, num_distill=200_000, num_eval=512)
  config.offline.update(num_prompts=50_000, generations_per_prompt=4)
  config.teacher.steps = 20_000
  config.student.sft_steps = 10_000
  config.student.steps = 200_000
  config.frozen_dtype = "bfloat16"
  config.sequence_chunks = 4
  config.eval_every = 5_000
  config.checkpoint_every = 5_000
  return config
