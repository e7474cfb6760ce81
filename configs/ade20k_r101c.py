"""MaskFormer R101c, ADE20K-150, 512x512 crop, 160k iterations (paper: 46.0 mIoU)."""

from configs import base


def get_config():
    config = base.get_config()
    config.model.backbone = base.resnet("101c")
    return config
