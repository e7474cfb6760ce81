"""The set loss against Hugging Face's MaskFormerLoss, padding invariance, empty images, point sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.models.maskformer.modeling_maskformer import MaskFormerHungarianMatcher, MaskFormerLoss

from configs import base
from maskformer_jax.losses import mask_losses_at_points, mask_losses_dense, set_loss, uncertain_points, validate
from maskformer_jax.resize import sample_bilinear

LAYERS, QUERIES, CLASSES, HEIGHT, WIDTH = 6, 12, 7, 64, 48


def random_batch(seed, num_slots=10, targets_per_image=(4, 0, 7), num_queries=QUERIES):
    """Outputs and targets in the batch contract; image 1 has no targets (all ignore)."""
    rng = np.random.default_rng(seed)
    batch = len(targets_per_image)
    outputs = {
        "class_logits": rng.normal(size=(LAYERS, batch, num_queries, CLASSES + 1)).astype(np.float32),
        "mask_logits": 3 * rng.normal(size=(LAYERS, batch, num_queries, HEIGHT // 4, WIDTH // 4)).astype(np.float32),
    }
    segments = np.full((batch, HEIGHT, WIDTH), -1, np.int32)
    labels = np.full((batch, num_slots), -1, np.int32)
    for b, count in enumerate(targets_per_image):
        slots = rng.choice(num_slots, count, replace=False)  # real targets anywhere among the slots
        labels[b, slots] = rng.integers(0, CLASSES, count)
        blocks = rng.integers(-1, count, size=(HEIGHT // 8, WIDTH // 8)) if count else None
        if count:
            segments[b] = np.where(blocks >= 0, slots[np.maximum(blocks, 0)], -1).repeat(8, 0).repeat(8, 1)
    return outputs, {"segments": segments, "labels": labels}


def hf_losses(outputs, batch):
    """Hugging Face's loss dict for the same outputs and targets (all layers, unweighted)."""
    criterion = MaskFormerLoss(
        CLASSES, MaskFormerHungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0), {}, eos_coef=0.1
    )
    mask_labels, class_labels = [], []
    for segments, labels in zip(batch["segments"], batch["labels"]):
        slots = np.flatnonzero(labels >= 0)
        mask_labels.append(torch.from_numpy(np.stack([segments == s for s in slots] or
                                                     [np.zeros_like(segments, bool)])[: len(slots)]).float())
        class_labels.append(torch.from_numpy(labels[slots]).long())
    masks, classes = (torch.from_numpy(outputs[k]) for k in ("mask_logits", "class_logits"))
    auxiliary = [{"masks_queries_logits": masks[i], "class_queries_logits": classes[i]} for i in range(LAYERS - 1)]
    with torch.no_grad():
        losses = criterion(masks[-1], classes[-1], mask_labels, class_labels, auxiliary)
    names = {"loss_cross_entropy": "loss_class", "loss_mask": "loss_focal", "loss_dice": "loss_dice"}
    renamed = {}
    for key, value in losses.items():
        stem = next(n for n in names if key.startswith(n))
        renamed[names[stem] + key[len(stem):]] = float(value)
    return renamed


@pytest.mark.parametrize("solver", ["jax", "scipy"])
def test_set_loss_equals_hf_maskformer_loss(solver):
    config = base.get_config().loss
    config.matcher = solver
    outputs, batch = random_batch(0)
    total, metrics = jax.jit(lambda o, b: set_loss(o, b, config))(outputs, batch)
    expected = hf_losses(outputs, batch)
    assert len(expected) == 18
    for name, value in expected.items():
        assert float(metrics[name]) == pytest.approx(value, rel=1e-5), name
    weights = {"class": 1.0, "focal": 20.0, "dice": 1.0}
    expected_total = sum(weights[name.split("_")[1]] * value for name, value in expected.items())
    assert float(total) == pytest.approx(expected_total, rel=1e-5)
    assert float(metrics["num_masks"]) == 11


def test_loss_does_not_depend_on_the_number_of_padded_slots():
    """The same real targets in 20 or in 60 target slots give the same loss."""
    config = base.get_config().loss
    outputs, batch = random_batch(1, num_slots=20, num_queries=64)
    loss = jax.jit(lambda o, b: set_loss(o, b, config))
    _, narrow = loss(outputs, batch)
    wide = dict(batch, labels=np.pad(batch["labels"], ((0, 0), (0, 40)), constant_values=-1))
    _, padded = loss(outputs, wide)
    assert set(narrow) == set(padded)
    for name in narrow:
        assert float(padded[name]) == pytest.approx(float(narrow[name]), rel=1e-6, abs=1e-7), name


