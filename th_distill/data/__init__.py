"""Data: the prompts (synthetic or a real task), the prompt pools, and the batch each step
trains on (the batch sources, one class per data regime, are `th_distill.training.sources`)."""
