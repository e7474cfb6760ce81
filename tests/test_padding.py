"""Padding that counts for nothing: an image on a larger canvas gives, on its own region, the same
loss (dense and point-sampled), matching costs, position encoding and transformer outputs as on a
canvas of its own size, given the same features."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from maskformer_jax.losses import set_loss
from maskformer_jax.matching import matching_cost
from maskformer_jax.models.transformer import QueryDecoder, TransformerEncoder, masked_sine_position_encoding
from maskformer_jax.models.transformer import sine_position_encoding

EXACT, CANVAS = (64, 96), (128, 160)  # (H, W): the image's own size and a larger canvas


def on_canvas(x, canvas, fill, axes=(1, 2)):
    """Place x [B, h, w, ...] (spatial axes `axes`) in the top-left corner of `canvas`, `fill` elsewhere."""
    shape = list(x.shape)
    shape[axes[0]], shape[axes[1]] = canvas
    out = np.full(shape, fill, x.dtype)
    index = [slice(None)] * x.ndim
    index[axes[0]], index[axes[1]] = slice(0, x.shape[axes[0]]), slice(0, x.shape[axes[1]])
    out[tuple(index)] = x
    return out


def exact_and_canvas_batches(seed, layers=3, queries=8, slots=5, classes=6):
    """The same outputs and targets on the exact canvas and on the larger one (garbage logits and
    -1 segments in the padding), with the larger canvas's valid mask."""
    rng = np.random.default_rng(seed)
    (h, w), batch = EXACT, 2
    mask_logits = 3 * rng.normal(size=(layers, batch, queries, h // 4, w // 4)).astype(np.float32)
    class_logits = rng.normal(size=(layers, batch, queries, classes + 1)).astype(np.float32)
    labels = np.full((batch, slots), -1, np.int32)
    labels[0, :3], labels[1, :4] = rng.integers(0, classes, 3), rng.integers(0, classes, 4)
    segments = rng.integers(-1, 4, size=(batch, h // 8, w // 8)).repeat(8, 1).repeat(8, 2).astype(np.int32)
    segments[0][segments[0] == 3] = -1
    exact = {"class_logits": class_logits, "mask_logits": mask_logits}, {"segments": segments, "labels": labels}
    padded_logits = on_canvas(mask_logits, (CANVAS[0] // 4, CANVAS[1] // 4), 0.0, axes=(3, 4))
    padded_logits[..., h // 4:, :] = 5 * rng.normal(size=padded_logits[..., h // 4:, :].shape)
    padded_logits[..., w // 4:] = -7.0
    canvas = ({"class_logits": class_logits, "mask_logits": padded_logits},
              {"segments": on_canvas(segments, CANVAS, -1), "labels": labels})
    valid = on_canvas(np.ones((batch, h, w), bool), CANVAS, False)
    return exact, canvas, valid


@pytest.mark.parametrize("num_points", [0, 2048])
def test_loss_on_a_larger_canvas_equals_the_exact_canvas(num_points):
    config = base.get_config().loss
    config.weights = {"class": 1.0, "focal": 20.0, "dice": 1.0, "bce": 2.0}
    config.num_points = num_points
    (outputs, batch), (padded_outputs, padded_batch), valid = exact_and_canvas_batches(0)
    rng = jax.random.key(3)
    exact_loss, exact_metrics = set_loss(outputs, batch, config, rng, valid=np.ones(EXACT, bool)[None].repeat(2, 0))
    plain_loss, _ = set_loss(outputs, batch, config, rng)  # all-valid mask = no mask
    canvas_loss, canvas_metrics = set_loss(padded_outputs, padded_batch, config, rng, valid=valid)
    np.testing.assert_allclose(exact_loss, plain_loss, rtol=1e-6)
    for key in exact_metrics:
        np.testing.assert_allclose(canvas_metrics[key], exact_metrics[key], rtol=1e-5, atol=1e-6, err_msg=key)
    counted_loss, _ = set_loss(padded_outputs, padded_batch, config, rng)  # padding as negatives
    assert abs(float(counted_loss) - float(exact_loss)) > 1e-2


def test_matching_costs_on_a_larger_canvas_equal_the_exact_canvas():
    weights = {"class": 1.0, "focal": 20.0, "dice": 1.0, "bce": 1.0}
    (outputs, batch), (padded_outputs, padded_batch), valid = exact_and_canvas_batches(1)
    exact = matching_cost(outputs["class_logits"], outputs["mask_logits"], batch["segments"], batch["labels"], weights)
    canvas = matching_cost(padded_outputs["class_logits"], padded_outputs["mask_logits"], padded_batch["segments"],
                           padded_batch["labels"], weights, valid)
    np.testing.assert_allclose(canvas, exact, rtol=1e-5, atol=1e-5)


def test_masked_position_encoding_is_the_unmasked_one_on_the_image_region():
    valid = on_canvas(np.ones((1, 3, 5), bool), (6, 9), False)
    masked = np.asarray(masked_sine_position_encoding(jnp.asarray(valid), 16))
    np.testing.assert_allclose(masked[0, :3, :5], sine_position_encoding(3, 5, 16), atol=1e-6)


def test_transformer_outputs_on_a_larger_canvas_equal_the_exact_canvas():
    """Encoder tokens of the image region and decoder queries, with padded positions holding garbage."""
    rng = np.random.default_rng(2)
    channels, (h, w) = 32, (2, 3)  # a res5 map of a 64x96 image; the canvas is 128x160 → 4x5
    features = rng.normal(size=(2, h, w, channels)).astype(np.float32)
    padded = on_canvas(features, (4, 5), 0.0)
    padded[:, h:] = rng.normal(size=padded[:, h:].shape)
    padded[:, :, w:] = 3.0
    valid = on_canvas(np.ones((2, 64, 96), bool), CANVAS, False)

    encoder = TransformerEncoder(num_layers=2, num_heads=4, dim_feedforward=64)
    variables = encoder.init(jax.random.key(0), features)
    exact = encoder.apply(variables, features)
    canvas = encoder.apply(variables, padded, valid)
    np.testing.assert_allclose(canvas[:, :h, :w], exact, rtol=1e-5, atol=1e-5)

    decoder = QueryDecoder(num_queries=6, num_layers=2, num_heads=4, dim_feedforward=64)
    variables = decoder.init(jax.random.key(1), features)
    np.testing.assert_allclose(decoder.apply(variables, canvas, valid), decoder.apply(variables, exact),
                               rtol=1e-5, atol=1e-5)
    # Without the mask the padding changes the queries: the test would catch a mask that is dropped.
    assert float(jnp.abs(decoder.apply(variables, canvas) - decoder.apply(variables, exact)).max()) > 1e-2


def test_pixel_decoder_group_norm_statistics_cover_the_image_only():
    """A 1x1 conv + GroupNorm mixes no positions, so with the mask its image region is exact."""
    from maskformer_jax.models.pixel_decoder import ConvGroupNorm

    rng = np.random.default_rng(4)
    features = rng.normal(size=(2, 4, 6, 64)).astype(np.float32)
    padded = on_canvas(features, (8, 10), 0.0)
    padded[:, 4:] = 5 + rng.normal(size=padded[:, 4:].shape)
    valid = on_canvas(np.ones((2, 4, 6), bool), (8, 10), False)
    layer = ConvGroupNorm(64, 1)
    variables = layer.init(jax.random.key(0), features)
    exact = layer.apply(variables, features)
    np.testing.assert_allclose(layer.apply(variables, padded, valid)[:, :4, :6], exact, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(layer.apply(variables, padded)[:, :4, :6] - exact).max()) > 0.1
