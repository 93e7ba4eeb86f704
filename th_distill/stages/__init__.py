"""The experiment's stages, one module each, in the order `th_distill.experiment` runs them.

- `keys`: the run's random streams (one per purpose).
- `workdir`: what a stage leaves in the workdir: fingerprints of the config sections it depends
  on, markers, writes by the main process, pre-emption.
- `programs`: the mesh-compiled programs (sampler, SFT step, distillation step, evaluator), built
  once per run.
- `stage1`: oracle, oracle data, teacher SFT, student initialisation and the fixed eval sets.
- `distill`: the offline dataset and one distillation run per data regime.
"""
