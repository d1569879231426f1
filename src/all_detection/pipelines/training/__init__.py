"""Training: the paper's frozen-VGG16 model, on cached base features or online on images."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
