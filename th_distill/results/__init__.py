"""Results: a run's numbers and verdict against the oracle (`summaries`, `trend`), the
figures, the report of one run and of a study, paired comparisons over seeds."""
