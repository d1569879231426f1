"""Ingestion: every file under the dataset root, checked, de-duplicated and split."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