def test_all_ignore_images_give_finite_loss_and_gradient():
    """Images whose pixels are all ignore contribute only "no object" cross-entropy."""
    config = base.get_config().loss
    outputs, batch = random_batch(2, targets_per_image=(0, 0))
    loss_and_gradient = jax.jit(jax.value_and_grad(lambda o, b: set_loss(o, b, config), has_aux=True))
    (total, metrics), gradient = loss_and_gradient(outputs, batch)
    assert float(metrics["num_masks"]) == 1  # clamped
    assert float(metrics["loss_focal"]) == float(metrics["loss_dice"]) == 0.0
    assert float(total) == pytest.approx(sum(float(metrics[f"loss_class{s}"]) for s in ["", "_0", "_1", "_2", "_3", "_4"]))
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(gradient))
    assert float(jnp.abs(gradient["mask_logits"]).max()) == 0.0  # no mask is supervised
    # A mixed batch: the empty image still gets a gradient towards "no object" for every query.
    outputs, batch = random_batch(3)
    _, gradient = loss_and_gradient(outputs, batch)
    assert np.isfinite(gradient["class_logits"]).all() and float(jnp.abs(gradient["class_logits"][:, 1]).min()) > 0


def pixel_centres(batch, num_targets, height, width):
    y, x = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width, indexing="ij")
    points = np.stack([y.ravel(), x.ravel()], -1).astype(np.float32)
    return np.broadcast_to(points, (batch, num_targets, height * width, 2))


def test_point_sampled_losses_at_every_pixel_centre_equal_dense_losses():
    _, batch = random_batch(4)
    logits = np.random.default_rng(5).normal(size=(3, 10, HEIGHT // 4, WIDTH // 4)).astype(np.float32) * 3
    terms = ["focal", "dice", "bce"]
    dense = mask_losses_dense(logits, batch["segments"], terms)
    sampled = mask_losses_at_points(logits, batch["segments"], pixel_centres(3, 10, HEIGHT, WIDTH), terms)
    for name in terms:
        np.testing.assert_allclose(sampled[name], dense[name], rtol=1e-5, atol=1e-6)


def test_importance_sampling_prefers_uncertain_points():
    logits = jnp.asarray(np.random.default_rng(6).normal(size=(2, 3, 16, 16)).astype(np.float32) * 4)
    points = uncertain_points(jax.random.key(0), logits, num_points=400, oversample_ratio=3, importance_ratio=0.75)
    assert points.shape == (2, 3, 400, 2) and float(points.min()) >= 0 and float(points.max()) <= 1
    certainty = jnp.abs(sample_bilinear(logits, points))
    assert float(certainty[..., :300].mean()) < 0.5 * float(certainty[..., 300:].mean())


def test_point_sampled_set_loss_approaches_dense_loss_with_many_uniform_points():
    config = base.get_config().loss
    outputs, batch = random_batch(7)
    _, dense = set_loss(outputs, batch, config)
    config.num_points = 4096
    config.importance_sample_ratio = 0.0  # uniform points: an unbiased estimate of the dense mean
    _, sampled = jax.jit(lambda o, b, k: set_loss(o, b, config, k))(outputs, batch, jax.random.key(1))
    assert float(sampled["loss_class"]) == pytest.approx(float(dense["loss_class"]), rel=1e-6)
    for name in ("loss_focal", "loss_dice"):
        assert float(sampled[name]) == pytest.approx(float(dense[name]), rel=0.03), name
    with pytest.raises(ValueError, match="needs an rng"):
        set_loss(outputs, batch, config)


def test_validate_names_the_bad_key():
    config = base.get_config()
    validate(config)
    config.loss.max_targets = 101
    with pytest.raises(ValueError, match=r"config.loss.max_targets \(101\) exceeds config.model.num_queries \(100\)"):
        validate(config)
    config = base.get_config()
    config.loss.weights.unlock()
    config.loss.weights["lovasz"] = 1.0
    with pytest.raises(ValueError, match=r"config.loss.weights has unknown terms \['lovasz'\]"):
        validate(config)
    config = base.get_config()
    config.loss.matcher = "greedy"
    with pytest.raises(ValueError, match="config.loss.matcher"):
        validate(config)
