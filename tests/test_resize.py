"""Bilinear resizing against PyTorch's `interpolate(mode="bilinear", align_corners=False)`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from maskformer_jax.resize import resize_bilinear


@pytest.mark.parametrize(
    "shape, size",
    [
        ((2, 3, 8, 8), (32, 32)),  # integer factor on both axes: the separable path
        ((1, 2, 5, 7), (15, 14)),  # different integer factors per axis
        ((1, 2, 5, 7), (5, 28)),  # one axis kept
        ((1, 1, 6, 6), (9, 9)),  # non-integer factor: jax.image.resize
        ((1, 1, 8, 8), (4, 4)),  # downsampling: jax.image.resize
    ],
)
def test_resize_bilinear_matches_torch_and_its_gradient_matches_jax_image(shape, size):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ours = resize_bilinear(jnp.asarray(x), *size)
    theirs = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode="bilinear", align_corners=False)
    np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=2e-6)

    weights = jnp.asarray(np.random.default_rng(1).standard_normal(theirs.shape), jnp.float32)
    grad = jax.grad(lambda x: jnp.sum(resize_bilinear(x, *size) * weights))(jnp.asarray(x))
    reference = jax.grad(
        lambda x: jnp.sum(jax.image.resize(x, shape[:2] + size, "bilinear", antialias=False) * weights)
    )(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(grad), np.asarray(reference), atol=1e-5)
