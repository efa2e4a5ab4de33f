"""Evaluation: metrics, bootstrap intervals and the predictions files every model writes."""
