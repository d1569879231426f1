"""Evaluation: predictions, metrics with bootstrap intervals, figures and a model card."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
