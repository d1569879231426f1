"""Inference: a folder of new smear images, each checked like ingestion's files, then classified."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
