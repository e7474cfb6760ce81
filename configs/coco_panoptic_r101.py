"""MaskFormer R101 + 6 encoder layers in the pixel decoder, COCO panoptic (paper: 47.6 PQ)."""

from configs import base


def get_config():
    config = base.use_coco_panoptic(base.get_config())
    config.model.backbone = base.resnet(101)
    config.model.encoder_layers = 6
    return config
