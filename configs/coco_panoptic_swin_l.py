"""MaskFormer Swin-L, COCO panoptic, FPN pixel decoder without encoder (paper: 52.7 PQ)."""

from configs import base


def get_config():
    config = base.use_swin(base.use_coco_panoptic(base.get_config()), "large")
    config.model.enforce_input_projection = True
    config.dataset.max_size_train = 1000  # the official Swin-L COCO config caps the long side at 1000
    return config
