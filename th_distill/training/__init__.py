"""Training: the step functions (`steps`), the compiled programs of a run (`programs`), the
run's random streams (`keys`), the batch sources each regime trains on (`sources`, with the
offline regime's dataset in `offline_dataset`), and the one training loop every stage uses
(`trainer`) with the behaviours attached to it (`hooks`, `guards`, `metric_sums`)."""
