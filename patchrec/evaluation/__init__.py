"""Ranking (constrained beam search over catalog titles) and metrics."""
