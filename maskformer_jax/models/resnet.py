"""ResNet-50/101 (torchvision layout) and ResNet-101c (deep stem, dilated res5) with frozen BatchNorm.

Layer names follow detectron2 (`stem.conv1` → `stem_conv1`, `res2.0.conv1` → `res2_0/conv1`, with
`conv` and `norm` inside) so that official checkpoints map one to one. Images are NHWC.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from maskformer_jax.models.conv import Conv, window_taps


def max_pool(x, window: int, stride: int, padding: int):
    """PyTorch's max_pool2d (padding never wins). x: [B, H, W, C] → [B, h, w, C].

    A maximum of shifted, strided slices: its gradient is a few selects, which XLA's CPU backend runs
    ~3x faster than the select-and-scatter gradient of `lax.reduce_window` (16 against 56 ms for the
    stem at 512²). Where maxima tie, the gradient is shared between them instead of going to the first;
    after a ReLU ties are zeros, whose gradient the ReLU drops anyway.
    """
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=-jnp.inf)
    out_size = tuple((size - window) // stride + 1 for size in x.shape[1:3])
    return functools.reduce(jnp.maximum, window_taps(x, (window, window), (stride, stride), out_size))


class FrozenBatchNorm(nn.Module):
    """BatchNorm with statistics and affine folded into a fixed per-channel `scale` and `bias`.

    They live in the "frozen" collection, never in "params", so no optimizer touches them
    (detectron2's FrozenBN, the default of every MaskFormer config).
    """

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        scale = self.variable("frozen", "scale", jnp.ones, (channels,), jnp.float32).value
        bias = self.variable("frozen", "bias", jnp.zeros, (channels,), jnp.float32).value
        return x * scale.astype(self.dtype) + bias.astype(self.dtype)


class ConvNorm(nn.Module):
    """Conv (no bias, PyTorch-style symmetric padding) followed by frozen BatchNorm."""

    features: int
    kernel_size: int
    stride: int = 1
    dilation: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        # Symmetric padding as in PyTorch: Flax "SAME" pads asymmetrically at stride 2.
        pad = self.dilation * (self.kernel_size - 1) // 2
        x = Conv(
            self.features,
            (self.kernel_size, self.kernel_size),
            strides=self.stride,
            padding=((pad, pad), (pad, pad)),
            kernel_dilation=self.dilation,
            use_bias=False,
            dtype=self.dtype,
            kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
            name="conv",
        )(x)
        return FrozenBatchNorm(dtype=self.dtype, name="norm")(x)


class Bottleneck(nn.Module):
    """1x1 → 3x3 (carries the stride and dilation) → 1x1, with a projection shortcut when needed."""

    features: int  # output channels; the bottleneck width is features // 4
    stride: int = 1
    dilation: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = self.features // 4
        shortcut = x
        if x.shape[-1] != self.features or self.stride != 1:
            shortcut = ConvNorm(self.features, 1, self.stride, dtype=self.dtype, name="shortcut")(x)
        y = nn.relu(ConvNorm(width, 1, dtype=self.dtype, name="conv1")(x))
        y = ConvNorm(width, 3, self.stride, self.dilation, dtype=self.dtype, name="conv2")(y)
        y = nn.relu(y)
        y = ConvNorm(self.features, 1, dtype=self.dtype, name="conv3")(y)
        return nn.relu(y + shortcut)


class ResNet(nn.Module):
    """Returns {"res2".."res5"}: [B, H/4, W/4, 256], [B, H/8, W/8, 512], [.., 1024], [B, H/32, W/32, 2048]."""

    depths: Sequence[int] = (3, 4, 6, 3)
    deep_stem: bool = False  # R101c: three 3x3 convs (64, 64, 128) instead of one 7x7 conv
    res5_multi_grid: Sequence[int] = (1, 1, 1)  # R101c: dilations (1, 2, 4) in res5's 3x3 convs
    remat: bool = False  # recompute each block's activations in the backward pass (less memory)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images, train: bool = False):
        del train  # frozen BatchNorm, no dropout: train and eval are the same function
        x = images.astype(self.dtype)
        if self.deep_stem:
            for i, (features, stride) in enumerate(((64, 2), (64, 1), (128, 1))):
                x = nn.relu(ConvNorm(features, 3, stride, dtype=self.dtype, name=f"stem_conv{i + 1}")(x))
        else:
            x = nn.relu(ConvNorm(64, 7, 2, dtype=self.dtype, name="stem_conv1")(x))
        x = max_pool(x, 3, 2, 1)
        block_class = nn.remat(Bottleneck) if self.remat else Bottleneck
        features = {}
        for stage, depth in enumerate(self.depths):
            for block in range(depth):
                is_res5 = stage == len(self.depths) - 1
                x = block_class(
                    features=256 * 2**stage,
                    stride=2 if (block == 0 and stage > 0) else 1,
                    dilation=self.res5_multi_grid[block] if is_res5 else 1,
                    dtype=self.dtype,
                    name=f"res{stage + 2}_{block}",
                )(x)
            features[f"res{stage + 2}"] = x
        return features
