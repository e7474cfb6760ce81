"""MaskFormer R50, ADE20K-150, 512x512 crop, 160k iterations (paper: 44.5 mIoU)."""

from configs import base


def get_config():
    return base.get_config()
