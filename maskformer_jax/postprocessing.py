"""Turning model outputs into segmentations: semantic, panoptic and instance. docs/reference.md §4.

Everything here is jittable with static shapes. Images of a batch differ in size, so sizes travel as
arrays and results live on a fixed canvas whose pixels outside the image are flagged invalid.
"""

import jax
import jax.numpy as jnp

from maskformer_jax.resize import resize_bilinear, resize_bilinear_per_image


def semantic_probabilities(class_logits, mask_probs):
    """Σ_q softmax(class_q)[:K] · mask_q. class_logits [B, Q, K+1], mask_probs [B, Q, H, W] → [B, K, H, W].

    The "no object" column is dropped after the softmax, without renormalising.
    """
    probs = jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)[..., :-1]
    return jnp.einsum("bqk,bqhw->bkhw", probs, mask_probs.astype(jnp.float32))


def semantic_scores(class_logits, mask_logits, height: int, width: int):
    """Semantic scores [B, K, height, width] of mask logits [B, Q, h, w] bilinearly upsampled first."""
    masks = jax.nn.sigmoid(resize_bilinear(mask_logits.astype(jnp.float32), height, width))
    return semantic_probabilities(class_logits, masks)


def resize_to_original(maps, sizes, original_sizes, canvas, flip=None):
    """The reference's post-processing: crop each map to its image and resize it (bilinear,
    align_corners=False) to the original image size, placed at the top-left of a fixed canvas.

    maps: [B, C, Hp, Wp] (padded input resolution); sizes, original_sizes: int [B, 2] (h, w) of the
    resized image inside the padding and of the original image; canvas: static (Ho, Wo) >= every
    original size; flip: optional bool [B], mirror the result horizontally (undoing a flipped input)
    → [B, C, Ho, Wo] float32 (values outside the original size are padding).
    """
    return resize_bilinear_per_image(maps.astype(jnp.float32), sizes, original_sizes, canvas, flip)


def canvas_mask(original_sizes, canvas):
    """bool [B, Ho, Wo]: True inside each original image on the canvas."""
    rows = jnp.arange(canvas[0])[None, :, None] < original_sizes[:, 0, None, None]
    columns = jnp.arange(canvas[1])[None, None, :] < original_sizes[:, 1, None, None]
    return rows & columns


def panoptic_inference(class_logits, mask_logits, valid, is_thing, object_mask_threshold: float,
                       overlap_threshold: float):
    """MaskFormer's panoptic rule (docs/reference.md §4): confident queries compete per pixel for score x mask
    probability; a query keeps its segment if it wins at least `overlap_threshold` of its own mask
    (sigmoid >= 0.5); all segments of one stuff class merge into the first one.

    class_logits [B, Q, K+1]; mask_logits [B, Q, H, W] at the output resolution; valid bool [B, H, W]
    (pixels inside the image); is_thing bool [K].
    Returns segment_map int32 [B, H, W]: the query whose segment covers the pixel (for merged stuff
    the first query of the class), -1 for void; and segment_classes int32 [B, Q]: the class of the
    segment a query heads, -1 for queries that head no segment. Segments in query order are the
    reference's segment ids 1, 2, ...
    """
    num_classes = class_logits.shape[-1] - 1
    probs = jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)
    scores, labels = probs.max(-1), probs.argmax(-1)
    kept = (labels != num_classes) & (scores > object_mask_threshold)  # [B, Q]
    masks = jax.nn.sigmoid(mask_logits.astype(jnp.float32))
    weighted = jnp.where(kept[:, :, None, None], scores[:, :, None, None] * masks, -jnp.inf)
    winner = weighted.argmax(1)  # [B, H, W], first query on ties as torch.argmax
    num_queries = class_logits.shape[1]
    wins = (winner[:, None] == jnp.arange(num_queries)[None, :, None, None]) & valid[:, None]
    area = wins.sum((2, 3))
    original_area = ((masks >= 0.5) & valid[:, None]).sum((2, 3))
    ratio = area / jnp.maximum(original_area, 1)
    segment = kept & (area > 0) & (original_area > 0) & (ratio >= overlap_threshold)
    # a stuff query joins the first segment of its class; a thing query is its own segment
    same_class = segment[:, None, :] & (labels[:, :, None] == labels[:, None, :])  # [B, Q, Q']
    first_of_class = jnp.argmax(same_class, axis=-1)
    head = jnp.where(is_thing[labels], jnp.arange(num_queries)[None, :], first_of_class)
    head = jnp.where(segment, head, -1)  # [B, Q]
    segment_map = jnp.take_along_axis(head, winner.reshape(len(winner), -1), axis=1).reshape(winner.shape)
    segment_map = jnp.where(valid, segment_map, -1)
    heads = segment & (head == jnp.arange(num_queries)[None, :])
    return segment_map, jnp.where(heads, labels, -1).astype(jnp.int32)


def instance_inference(class_logits, mask_logits, valid, top_k: int, is_thing=None):
    """Mask2Former's instance rule (docs/reference.md §4): the top-k (query, class) pairs by class
    probability, mask = logit > 0, score = probability x mean mask probability inside the mask.
    (Every pair when the model has fewer than k.)

    class_logits [B, Q, K+1]; mask_logits [B, Q, H, W]; valid bool [B, H, W]; is_thing bool [K] or
    None (panoptic-trained models keep things only; kept is False for the others).
    Returns dict scores [B, k], classes int32 [B, k], masks bool [B, k, H, W], kept bool [B, k].
    """
    probs = jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)[..., :-1]
    batch, _, num_classes = probs.shape
    class_scores, index = jax.lax.top_k(probs.reshape(batch, -1), min(top_k, probs.shape[1] * num_classes))
    queries, classes = index // num_classes, index % num_classes
    logits = jnp.take_along_axis(mask_logits, queries[:, :, None, None], axis=1).astype(jnp.float32)
    masks = (logits > 0) & valid[:, None]
    mask_probs = jax.nn.sigmoid(logits) * masks
    mask_scores = mask_probs.sum((2, 3)) / (masks.sum((2, 3)) + 1e-6)
    kept = jnp.ones_like(classes, bool) if is_thing is None else is_thing[classes]
    return {"scores": class_scores * mask_scores, "classes": classes.astype(jnp.int32), "masks": masks,
            "kept": kept}
