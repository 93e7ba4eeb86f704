"""The experiment's stages, in the order `th_distill.experiment` runs them.

- `stage1`: oracle, oracle data, teacher SFT, student initialisation and the fixed eval sets.
- `sft`: an SFT through the one training loop (checkpoints, pre-emption, the non-finite guard).
- `distill`: one distillation run per data regime (its batches from `training.sources`).
- `stage2`: every regime, one after another or side by side.
- `side_by_side`: independent trainings (the SFTs, the regimes) a thread each, on a CPU.
"""
