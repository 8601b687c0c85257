"""Evaluation: metrics (metrics.py), ranking and protocols (ranking.py), world evaluation and reports."""
