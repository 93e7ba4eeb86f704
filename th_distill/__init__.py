"""th_distill: teacher hacking in language-model distillation, in JAX/Flax.

Library entry points (the CLI is `python -m th_distill.main`):
- models: `T5`, `t5_config`, `init_params`, `shift_right` (T5 v1.1, logical axis names, KV cache)
- `sample`: the jitted KV-cache sampler, for any model's params
- `divergences`: `fkl`, `rkl`, `jsd` per token, and masked reductions
- `train`: `Batch`, `make_optimizer`, `create_train_state`, `sft_step`, `distill_step`, `eval_sums`
  (traceable step functions; compile them with `jax.jit` or `partitioning.Partitioner.jit`)
- `partitioning`: `make_mesh`, `Partitioner` (sharded init, batches, compiled steps),
  `initialize_distributed`; `memory`: memory per device from the shapes
- `experiment.run(config, workdir)`: the whole oracle -> teacher -> student study
"""

from th_distill import divergences
from th_distill.models import T5, T5Config, init_params, shift_right, t5_config
from th_distill.sampling import SampleOutput, sample

__version__ = "0.1.0"

__all__ = ["SampleOutput", "T5", "T5Config", "divergences", "init_params", "sample",
           "shift_right", "t5_config"]
