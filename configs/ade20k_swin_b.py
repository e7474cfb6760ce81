"""MaskFormer Swin-B (ImageNet-22k 384 weights, 640x640 crop), ADE20K-150, 160k iterations (paper: 52.7 mIoU)."""

from configs import base


def get_config():
    config = base.use_swin(base.get_config(), "base")
    base.use_crop_640(config)
    return config
