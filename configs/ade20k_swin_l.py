"""MaskFormer Swin-L (ImageNet-22k 384 weights, 640x640 crop), ADE20K-150, 160k iterations (paper: 54.1 mIoU)."""

from configs import base


def get_config():
    config = base.use_swin(base.get_config(), "large")
    base.use_crop_640(config)
    return config
