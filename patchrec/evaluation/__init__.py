"""Evaluation: the split driver (any head's ranker over a split) and the metrics."""
