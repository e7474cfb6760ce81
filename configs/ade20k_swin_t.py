"""MaskFormer Swin-T (ImageNet-1k 224 weights, 512x512 crop), ADE20K-150, 160k iterations (paper: 46.7 mIoU)."""

from configs import base


def get_config():
    config = base.use_swin(base.get_config(), "tiny")
    return config
