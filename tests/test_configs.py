"""Every paper config builds at full size (shapes only) with the paper's parameter counts."""

import importlib
import pathlib

import jax
import jax.numpy as jnp
import pytest

from maskformer_jax.models import abstract_variables, build_model
from maskformer_jax.summary import forward_flops, format_summary, parameter_counts

CONFIG_DIR = pathlib.Path(__file__).parent.parent / "configs"
PAPER_CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.py")
                       if p.stem.startswith(("ade20k_", "coco_", "cityscapes_", "mapillary_")))

# (exact count from the official module shapes, docs/reference.md §8, in millions; paper's rounded count)
PARAMETERS = {
    "ade20k_r50": (41.3, 41),
    "ade20k_r101": (60.3, 60),
    "ade20k_r101c": (60.4, None),
    "ade20k_swin_t": (41.8, 42),
    "ade20k_swin_s": (63.1, 63),
    "ade20k_swin_b": (101.8, 102),
    "ade20k_swin_l": (211.6, 212),
    "coco_panoptic_r50": (45.1, 45),
    "coco_panoptic_r101": (64.1, 64),
    "coco_panoptic_swin_t": (None, 42),
    "coco_panoptic_swin_s": (None, 63),
    "coco_panoptic_swin_b": (None, 102),
    "coco_panoptic_swin_l": (None, 212),
    # The other benchmarks: the ADE20K-150 model of the same backbone with a class head Linear(256, K + 1),
    # i.e. (K - 150) x 257 parameters more (the paper gives no counts).
    "coco_stuff_r50": (41.31, None),
    "coco_stuff_r101": (60.31, None),
    "ade20k_full_r50": (41.49, None),
    "ade20k_full_r101c": (60.60, None),
    "cityscapes_r101": (60.27, None),
    "cityscapes_r101c": (60.39, None),
    "mapillary_r50": (41.29, None),
    "ade20k_panoptic_r50": (45.07, None),
    "ade20k_panoptic_r101": (64.06, None),
}

SAME_MODEL = {"coco_stuff_r50": "ade20k_r50", "coco_stuff_r101": "ade20k_r101", "ade20k_full_r50": "ade20k_r50",
              "ade20k_full_r101c": "ade20k_r101c", "cityscapes_r101": "ade20k_r101", "cityscapes_r101c": "ade20k_r101c",
              "mapillary_r50": "ade20k_r50", "ade20k_panoptic_r50": "coco_panoptic_r50",
              "ade20k_panoptic_r101": "coco_panoptic_r101"}


def load(name):
    return importlib.import_module(f"configs.{name}").get_config()


def test_every_paper_config_is_listed():
    assert PAPER_CONFIGS == sorted(PARAMETERS)


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_full_config_parameter_count_matches_paper(name):
    config = load(name)
    total = sum(parameter_counts(abstract_variables(config.model)).values())
    exact, paper = PARAMETERS[name]
    if exact is not None:
        assert abs(total / 1e6 - exact) < 0.05, total
    if name in SAME_MODEL:  # the same model but for the class count: only the class head differs
        reference = load(SAME_MODEL[name])
        difference = total - sum(parameter_counts(abstract_variables(reference.model)).values())
        assert difference == (config.model.num_classes - reference.model.num_classes) * 257
    if paper is not None:
        assert abs(total / 1e6 - paper) / paper < 0.02, total


@pytest.mark.parametrize("name", [name for name in PAPER_CONFIGS if name not in SAME_MODEL])
def test_full_config_forward_shapes_at_crop_size(name):  # the others: their train step, test_benchmark_datasets.py
    config = load(name)
    model = build_model(config.model)
    height, width = config.dataset.image_size
    images = jax.ShapeDtypeStruct((2, height, width, 3), jnp.float32)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, rngs={"dropout": jax.random.key(0)}),
                         abstract_variables(config.model), images)
    classes, queries = config.model.num_classes, config.model.num_queries
    assert out["class_logits"].shape == (6, 2, queries, classes + 1)
    assert out["mask_logits"].shape == (6, 2, queries, height // 4, width // 4)


def test_configs_carry_the_paper_recipes():
    r50, swin_b, coco_r50, coco_swin_l = map(load, ["ade20k_r50", "ade20k_swin_b", "coco_panoptic_r50",
                                                     "coco_panoptic_swin_l"])
    assert (r50.optimizer.learning_rate, r50.optimizer.weight_decay, r50.optimizer.backbone_multiplier) == (
        1e-4, 1e-4, 0.1)
    assert (r50.batch_size, r50.num_steps, r50.dataset.image_size) == (16, 160_000, (512, 512))
    assert r50.dataset.min_size_train[0] == 256 and r50.dataset.min_size_train[-1] == 1024
    assert (swin_b.optimizer.learning_rate, swin_b.optimizer.weight_decay, swin_b.optimizer.warmup_steps) == (
        6e-5, 0.01, 1500)
    assert swin_b.dataset.image_size == (640, 640) and swin_b.model.backbone.window_size == 12
    assert (coco_r50.model.num_classes, coco_r50.dataset.num_classes, coco_r50.model.encoder_layers) == (133, 133, 6)
    assert (coco_r50.batch_size, coco_r50.num_steps, coco_r50.optimizer.decay_steps) == (64, 554_400, (369_600,))
    assert coco_swin_l.model.encoder_layers == 0 and coco_swin_l.dataset.max_size_train == 1000


def test_summary_totals_and_flops_on_tiny_config():
    config = load("tiny")
    variables = jax.eval_shape(build_model(config.model).init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    total = sum(leaf.size for leaf in jax.tree.leaves(variables))
    assert sum(parameter_counts(variables, depth=1).values()) == total
    assert sum(parameter_counts(variables, depth=3).values()) == total
    text = format_summary(config)
    assert f"{total:,}" in text and "forward FLOPs at 1x64x64" in text
    # Convolutions and pixel-wise einsums dominate: 4x the pixels gives 3-4x the FLOPs.
    small, large = forward_flops(config.model, (64, 64)), forward_flops(config.model, (128, 128))
    assert 3.0 < large / small <= 4.0
