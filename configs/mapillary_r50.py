"""MaskFormer R50, Mapillary Vistas (65 classes), 1280x1280 crop, 300k iterations (paper: 53.1 mIoU)."""

from configs import base


def get_config():
    config = base.use_semantic_benchmark(base.get_config(), "mapillary_vistas")
    return config
