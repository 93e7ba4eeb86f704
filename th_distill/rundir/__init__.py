"""The run directory: every path and record of a workdir (`layout`), what a stage's results
depend on and when they may be reused (`records`), atomic files and Orbax checkpoints
(`checkpoints`), the workdir's lock, pre-emption, writes in a multi-process run, and the
parameters a run keeps beside its checkpoints (`kept`)."""
