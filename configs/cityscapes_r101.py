"""MaskFormer R101, Cityscapes (19 classes), 512x1024 crop, 90k iterations (paper: 78.5 mIoU)."""

from configs import base


def get_config():
    config = base.use_semantic_benchmark(base.get_config(), "cityscapes")
    config.model.backbone = base.resnet(101)
    return config
