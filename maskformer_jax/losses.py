"""The MaskFormer set loss as pure functions: matching, class cross-entropy and mask losses on the
matched pairs, for every decoder layer (deep supervision, equal weights). docs/reference.md §2.

Targets follow the batch contract: `segments [B, H, W] int32` (target index per pixel, -1 for ignore,
crowd and padding) and `labels [B, T] int32` (class per target slot, -1 for padding). Ignore pixels
are negatives for every matched mask, as in the reference. Padding is either counted the same way
(the semantic recipes, whose reference pads crops with ignore) or, given `valid [B, H, W]`, absent:
mask losses and costs then cover each image's own pixels, as the reference's unpadded COCO images.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax import lax

from maskformer_jax.errors import ConfigError
from maskformer_jax.matching import PAIRWISE_MASK_COSTS, check_matching, match, matching_cost
from maskformer_jax.resize import (bilinear_taps, clamp_to_extent, downsample_valid, resize_bilinear,
                                   sample_bilinear, valid_extent)


def pixel_sum(x):
    """Σ over the last axis, [..., P] → [...].

    The `reduce_precision` to x's own format changes no value. It keeps XLA's CPU backend (jax 0.10)
    from handing a sum of products to YNNPACK, which runs it 10-20x slower than XLA's own loop (37 vs
    2 ms for [10, 512²]); elsewhere it is one free elementwise op.
    """
    info = jnp.finfo(x.dtype)
    return jnp.sum(lax.reduce_precision(x, info.nexp, info.nmant), -1)


def pixel_mean(x, valid=None):
    """Mean over the last axis, or over its `valid` entries (float {0, 1}, broadcastable to x)."""
    if valid is None:
        return pixel_sum(x) / x.shape[-1]
    return pixel_sum(x * valid) / jnp.maximum(jnp.sum(valid, -1), 1.0)  # count once per image, not per mask


def sigmoid_focal_loss(logits, targets, valid=None, alpha: float = 0.25, gamma: float = 2.0):
    """Sigmoid focal loss averaged over the last axis (its `valid` pixels if given, float {0, 1}
    broadcastable). logits, targets: [..., P] → [...]."""
    prob = jax.nn.sigmoid(logits)
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    loss = alpha_t * (1 - p_t) ** gamma * optax.sigmoid_binary_cross_entropy(logits, targets)
    return pixel_mean(loss, valid)


def dice_loss(logits, targets, valid=None):
    """1 - (2 Σ p·t + 1) / (Σ p + Σ t + 1) over the last axis (its `valid` pixels if given; targets
    are 0 outside them). logits, targets: [..., P] → [...]."""
    prob = jax.nn.sigmoid(logits)
    if valid is not None:
        prob = prob * valid
    return 1 - (2 * pixel_sum(prob * targets) + 1) / (pixel_sum(prob) + pixel_sum(targets) + 1)


def sigmoid_ce_loss(logits, targets, valid=None):
    """Sigmoid cross-entropy averaged over the last axis (its `valid` pixels if given). logits,
    targets: [..., P] → [...]."""
    return pixel_mean(optax.sigmoid_binary_cross_entropy(logits, targets), valid)


MASK_LOSSES = {"focal": sigmoid_focal_loss, "dice": dice_loss, "bce": sigmoid_ce_loss}


def class_loss(class_logits, target_classes, no_object_weight: float):
    """Weighted softmax cross-entropy: Σ w·nll / Σ w with w = no_object_weight for the "no object"
    class (index K) and 1 otherwise. class_logits: [B, Q, K+1]; target_classes: [B, Q] → scalar."""
    no_object = class_logits.shape[-1] - 1
    weight = jnp.where(target_classes == no_object, no_object_weight, 1.0)
    nll = optax.softmax_cross_entropy_with_integer_labels(class_logits.astype(jnp.float32), target_classes)
    return jnp.sum(weight * nll) / jnp.sum(weight)


def target_masks_at_points(segments, points, num_targets: int, extent=None):
    """Bilinear values of each target's binary mask at its points, without building [B, T, H, W].

    segments: [B, H, W]; points: [B, T, P, 2] (y, x) in [0, 1] of the map, or of each image's
    `extent` (int [B, 1, 2]) → [B, T, P] float32.
    """
    batch, height, width = segments.shape
    index, weight = bilinear_taps(height, width, points, extent)  # [B, T, P, 4]
    flat = index.reshape(batch, -1)
    ids = jnp.take_along_axis(segments.reshape(batch, height * width), flat, axis=-1).reshape(index.shape)
    inside = ids == jnp.arange(num_targets)[None, :, None, None]
    return jnp.sum(weight * inside, -1)


def uncertain_points(rng, mask_logits, num_points: int, oversample_ratio: float, importance_ratio: float,
                     extent=None):
    """Mask2Former's importance sampling: of `oversample_ratio * num_points` uniform candidates keep
    the `importance_ratio` share where |logit| is smallest, fill the rest uniformly at random.

    mask_logits: [B, T, h, w]; extent: int [B, 1, 2] each image's region of the map, or None (all of
    it) → points [B, T, num_points, 2] as (y, x) in [0, 1] of that region.
    """
    batch, num_targets = mask_logits.shape[:2]
    candidate_key, random_key = jax.random.split(rng)
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(num_points * importance_ratio)
    candidates = jax.random.uniform(candidate_key, (batch, num_targets, num_candidates, 2))
    logits = sample_bilinear(jax.lax.stop_gradient(mask_logits), candidates, extent)
    _, index = jax.lax.top_k(-jnp.abs(logits), num_uncertain)
    uncertain = jnp.take_along_axis(candidates, index[..., None], axis=2)
    random = jax.random.uniform(random_key, (batch, num_targets, num_points - num_uncertain, 2))
    return jnp.concatenate([uncertain, random], axis=2)


def mask_losses_dense(mask_logits, segments, terms, valid=None):
    """Mask losses at full target resolution: predictions upsampled bilinearly (half-pixel centres).

    mask_logits: [B, T, h, w] (the query matched to each target slot); segments: [B, H, W];
    terms: names in MASK_LOSSES; valid: bool [B, H, W] or None. With `valid`, the predictions are
    upsampled as maps of each image's own size and the losses cover its pixels only → {name: [B, T]}.
    """
    batch, num_targets, h, w = mask_logits.shape
    height, width = segments.shape[1:]
    weight = None
    if valid is not None:
        mask_logits = clamp_to_extent(mask_logits, valid_extent(downsample_valid(valid, h, w)))
        weight = valid.reshape(batch, 1, height * width).astype(jnp.float32)
    logits = resize_bilinear(mask_logits, height, width).reshape(batch, num_targets, height * width)
    targets = (segments.reshape(batch, 1, height * width) == jnp.arange(num_targets)[:, None]).astype(jnp.float32)
    return {name: MASK_LOSSES[name](logits, targets, weight) for name in terms}


def mask_losses_at_points(mask_logits, segments, points, terms, extents=(None, None)):
    """Mask losses on sampled points, the same points for every term.

    mask_logits: [B, T, h, w]; segments: [B, H, W]; points: [B, T, P, 2]; extents: each image's
    region (int [B, 1, 2]) of the logits and of the segments, which the points address, or None for
    the whole map → {name: [B, T]}.
    """
    logits = sample_bilinear(mask_logits, points, extents[0])
    targets = target_masks_at_points(segments, points, mask_logits.shape[1], extents[1])
    return {name: MASK_LOSSES[name](logits, targets) for name in terms}


def loss_terms(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The terms `set_loss` computes for `config.loss`: those of `weights` with a non-zero weight, in order."""
    return tuple(name for name, weight in config.weights.items() if weight)


