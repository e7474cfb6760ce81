"""The demo: a small MaskFormer trained from scratch on the built-in synthetic set (no download).

Sized to learn in about fifteen minutes on 2 CPU cores: a small Swin backbone, 96x96 crops of
128x128 scenes, 7 classes, 20 queries, 3 decoder layers. It trains one target per segment (each
shape instance its own mask), so the same checkpoint answers all three tasks: semantic, panoptic
and instance (`--config.inference.task`).
"""

from configs import base


def get_config():
    config = base.get_config()
    config.model.backbone = base.swin("tiny")
    config.model.backbone.update(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=6,
                                 drop_path_rate=0.1)
    config.model.num_classes = 7
    config.model.num_queries = 20
    config.model.hidden_dim = 128
    config.model.num_heads = 4
    config.model.dim_feedforward = 256
    config.model.decoder_layers = 3
    config.model.conv_dim = 64
    config.model.mask_dim = 64

    config.dataset.name = "synthetic"
    config.dataset.synthetic_size = (128, 128)
    config.dataset.image_size = (96, 96)
    config.dataset.min_size_train = (96, 112, 128, 144, 160)
    config.dataset.max_size_train = 512
    config.dataset.min_size_test = 128
    config.dataset.max_size_test = 512
    config.dataset.target_mode = "panoptic"  # a target per instance, as COCO panoptic trains
    config.loss.max_targets = 20

    config.optimizer.learning_rate = 3e-4
    config.optimizer.weight_decay = 0.01
    config.optimizer.backbone_multiplier = 1.0
    config.optimizer.clip_grad_norm = 1.0  # the reference's 0.01 is too slow for a short from-scratch run
    config.optimizer.warmup_steps = 100
    config.optimizer.warmup_factor = 0.01
    config.batch_size = 8
    config.num_steps = 3000
    config.log_every = 100
    config.checkpoint_every = 500
    config.eval_every = 1000
    return config
