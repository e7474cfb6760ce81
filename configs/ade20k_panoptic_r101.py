"""MaskFormer R101 + 6 encoder layers, ADE20K panoptic, 640x640 crop, 720k iterations (paper: 35.7 PQ)."""

from configs import base


def get_config():
    config = base.use_ade20k_panoptic(base.get_config())
    config.model.backbone = base.resnet(101)
    config.model.encoder_layers = 6
    return config