def layer_losses(class_logits, mask_logits, assignment, segments, labels, num_masks, config, rng=None, valid=None):
    """Unweighted loss terms of one decoder layer.

    class_logits: [B, Q, K+1]; mask_logits: [B, Q, h, w]; assignment: [B, Q] target per query (-1 none);
    segments: [B, H, W]; labels: [B, T]; valid: bool [B, H, W] (padding absent) or None (counted).
    Mask terms are summed over matched targets / num_masks.
    """
    num_targets = labels.shape[-1]
    no_object = class_logits.shape[-1] - 1
    matched_class = jnp.take_along_axis(labels, jnp.maximum(assignment, 0), axis=1)
    target_classes = jnp.where(assignment >= 0, matched_class, no_object)
    losses = {}
    if "class" in loss_terms(config):
        losses["class"] = class_loss(class_logits, target_classes, config.no_object_weight)

    terms = [name for name in loss_terms(config) if name != "class"]
    if terms:
        # The query matched to each target slot; padded slots take query 0 and are masked out below.
        is_match = assignment[:, :, None] == jnp.arange(num_targets)  # [B, Q, T]
        query = jnp.argmax(is_match, axis=1)
        matched = is_match.any(axis=1) & (labels >= 0)
        logits = jnp.take_along_axis(mask_logits, query[:, :, None, None], axis=1).astype(jnp.float32)
        if config.num_points > 0:
            extents = (None, None)
            if valid is not None:  # points address each image's own region of both maps
                low = valid_extent(downsample_valid(valid, *logits.shape[2:]))
                extents = (low[:, None], valid_extent(valid)[:, None])
            points = uncertain_points(
                rng, logits, config.num_points, config.oversample_ratio, config.importance_sample_ratio, extents[0]
            )
            per_mask = mask_losses_at_points(logits, segments, points, terms, extents)
        else:
            # Recompute the full-resolution tensors in the backward pass instead of keeping them for
            # every layer: the saved residuals shrink to the [B, T, h, w] logits.
            per_mask = jax.checkpoint(mask_losses_dense, static_argnums=2)(logits, segments, tuple(terms), valid)
        for name, values in per_mask.items():
            losses[name] = jnp.sum(jnp.where(matched, values, 0.0)) / num_masks
    return losses


