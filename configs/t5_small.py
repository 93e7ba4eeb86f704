"""The same pipeline with T5 v1.1 sized models, for accelerators.

Oracle and teacher: T5 v1.1 base shapes; student: T5 v1.1 small shapes (vocab 32,128), on the
synthetic task with longer prompts and responses. A random T5-base oracle stands in for a
pretrained one (set `oracle.source = 'checkpoint'` and `oracle.checkpoint` to a local Hugging Face
T5 v1.1 directory to use real weights).

Memory: plan for 24 GB per accelerator on mesh (data, fsdp, model) = (1, 1, 1) (or this
24 GB host's CPU), or shard with `mesh.fsdp`. Three models of 248M + 248M + 77M parameters in
float32 plus the student's Adam state take about 5 GB; the largest program is the teacher's SFT
step, about 16.7 GiB (its activations at batch 32 x (256 + 128) tokens: too much for a 16 GB
accelerator). The oracle's sampler and the evaluator split their calls to fit the device
(`python -m th_distill.planning.memory --config=configs/t5_small.py --mesh=1,1,1 --device_gb=24`:
256 sampled rows and 64 evaluated rows a call); the regimes run one at a time, also on a CPU.
"""

from th_distill.config import base_config, model_config


def get_config():
  config = base_config()
  vocab = 32128
  config.task.vocab_size = vocab
  config.task.prompt_length = 256
  config.task.response_length = 128
  config.oracle.model = model_config("base", vocab_size=vocab)
  config.oracle.target_entropy = 3.0
  config.oracle.weight_scale = 1.0
  config.teacher.model = model_config("base", vocab_size=vocab)
  config.teacher.learning_rate = 3e-4
  config.teacher.warmup_steps = 100
  config.teacher.steps = 20_000
  config.student.model = model_config("small", vocab_size=vocab)
  config.student.learning_rate = 3e-4
  config.student.warmup_steps = 100
  config.student.steps = 50_000
  config.prompts.num_oracle = 100_000
  config.prompts.num_distill = 50_000
  config.prompts.num_eval = 2_048
  config.offline.num_prompts = 10_000
  config.offline.generations_per_prompt = 1
  config.eval.batch_size = 256
  config.eval_every = 1_000
  config.checkpoint_every = 5_000
  config.mesh.regimes_at_once = 1  # three distillation steps side by side take ~26 GiB
  return config
