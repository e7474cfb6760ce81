"""MaskFormer R101c, Cityscapes (19 classes), 512x1024 crop, 90k iterations (paper: 79.7 mIoU)."""

from configs import base


def get_config():
    config = base.use_semantic_benchmark(base.get_config(), "cityscapes")
    config.model.backbone = base.resnet("101c")
    return config
