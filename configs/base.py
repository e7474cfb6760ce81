"""Shared defaults: MaskFormer R50 on ADE20K-150 semantic (docs/reference.md §1, §5, §6).

Experiment files start from `get_config()` and change what differs. Backbone presets: `resnet(50)`,
`resnet(101)`, `resnet("101c")`, `swin("tiny" | "small" | "base" | "large")`.
"""

import ml_collections


def resnet(depth) -> ml_collections.ConfigDict:
    """ResNet-50/101 (7x7 stem) or "101c" (three 3x3 stem convs, res5 multi-grid dilations 1, 2, 4)."""
    depths = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), "101c": (3, 4, 23, 3)}[depth]
    return ml_collections.ConfigDict(
        dict(
            name="resnet",
            depths=depths,  # bottleneck blocks in res2..res5
            deep_stem=depth == "101c",  # R101c: 3x3 convs 64, 64, 128 instead of one 7x7
            res5_multi_grid=(1, 2, 4) if depth == "101c" else (1, 1, 1),  # dilations of res5's 3x3 convs
        )
    )


def swin(size: str) -> ml_collections.ConfigDict:
    """Swin-T/S (window 7, ImageNet-1k 224) or Swin-B/L (window 12, ImageNet-22k 384)."""
    embed_dim, depths, num_heads, window_size = {
        "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24), 7),
        "small": (96, (2, 2, 18, 2), (3, 6, 12, 24), 7),
        "base": (128, (2, 2, 18, 2), (4, 8, 16, 32), 12),
        "large": (192, (2, 2, 18, 2), (6, 12, 24, 48), 12),
    }[size]
    return ml_collections.ConfigDict(
        dict(
            name="swin",
            embed_dim=embed_dim,  # channels of res2; doubled at each stage
            depths=depths,  # blocks per stage
            num_heads=num_heads,  # attention heads per stage
            window_size=window_size,
            drop_path_rate=0.3,  # stochastic depth, rising linearly to this over all blocks
            patch_size=4,
            mlp_ratio=4.0,
        )
    )


def use_swin(config: ml_collections.ConfigDict, size: str) -> ml_collections.ConfigDict:
    """Swin backbone with its optimizer recipe: lr 6e-5, weight decay 0.01, no backbone multiplier,
    1500 linear warmup steps from a factor of 1e-6 (docs/reference.md §6)."""
    config.model.backbone = swin(size)
    config.optimizer.learning_rate = 6e-5
    config.optimizer.weight_decay = 0.01
    config.optimizer.backbone_multiplier = 1.0
    config.optimizer.warmup_steps = 1500
    config.optimizer.warmup_factor = 1e-6
    return config


