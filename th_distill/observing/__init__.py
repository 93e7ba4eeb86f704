"""Observing a run: metric names, metric rows (metrics.jsonl, TensorBoard), the evaluation
schedule, progress lines and time estimates."""
