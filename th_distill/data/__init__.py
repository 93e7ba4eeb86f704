"""Data: the prompts (synthetic or a real task), the prompt pools, the batch each step trains
on, and the batch sources (one class per data regime, `data.sources`)."""
