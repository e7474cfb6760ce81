"""MaskFormer R101, ADE20K-150, 512x512 crop, 160k iterations (paper: 45.5 mIoU)."""

from configs import base


def get_config():
    config = base.get_config()
    config.model.backbone = base.resnet(101)
    return config
