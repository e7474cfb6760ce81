"""MaskFormer Swin-T, COCO panoptic, FPN pixel decoder without encoder (paper: 47.7 PQ)."""

from configs import base


def get_config():
    config = base.use_swin(base.use_coco_panoptic(base.get_config()), "tiny")
    config.model.enforce_input_projection = True
    return config
