"""MaskFormer model: `build_model(config.model)` returns a Flax Linen module."""

from maskformer_jax.models.maskformer import MaskFormer, build_model

__all__ = ["MaskFormer", "build_model"]
