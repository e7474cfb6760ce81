"""Inference on hand-built logits: maps computed by hand from docs/reference.md §4's rules."""

import jax.numpy as jnp
import numpy as np
import torch

from maskformer_jax import postprocessing
from maskformer_jax.prediction_files import panoptic_segments

BIG = 10.0  # sigmoid(±10) is 1 - 4.5e-5 / 4.5e-5


def class_logits(labels_and_strengths, num_classes):
    """One query per (label, logit): that logit on the label, 0 elsewhere (K + 1 entries)."""
    logits = np.zeros((len(labels_and_strengths), num_classes + 1), np.float32)
    for q, (label, strength) in enumerate(labels_and_strengths):
        logits[q, label] = strength
    return logits


def mask_logits(regions, shape):
    """+BIG inside each query's region (a list of (row, column) pixels), -BIG elsewhere."""
    masks = np.full((len(regions), *shape), -BIG, np.float32)
    for q, pixels in enumerate(regions):
        for r, c in pixels:
            masks[q, r, c] = BIG
    return masks


def block(rows, columns):
    return [(r, c) for r in rows for c in columns]


def test_semantic_probabilities_by_hand():
    logits = np.log(np.array([[[0.5, 0.25, 0.25], [0.1, 0.6, 0.3]]], np.float32))  # K = 2 (+ no object)
    masks = np.array([[[[1.0, 0.0]], [[0.5, 1.0]]]], np.float32)  # Q = 2 masks of 1 x 2 pixels
    scores = postprocessing.semantic_probabilities(jnp.asarray(logits), jnp.asarray(masks))
    expected = [[[0.5 * 1 + 0.1 * 0.5, 0.5 * 0 + 0.1 * 1]], [[0.25 * 1 + 0.6 * 0.5, 0.25 * 0 + 0.6 * 1]]]
    np.testing.assert_allclose(scores[0], expected, rtol=1e-6)  # no renormalisation after dropping column K


def test_panoptic_merges_stuff_separates_things_and_drops_by_score_and_overlap():
    # classes: 0 sky (stuff), 1 grass (stuff), 2 disc (thing); scores: logit L on one of 4 entries →
    # e^L / (e^L + 3): L=10: 0.99986, 9: 0.9996, 8: 0.999, 7: 0.997, 4: 0.948 (all above 0.8).
    logits = class_logits([(0, 10), (0, 9), (2, 8), (2, 7), (1, 4), (3, 12)], num_classes=3)
    regions = [
        block(range(4), (0, 1)),  # q0 sky: left half
        block((0, 1), (2,)),  # q1 sky: merges into q0's segment
        block((2, 3), (2, 3)),  # q2 disc
        [(0, 3)],  # q3 disc: a second instance, its own segment
        block(range(4), (2, 3)),  # q4 grass: loses 7 of its 8 pixels to stronger queries → dropped
        block(range(4), range(4)),  # q5: "no object" → dropped although its mask covers everything
    ]
    masks = mask_logits(regions, (4, 4))
    segment_map, segment_classes = postprocessing.panoptic_inference(
        jnp.asarray(logits)[None], jnp.asarray(masks)[None], jnp.ones((1, 4, 4), bool),
        jnp.asarray([False, False, True]), object_mask_threshold=0.8, overlap_threshold=0.8)
    # q4 wins only (1, 3): 1/8 of its mask < 0.8 → that pixel is void.
    expected = [[0, 0, 0, 3],
                [0, 0, 0, -1],
                [0, 0, 2, 2],
                [0, 0, 2, 2]]
    np.testing.assert_array_equal(segment_map[0], expected)
    np.testing.assert_array_equal(segment_classes[0], [0, -1, 2, 2, -1, -1])
    ids, info = panoptic_segments(segment_map[0], segment_classes[0], np.array([False, False, True]))
    np.testing.assert_array_equal(ids, [[1, 1, 1, 3], [1, 1, 1, 0], [1, 1, 2, 2], [1, 1, 2, 2]])
    assert info == [{"id": 1, "class": 0, "isthing": False}, {"id": 2, "class": 2, "isthing": True},
                    {"id": 3, "class": 2, "isthing": True}]


