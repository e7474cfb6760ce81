"""MaskFormer in JAX/Flax: mask classification for semantic, panoptic and instance segmentation."""