def validate(config: ml_collections.ConfigDict) -> None:
    """Reject a loss config that cannot work, naming the key: unknown terms or matcher, more target
    slots than queries, a point-sampled loss without sensible ratios."""
    loss = config.loss
    for key, known in (("weights", MASK_LOSSES), ("cost_weights", PAIRWISE_MASK_COSTS)):
        unknown = sorted(set(loss[key]) - set(known) - {"class"})
        if unknown:
            raise ConfigError(f"config.loss.{key} has unknown terms {unknown}; known: class, {sorted(known)}")
    check_matching(loss.matcher, loss.max_targets, config.model.num_queries)
    if loss.num_points < 0 or (loss.num_points and not (loss.oversample_ratio >= 1 and 0 <= loss.importance_sample_ratio <= 1)):
        raise ConfigError(
            "config.loss.num_points must be >= 0, with oversample_ratio >= 1 and importance_sample_ratio in [0, 1]"
        )


def set_loss(outputs, batch, config: ml_collections.ConfigDict, rng=None, valid=None):
    """Total loss and metrics for a batch: matching and loss for every decoder layer, equal weights.

    outputs: the model's dict (class_logits [L, B, Q, K+1], mask_logits [L, B, Q, h, w]);
    batch: segments [B, H, W] int32, labels [B, T] int32; config: `config.loss`; rng: needed when
    config.num_points > 0; valid: bool [B, H, W] to leave padding out of the mask losses and costs
    (None: padding counts as negatives). Under jit over a sharded global batch, num_masks and the cross-entropy
    normaliser are global sums, so the value does not depend on how the batch is split.
    Returns (total, metrics): metrics has the unweighted terms of the last layer ("loss_class",
    "loss_focal", "loss_dice"), of the auxiliary layers with a suffix ("loss_class_0", ...), the
    weighted "loss" and "num_masks".
    """
    class_logits, mask_logits = outputs["class_logits"], outputs["mask_logits"]
    segments, labels = batch["segments"], batch["labels"]
    if config.num_points > 0 and rng is None:
        raise ValueError("a point-sampled loss (config.loss.num_points > 0) needs an rng")
    cost = matching_cost(class_logits, mask_logits, segments, labels, dict(config.cost_weights), valid)
    assignment = match(cost, labels >= 0, config.matcher)  # [L, B, Q]
    num_masks = jnp.maximum(jnp.sum(labels >= 0), 1).astype(jnp.float32)

    def one_layer(_, layer):
        class_logits_l, mask_logits_l, assignment_l, index = layer
        layer_rng = None if rng is None else jax.random.fold_in(rng, index)
        losses = layer_losses(
            class_logits_l, mask_logits_l, assignment_l, segments, labels, num_masks, config, layer_rng, valid
        )
        return None, losses

    # A scan, not a Python loop: only one layer's full-resolution mask tensors are alive at a time.
    num_layers = class_logits.shape[0]
    layers = (class_logits, mask_logits, assignment, jnp.arange(num_layers))
    _, per_layer = jax.lax.scan(one_layer, None, layers)  # {name: [L]}
    total, metrics = 0.0, {"num_masks": num_masks}
    for name, values in per_layer.items():
        total = total + config.weights[name] * jnp.sum(values)
        metrics[f"loss_{name}"] = values[-1]
        metrics.update({f"loss_{name}_{layer}": values[layer] for layer in range(num_layers - 1)})
    metrics["loss"] = total
    return total, metrics
