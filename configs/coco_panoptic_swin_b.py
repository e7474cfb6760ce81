"""MaskFormer Swin-B, COCO panoptic, FPN pixel decoder without encoder (paper: 51.8 PQ)."""

from configs import base


def get_config():
    config = base.use_swin(base.use_coco_panoptic(base.get_config()), "base")
    config.model.enforce_input_projection = True
    return config
