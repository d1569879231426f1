"""Batch scoring on Spark: every file of an archive, read and classified by Spark's executors."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
