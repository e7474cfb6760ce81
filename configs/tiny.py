"""A tiny MaskFormer (small Swin, 2 decoder layers, 10 queries) on 64x64 synthetic crops, for fast tests."""

from configs import base


def get_config():
    config = base.get_config()
    config.model.backbone = base.swin("tiny")
    config.model.backbone.update(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), window_size=4)
    config.model.num_queries = 10
    config.model.hidden_dim = 64
    config.model.num_heads = 4
    config.model.dim_feedforward = 128
    config.model.decoder_layers = 2
    config.model.conv_dim = 32  # GroupNorm uses 32 groups, so widths are multiples of 32
    config.model.mask_dim = 32
    config.dataset.name = "synthetic"
    config.model.num_classes = 7  # the synthetic set's classes
    config.dataset.synthetic_size = (96, 96)
    config.dataset.image_size = (64, 64)
    config.dataset.min_size_train = (48, 64, 80, 96)
    config.dataset.max_size_train = 256
    config.dataset.min_size_test = 64
    config.dataset.max_size_test = 256
    config.loss.max_targets = 10
    config.batch_size = 2
    return config