def test_panoptic_threshold_and_no_background_competitor():
    # q0 (score 0.99986) covers the left half; q1 (logit 2.7: score e^2.7/(e^2.7+3) = 0.83) the right.
    logits = class_logits([(0, 10), (1, 2.7)], num_classes=3)
    masks = mask_logits([block(range(2), (0,)), block(range(2), (1,))], (2, 2))
    def run(threshold):
        return postprocessing.panoptic_inference(jnp.asarray(logits)[None], jnp.asarray(masks)[None],
                                            jnp.ones((1, 2, 2), bool), jnp.zeros(3, bool), threshold, 0.8)
    segment_map, classes = run(0.8)
    np.testing.assert_array_equal(segment_map[0], [[0, 1], [0, 1]])
    np.testing.assert_array_equal(classes[0], [0, 1])
    # Above q1's score, q1 is dropped and q0, the only query left, takes every pixel: 4 / 2 >= 0.8.
    segment_map, classes = run(0.85)
    np.testing.assert_array_equal(segment_map[0], [[0, 0], [0, 0]])
    np.testing.assert_array_equal(classes[0], [0, -1])
    # Nothing above the threshold: all void.
    segment_map, classes = run(0.9999)
    assert (np.asarray(segment_map) == -1).all() and (np.asarray(classes) == -1).all()


def test_panoptic_counts_areas_inside_the_image_only():
    logits = class_logits([(0, 10), (1, 9)], num_classes=2)
    # q1's mask: 1 pixel inside the image, 3 on the canvas padding; inside it wins its 1 pixel → kept.
    masks = mask_logits([block((0, 1), (0,)), [(0, 1), (1, 1), (0, 2), (1, 2)]], (2, 3))
    valid = jnp.asarray([[[True, True, False], [True, False, False]]])
    segment_map, classes = postprocessing.panoptic_inference(jnp.asarray(logits)[None], jnp.asarray(masks)[None], valid,
                                                        jnp.zeros(2, bool), 0.8, 0.8)
    np.testing.assert_array_equal(segment_map[0], [[0, 1, -1], [0, -1, -1]])
    np.testing.assert_array_equal(classes[0], [0, 1])


def test_instance_top_k_and_mask_score():
    logits = np.log(np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]], np.float32))  # Q = 2, K = 2
    masks = np.array([[[3.0, -1.0], [1.0, -2.0]], [[-1.0, -1.0], [0.5, 2.0]]], np.float32)
    out = postprocessing.instance_inference(jnp.asarray(logits)[None], jnp.asarray(masks)[None],
                                       jnp.ones((1, 2, 2), bool), top_k=3)
    sigmoid = 1 / (1 + np.exp(-masks))
    mask_score = [(sigmoid[0][masks[0] > 0]).mean(), (sigmoid[1][masks[1] > 0]).mean()]
    # pairs by probability: (q1, class 1) 0.7, (q0, class 0) 0.6, (q0, class 1) 0.3
    np.testing.assert_array_equal(out["classes"][0], [1, 0, 1])
    np.testing.assert_allclose(out["scores"][0], [0.7 * mask_score[1], 0.6 * mask_score[0], 0.3 * mask_score[0]],
                               rtol=1e-5)
    np.testing.assert_array_equal(out["masks"][0, 1], masks[0] > 0)
    things = postprocessing.instance_inference(jnp.asarray(logits)[None], jnp.asarray(masks)[None],
                                          jnp.ones((1, 2, 2), bool), top_k=3, is_thing=jnp.asarray([False, True]))
    np.testing.assert_array_equal(things["kept"][0], [True, False, True])


def test_resize_to_original_equals_torch_crop_and_interpolate():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(2, 3, 32, 48)).astype(np.float32)
    sizes = np.array([[30, 41], [32, 48]])
    original = np.array([[57, 83], [20, 31]])  # one upsampled, one downsampled
    flips = np.array([False, True])
    out = np.asarray(postprocessing.resize_to_original(jnp.asarray(maps), jnp.asarray(sizes), jnp.asarray(original),
                                                  (64, 96), jnp.asarray(flips)))
    assert out.shape == (2, 3, 64, 96)
    for b in range(2):
        (h, w), (height, width) = sizes[b], original[b]
        expected = torch.nn.functional.interpolate(torch.from_numpy(maps[b:b + 1, :, :h, :w]), size=(int(height), int(width)),
                                                   mode="bilinear", align_corners=False)[0].numpy()
        if flips[b]:
            expected = expected[:, :, ::-1]
        np.testing.assert_allclose(out[b, :, :height, :width], expected, atol=1e-5)
    mask = np.asarray(postprocessing.canvas_mask(jnp.asarray(original), (64, 96)))
    assert mask[0, :57, :83].all() and not mask[0, 57:].any() and not mask[0, :, 83:].any()
