"""Shortcut audit: null models, counterfactual tests and Grad-CAM shares, then the model card."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