def use_crop_640(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The 640x640 ADE20K recipe of Swin-B/L: short sides 320..1280 step 64, long side <= 2560."""
    config.dataset.image_size = (640, 640)
    config.dataset.min_size_train = tuple(range(320, 1281, 64))
    config.dataset.max_size_train = 2560
    config.dataset.min_size_test = 640
    config.dataset.max_size_test = 2560
    config.eval.tta_sizes = (320, 480, 640, 800, 960, 1120)
    config.eval.tta_max_size = 4480
    return config


# The semantic benchmarks' recipes (the official configs/<dataset>/Base-*.yaml; docs/reference.md §5, §8):
# classes and ignore value, crop (H, W), training short sides of 0.5x..max_scale x train_short_side (long
# side <= max_size_train), test size, batch, iterations and the multi-scale test sizes of TEST.AUG.
SEMANTIC_BENCHMARKS = {
    "coco_stuff_10k": dict(num_classes=171, ignore_label=255, crop=(640, 640), train_short_side=640, max_scale=1.5,
                           max_size_train=2560, min_size_test=640, max_size_test=2560, batch_size=32,
                           num_steps=60_000, tta_sizes=(320, 480, 640, 800, 960, 1120), tta_max_size=4480),
    "ade20k_full": dict(num_classes=847, ignore_label=65535, crop=(512, 512), train_short_side=512, max_scale=2.0,
                        max_size_train=2048, min_size_test=512, max_size_test=2048, batch_size=16,
                        num_steps=200_000, tta_sizes=(256, 384, 512, 640, 768, 896), tta_max_size=3584),
    "cityscapes": dict(num_classes=19, ignore_label=255, crop=(512, 1024), train_short_side=1024, max_scale=2.0,
                       max_size_train=4096, min_size_test=1024, max_size_test=2048, batch_size=16, num_steps=90_000,
                       tta_sizes=(512, 768, 1024, 1280, 1536, 1792), tta_max_size=4096),
    "mapillary_vistas": dict(num_classes=65, ignore_label=65, crop=(1280, 1280), train_short_side=2048, max_scale=2.0,
                             max_size_train=8192, min_size_test=2048, max_size_test=2048, batch_size=16,
                             num_steps=300_000, tta_sizes=(), tta_max_size=8192),  # no official TEST.AUG
}


def use_semantic_benchmark(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """One of SEMANTIC_BENCHMARKS with its official recipe (the ADE20K optimizer and schedule otherwise)."""
    recipe = SEMANTIC_BENCHMARKS[name]
    config.dataset.name = name
    config.model.num_classes = recipe["num_classes"]
    config.dataset.ignore_label = recipe["ignore_label"]
    config.dataset.image_size = recipe["crop"]
    steps = range(5, round(recipe["max_scale"] * 10) + 1)  # the reference's int(x * 0.1 * size), x = 5..
    config.dataset.min_size_train = tuple(int(x * 0.1 * recipe["train_short_side"]) for x in steps)
    config.dataset.max_size_train = recipe["max_size_train"]
    config.dataset.min_size_test = recipe["min_size_test"]
    config.dataset.max_size_test = recipe["max_size_test"]
    config.batch_size = recipe["batch_size"]
    config.num_steps = recipe["num_steps"]
    config.eval.tta_sizes = recipe["tta_sizes"]
    config.eval.tta_max_size = recipe["tta_max_size"]
    # a semantic label map is one ground-truth segment per class: ADE20K-Full's 847 need the slots
    config.eval.max_segments = max(config.eval.max_segments, recipe["num_classes"])
    return config


def use_ade20k_panoptic(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """ADE20K panoptic (150 classes: 100 things, 50 stuff): the 640 crop recipe of ADE20K-150 with a
    target per segment (the reference's mask_former_panoptic mapper), 720k iterations, panoptic
    inference with an object threshold of 0.7."""
    use_crop_640(config)
    config.dataset.name = "ade20k_panoptic"
    config.dataset.target_mode = "panoptic"
    config.inference.task = "panoptic"
    config.inference.object_mask_threshold = 0.7
    config.inference.overlap_threshold = 0.8
    config.num_steps = 720_000
    return config


def use_coco_panoptic(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """COCO panoptic: 133 classes, DETR-style augmentation, batch 64, 554,400 steps with a x0.1 step at
    369,600, 10 no-op warmup steps (docs/reference.md §5, §6).

    The reference trains one unpadded image per GPU. Deliberate differences, each for static shapes:
    - images lie on an 800x1344 or 1344x800 canvas; the padding is absent from losses, costs,
      attention, positions and GroupNorm statistics, but the backbone's convolutions at the image's
      bottom and right edges see zeros of the input and activations of the layers below where the
      reference sees each layer's own zero padding;
    - mask logits are upsampled x4 and cropped to the image, where the reference resizes them to the
      image size exactly (the same when the image's sides are multiples of 4);
    - batches are grouped by the orientation of the augmented image, and each epoch has a fixed
      number of batches, so a few examples (fewer than 3 batches) repeat per epoch;
    - an image with more non-crowd segments than loss.max_targets (100) is an error unless
      dataset.drop_smallest_targets is set (the reference matches 100 of them and counts all in
      the normaliser);
    - evaluation pads images to a multiple of 32 (absent, as in training) to batch them.
    """
    config.model.num_classes = 133
    config.dataset.name = "coco_panoptic"
    config.dataset.transform = "detr"
    config.dataset.target_mode = "panoptic"
    # Training batches are grouped by orientation onto two canvases that follow from the resize limits
    # (short side <= 800, long side <= 1333, rounded up to 32): 800x1344 and 1344x800. Their padding is
    # absent (dataset.padding), as in the reference's one-image-per-GPU run. image_size is the landscape
    # canvas, for tools that need one size (summary, benchmarks).
    config.dataset.image_size = (800, 1344)
    config.dataset.min_size_train = tuple(range(480, 801, 32))
    config.dataset.max_size_train = 1333
    config.dataset.min_size_test = 800
    config.dataset.max_size_test = 1333
    # The reference tests COCO one image at a time without padding; padding to 32 instead makes the
    # sizes fall into buckets that compile once (docs/reference.md §4: padding changes the outputs slightly).
    config.dataset.size_divisibility = 32
    config.inference.task = "panoptic"
    config.batch_size = 64
    config.num_steps = 554_400
    config.optimizer.schedule = "step"
    config.optimizer.decay_steps = (369_600,)
    config.optimizer.warmup_steps = 10
    config.optimizer.warmup_factor = 1.0
    return config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.model = ml_collections.ConfigDict()
    config.model.backbone = resnet(50)
    config.model.num_classes = 150  # K; the class head has K + 1 outputs, the last is "no object"
    config.model.num_queries = 100
    config.model.hidden_dim = 256  # width of the query decoder
    config.model.num_heads = 8
    config.model.dim_feedforward = 2048
    config.model.dropout = 0.1
    config.model.decoder_layers = 6
    config.model.conv_dim = 256  # pixel decoder FPN width
    config.model.mask_dim = 256  # per-pixel and mask embedding width
    config.model.encoder_layers = 0  # transformer encoder layers on res5 in the pixel decoder (COCO R50/R101: 6)
    config.model.enforce_input_projection = False  # 1x1 conv before the decoder even when widths agree
    config.model.dtype = "float32"  # activations: "float32" or "bfloat16"; parameters stay float32
    # Precision of every convolution, dense layer and einsum of the model, loss and matching costs:
    # "default" (XLA's choice: TF32 / bfloat16 passes for float32 on GPUs and TPUs, fast), "high", or
    # "highest" (full float32, ~3-6x slower matmuls on accelerators; parity checks). CPUs are unaffected.
    config.model.precision = "default"
    # Recompute activations in the backward pass instead of keeping them (jax.checkpoint per block):
    # less memory for ~1/3 more compute. Backbone blocks; pixel decoder convs and transformer layers.
    config.model.remat_backbone = False
    config.model.remat_decoder = False

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = "ade20k"
    config.dataset.ignore_label = 255
    config.dataset.num_classes = config.model.get_ref("num_classes")
    # (H, W) of training images: the crop, padded to it ("semantic"); "detr" derives its two canvases
    # from min_size_train and max_size_train (transforms.training_canvases).
    config.dataset.image_size = (512, 512)
    config.dataset.min_size_train = tuple(int(0.1 * x * 512) for x in range(5, 21))  # short side choices
    config.dataset.max_size_train = 2048
    config.dataset.min_size_test = 512
    config.dataset.max_size_test = 2048
    config.dataset.size_divisibility = 32  # evaluation images are padded to a multiple of this
    config.dataset.root = ""  # dataset folder (ADE20K: the folder holding ADEChallengeData2016)
    config.dataset.transform = "semantic"  # training augmentation: "semantic" or "detr" (COCO panoptic)
    # Training padding: "absent" (images 0 after normalisation; no mask loss, cost, attention or
    # position share: the reference's unpadded one-image-per-GPU COCO run) or "counted" (the semantic
    # mappers' 128 / ignore padding is part of the crop). "" = absent for "detr", counted for "semantic".
    config.dataset.padding = ""
    config.dataset.target_mode = "semantic"  # "semantic": a target per class; "panoptic": per segment
    config.dataset.single_category_max_area = 1.0  # crop rule; 1.0 (every paper config) turns it off
    config.dataset.crop_min_sizes = (400, 500, 600)  # "detr": first resize of the crop branch (p = 0.5)
    config.dataset.crop_size_range = (384, 600)  # "detr": random crop side range of the crop branch
    config.dataset.drop_smallest_targets = False  # too many segments: drop the smallest instead of failing
    config.dataset.reduce_zero_label = False  # semantic_folder: label 0 is ignore, v becomes v - 1
    # instance evaluation: a COCO instances JSON (relative to root, e.g. "annotations/instances_val2017.json")
    # as the ground truth; "" derives it from the panoptic annotations' thing segments.
    config.dataset.instances_json = ""
    config.dataset.tfds_name = ""  # name "tfds": e.g. "ade20k_semantic" or "coco/2017_panoptic:1.1.0"
    config.dataset.tfds_data_dir = ""  # name "tfds": the TFDS data folder ("" = TFDS's default)
    config.dataset.num_workers = 0  # grain worker processes (0: decode in threads of this process)
    config.dataset.read_threads = 4  # grain threads reading and transforming examples
    config.dataset.synthetic_train_examples = 2000  # name "synthetic": size of the built-in set
    config.dataset.synthetic_eval_examples = 200
    config.dataset.synthetic_size = (128, 128)

    config.inference = ml_collections.ConfigDict()
    config.inference.task = "semantic"  # "semantic", "panoptic" or "instance"
    config.inference.object_mask_threshold = 0.8  # panoptic: keep queries with a higher class score
    config.inference.overlap_threshold = 0.8  # panoptic: keep segments that keep this share of their mask
    config.inference.top_k = 100  # instance: (query, class) pairs kept per image

    config.eval = ml_collections.ConfigDict()
    config.eval.split = "validation"
    config.eval.batch_size = 8  # per process; images of one padded size are batched together
    config.eval.num_examples = 0  # evaluate the first this many examples of the split (0: all)
    # write semantic PNGs, for panoptic a COCO panoptic PNG folder + JSON, for instance the COCO results
    # JSON (instances_results.json) to <workdir>/predictions_<split>
    config.eval.save_predictions = False
    # Test-time augmentation (semantic): the short sides below (long side <= tta_max_size), and with
    # tta_flip each also mirrored; the semantic scores of all views are averaged. docs/reference.md §4.
    config.eval.tta = False
    config.eval.tta_sizes = (256, 384, 512, 640, 768, 896)
    config.eval.tta_max_size = 3584
    config.eval.tta_flip = True
    # Sliding-window inference (semantic): dataset.image_size windows every window_stride pixels
    # (() = two thirds of the window) over images larger than a window, scores averaged where they overlap.
    config.eval.sliding_window = False
    config.eval.window_stride = ()
    config.eval.max_segments = 256  # ground-truth segment slots per image (an image with more is an error)
    # Predictions are resized to the original image size on a canvas rounded up to a multiple of this:
    # one compiled program per (padded input size, canvas size) pair.
    config.eval.canvas_divisibility = 128

    config.loss = ml_collections.ConfigDict()
    # Loss terms and their weights: "class" (cross-entropy) and the mask losses of losses.MASK_LOSSES.
    # A term with weight 0 is not computed.
    config.loss.weights = {"class": 1.0, "focal": 20.0, "dice": 1.0, "bce": 0.0}
    config.loss.no_object_weight = 0.1  # cross-entropy weight of the "no object" class
    # Matching cost terms and weights: "class" (-probability) and matching.PAIRWISE_MASK_COSTS.
    config.loss.cost_weights = {"class": 1.0, "focal": 20.0, "dice": 1.0, "bce": 0.0}
    config.loss.matcher = "jax"  # "jax" (exact, on device) or "scipy" (exact, host callback)
    config.loss.max_targets = 100  # target slots per image (T); must not exceed num_queries
    # Mask losses on sampled points (Mask2Former) instead of every pixel: 0 = dense (the paper),
    # 12544 = Mask2Former's setting.
    config.loss.num_points = 0
    config.loss.oversample_ratio = 3.0  # candidates per point for importance sampling
    config.loss.importance_sample_ratio = 0.75  # share of points taken where the prediction is uncertain

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.learning_rate = 1e-4
    config.optimizer.weight_decay = 1e-4
    config.optimizer.backbone_multiplier = 0.1  # backbone lr = learning_rate * this
    config.optimizer.clip_grad_norm = 0.01  # global norm over the full model
    config.optimizer.schedule = "poly"  # "poly" (power below) or "step" (decay_factor at decay_steps)
    config.optimizer.poly_power = 0.9
    config.optimizer.decay_steps = ()
    config.optimizer.decay_factor = 0.1
    config.optimizer.warmup_steps = 0
    config.optimizer.warmup_factor = 1.0  # lr factor at step 0, rising linearly to 1 over warmup_steps
    # Updates with non-finite gradients are skipped; training stops after this many in a row.
    config.optimizer.max_consecutive_nonfinite = 10

    config.batch_size = 16  # global, over all devices and hosts
    config.num_steps = 160_000
    config.fsdp = False  # shard large parameters and optimizer moments over the data axis
    config.init_from = ""  # a checkpoint to take the weights (not the optimizer state) from
    # Fine-tuning with another class or query count: initialise the variables whose shapes differ
    # from init_from's (class head, query embeddings) afresh instead of failing; they are listed.
    config.init_reinitialize_mismatched = False
    config.log_every = 50  # console / TensorBoard / metrics.jsonl every this many steps
    # jax's persistent compilation cache, so that a restarted or resumed run does not compile again:
    # "" = $JAX_COMPILATION_CACHE_DIR if set, else <workdir>/compilation_cache; "none" turns it off.
    config.compilation_cache_dir = ""
    config.checkpoint_every = 5000  # the reference's checkpoint period
    config.checkpoints_to_keep = 3
    config.eval_every = 0  # steps between evaluations on the validation split (0: never)
    return config
