"""Baselines of the cost and chronic-condition tasks (see docs/evaluation.md)."""
