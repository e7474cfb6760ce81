"""The reference's resize rules, which differ from `jax.image.resize` where it matters.

- PyTorch's legacy `interpolate(mode="nearest")` (FPN upsampling, matcher target downsampling) picks
  source index floor(dst * in / out); `jax.image.resize(method="nearest")` uses half-pixel centres.
- Bilinear with half-pixel centres and edge clamping (`align_corners=False`) equals
  `jax.image.resize(method="bilinear")` when upsampling; `sample_bilinear` evaluates the same rule at
  arbitrary points, so point-sampled losses at pixel centres equal dense ones.
"""

import jax
import jax.numpy as jnp
import numpy as np


def legacy_nearest_index(size_in: int, size_out: int) -> np.ndarray:
    """Source index of each output position: min(floor(dst * (in / out)), in - 1), in float32 as PyTorch."""
    if size_in == size_out:
        return np.arange(size_out)
    scale = np.float32(size_in) / np.float32(size_out)
    index = np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(index, size_in - 1)


def resize_nearest_legacy(x, height: int, width: int):
    """[B, h, w, ...] → [B, height, width, ...] with PyTorch's legacy nearest rule."""
    x = x[:, legacy_nearest_index(x.shape[1], height)]
    return x[:, :, legacy_nearest_index(x.shape[2], width)]


def resize_bilinear(x, height: int, width: int):
    """[..., h, w] → [..., height, width], bilinear with half-pixel centres (align_corners=False)."""
    return jax.image.resize(x, x.shape[:-2] + (height, width), method="bilinear")


def sample_bilinear(x, points):
    """Bilinear values of maps at points, half-pixel centres, edge-clamped.

    x: [..., h, w]; points: [..., P, 2] as (y, x) in [0, 1] of the map's extent → [..., P].
    A point at the centre of output pixel i of an (H, W) grid is ((i + 0.5) / H, ...), which gives
    exactly `resize_bilinear(x, H, W)` there.
    """
    h, w = x.shape[-2:]
    cy = jnp.clip(points[..., 0] * h - 0.5, 0, h - 1)
    cx = jnp.clip(points[..., 1] * w - 0.5, 0, w - 1)
    y0, x0 = jnp.floor(cy).astype(jnp.int32), jnp.floor(cx).astype(jnp.int32)
    y1, x1 = jnp.minimum(y0 + 1, h - 1), jnp.minimum(x0 + 1, w - 1)
    wy, wx = cy - y0, cx - x0
    flat = x.reshape(x.shape[:-2] + (h * w,))

    def at(yi, xi):
        return jnp.take_along_axis(flat, yi * w + xi, axis=-1)

    top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
    return top * (1 - wy) + bottom * wy
