"""Stage-2 data: prompt sources and the data regimes of distillation."""
