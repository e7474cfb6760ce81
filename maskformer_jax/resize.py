"""The reference's resize rules, which differ from `jax.image.resize` where it matters.

- PyTorch's legacy `interpolate(mode="nearest")` (FPN upsampling, matcher target downsampling) picks
  source index floor(dst * in / out); `jax.image.resize(method="nearest")` uses half-pixel centres.
- Bilinear with half-pixel centres and edge clamping (`align_corners=False`), one rule (`_axis_taps`)
  for three access patterns: whole maps (`resize_bilinear`, equal to `jax.image.resize(method=
  "bilinear")` when upsampling, with a cheap path for integer factors), maps whose images differ in
  size within a batch (`resize_bilinear_per_image`), and arbitrary points (`sample_bilinear`), so
  point-sampled losses at pixel centres equal dense ones.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


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


def _upsample_axis(x, axis: int, factor: int):
    """Bilinear upsampling (half-pixel centres, edge-clamped) by an integer factor along one axis.

    Output position factor·i + r samples x at i + offset_r, offset_r = (r + 0.5) / factor - 0.5, so
    each phase r is a fixed blend of two neighbouring slices: a few multiply-adds per output instead
    of the dense [out, in] weight matrix of `jax.image.resize`, and the same for the gradient.
    """
    size = x.shape[axis]
    first, last = lax.slice_in_dim(x, 0, 1, axis=axis), lax.slice_in_dim(x, size - 1, size, axis=axis)
    previous = jnp.concatenate([first, lax.slice_in_dim(x, 0, size - 1, axis=axis)], axis)  # x[max(i-1, 0)]
    following = jnp.concatenate([lax.slice_in_dim(x, 1, size, axis=axis), last], axis)  # x[min(i+1, size-1)]
    phases = []
    for r in range(factor):
        offset = (r + 0.5) / factor - 0.5
        low, high, weight = (previous, x, 1 + offset) if offset < 0 else (x, following, offset)
        phases.append(low * (1 - weight) + high * weight)
    stacked = jnp.stack(phases, axis=axis + 1)
    return stacked.reshape(x.shape[:axis] + (size * factor,) + x.shape[axis + 1:])


def resize_bilinear(x, height: int, width: int):
    """[..., h, w] → [..., height, width], bilinear with half-pixel centres (align_corners=False).

    Integer upsampling factors (the mask upsampling of losses and inference) take a cheap separable
    path; any other size goes to `jax.image.resize`, without antialiasing, as PyTorch.
    """
    h, w = x.shape[-2:]
    if height % h or width % w or height < h or width < w:
        return jax.image.resize(x, x.shape[:-2] + (height, width), method="bilinear", antialias=False)
    # Width first: interleaving along the minor axis is the slow part, so do it on the smaller array.
    if width != w:
        x = _upsample_axis(x, x.ndim - 1, width // w)
    if height != h:
        x = _upsample_axis(x, x.ndim - 2, height // h)
    return x


def downsample_valid(valid, height: int, width: int):
    """bool [B, H, W] (True on image pixels) → [B, height, width] with the legacy nearest rule, as
    DETR interpolates its padding mask: a position is valid when the pixel it samples is."""
    return resize_nearest_legacy(valid[..., None], height, width)[..., 0]


def valid_extent(valid):
    """bool [B, H, W] whose True pixels form a top-left rectangle → its (height, width), int32 [B, 2]."""
    return jnp.stack([valid.any(axis=2).sum(axis=1), valid.any(axis=1).sum(axis=1)], axis=-1).astype(jnp.int32)


def clamp_to_extent(x, extent):
    """Edge-replicate maps beyond each image's extent: x [B, ..., h, w], extent int [B, 2] → x with
    rows >= extent[0] copies of the last valid row (columns likewise), so that interpolation at the
    image's border sees the same neighbours as on a map of the image's own size."""
    batch, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    lead = (1,) * (x.ndim - 3)
    rows = jnp.minimum(jnp.arange(h), extent[:, :1] - 1).reshape(batch, *lead, h, 1)
    cols = jnp.minimum(jnp.arange(w), extent[:, 1:] - 1).reshape(batch, *lead, 1, w)
    return jnp.take_along_axis(jnp.take_along_axis(x, rows, axis=-2), cols, axis=-1)


def _axis_taps(position, size):
    """Bilinear taps along one axis: position (float, in source pixels with centres at integers), size
    (the axis length; int or array broadcasting with it) → (low, high int32, weight of high float32),
    edge-clamped to [0, size - 1]."""
    position = jnp.clip(position, 0, size - 1)
    low = jnp.floor(position).astype(jnp.int32)
    return low, jnp.minimum(low + 1, jnp.asarray(size, jnp.int32) - 1), position - low


def _take_taps(x, axis: int, taps):
    """Interpolate x along `axis` with per-image taps [B, n] (batch axis 0) → x with n positions there."""
    low, high, weight = (t.reshape(t.shape[:1] + (1,) * (axis - 1) + t.shape[1:] + (1,) * (x.ndim - axis - 1))
                         for t in taps)
    return jnp.take_along_axis(x, low, axis=axis) * (1 - weight) + jnp.take_along_axis(x, high, axis=axis) * weight


def resize_bilinear_per_image(x, sizes, out_sizes, canvas, flip=None):
    """Each image's top-left region resized on its own: x [B, C, H, W], sizes / out_sizes int [B, 2] (the
    region's (h, w) in x and the size to resize it to), canvas static (Ho, Wo) >= every out size, flip
    optional bool [B] (mirror the result horizontally) → [B, C, Ho, Wo]; positions past an out size
    repeat its last row / column."""

    def axis_taps(axis: int, mirror=None):
        out = jnp.minimum(jnp.arange(canvas[axis])[None, :], out_sizes[:, axis, None] - 1)
        if mirror is not None:
            out = jnp.where(mirror[:, None], out_sizes[:, axis, None] - 1 - out, out)
        scale = sizes[:, axis].astype(jnp.float32) / out_sizes[:, axis].astype(jnp.float32)
        return _axis_taps((out + 0.5) * scale[:, None] - 0.5, sizes[:, axis, None])

    return _take_taps(_take_taps(x, 2, axis_taps(0)), 3, axis_taps(1, flip))


def bilinear_taps(height: int, width: int, points, extent=None):
    """The 4 pixels and weights that bilinear interpolation (half-pixel centres, edge-clamped) uses.

    points: [..., P, 2] as (y, x) in [0, 1] of a (height, width) map, or with `extent` (int [..., 2],
    the image's (height, width) in the map's top-left corner) of that region, clamped at its edges →
    (flat pixel index [..., P, 4] int32, weight [..., P, 4] float32).
    """
    if extent is None:
        extent_h, extent_w = height, width
    else:
        extent = extent.astype(jnp.float32)
        extent_h, extent_w = extent[..., :1], extent[..., 1:]
    y0, y1, wy = _axis_taps(points[..., 0] * extent_h - 0.5, extent_h)
    x0, x1, wx = _axis_taps(points[..., 1] * extent_w - 0.5, extent_w)
    index = jnp.stack([y0 * width + x0, y0 * width + x1, y1 * width + x0, y1 * width + x1], axis=-1)
    weight = jnp.stack([(1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx], axis=-1)
    return index, weight


def sample_bilinear(x, points, extent=None):
    """Bilinear values of maps at points. x: [..., h, w]; points: [..., P, 2] (y, x) in [0, 1] of the
    map, or of `extent` (int [..., 2], see `bilinear_taps`) → [..., P].

    A point at the centre of output pixel i of an (H, W) grid, ((i + 0.5) / H, ...), gets exactly the
    value of `resize_bilinear(x, H, W)` there.
    """
    h, w = x.shape[-2:]
    index, weight = bilinear_taps(h, w, points, extent)
    flat = x.reshape(x.shape[:-2] + (h * w,))
    taps = jnp.take_along_axis(flat, index.reshape(index.shape[:-2] + (-1,)), axis=-1)
    return (taps.reshape(weight.shape) * weight).sum(-1)
