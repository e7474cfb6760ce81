"""MaskFormer Swin-S, COCO panoptic, FPN pixel decoder without encoder (paper: 49.7 PQ)."""

from configs import base


def get_config():
    config = base.use_swin(base.use_coco_panoptic(base.get_config()), "small")
    config.model.enforce_input_projection = True
    return config
