"""Input-mode comparison: the same model trained on original, segmented, masked and dual inputs."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
