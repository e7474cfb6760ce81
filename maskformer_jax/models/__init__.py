"""MaskFormer model: `build_model(config.model)` returns a Flax Linen module."""

from maskformer_jax.models.maskformer import (COLLECTIONS, MaskFormer, abstract_variables, build_model, init_variables,
                                              normalize)

__all__ = ["COLLECTIONS", "MaskFormer", "abstract_variables", "build_model", "init_variables", "normalize"]
