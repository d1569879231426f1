"""Cross-validation: stratified group k-fold of the leakage-free protocol."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
