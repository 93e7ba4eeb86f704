"""Training: the step functions (`steps`), the compiled programs of a run (`programs`), and
the one training loop every stage uses (`trainer`) with the behaviours attached to it
(`hooks`, `guards`, `metric_sums`)."""
