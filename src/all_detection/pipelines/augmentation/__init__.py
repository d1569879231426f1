"""Augmentation: random views of the training split only, each stored beside its source image."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
