"""MaskFormer R101c, ADE20K-Full (847 classes), 512x512 crop, 200k iterations (paper: 17.4 mIoU)."""

from configs import base


def get_config():
    config = base.use_semantic_benchmark(base.get_config(), "ade20k_full")
    config.model.backbone = base.resnet("101c")
    return config
