"""Evaluation: predictions, metrics with bootstrap intervals, the metrics report, and figures."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
