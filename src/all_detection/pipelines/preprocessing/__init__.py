"""Preprocessing: HSV segmentation-aware model inputs per split, and agreement with the dataset's masks."""

from .pipeline import create_pipeline, stain_measurement

__all__ = ["create_pipeline", "stain_measurement"]
