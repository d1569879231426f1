"""The demo: a synthetic smear set in the image folder, for `kedro run --env demo`."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
