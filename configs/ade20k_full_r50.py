"""MaskFormer R50, ADE20K-Full (847 classes), 512x512 crop, 200k iterations (paper: 16.0 mIoU)."""

from configs import base


def get_config():
    config = base.use_semantic_benchmark(base.get_config(), "ade20k_full")
    return config
