"""Protocol comparison: the paper's augment-then-split protocol beside the leakage-free one."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
