"""MaskFormer R101, COCO-Stuff-10K (171 classes), 640x640 crop, 60k iterations of 32 (paper: 38.1 mIoU)."""

from configs import base


def get_config():
    config = base.use_semantic_benchmark(base.get_config(), "coco_stuff_10k")
    config.model.backbone = base.resnet(101)
    return config
