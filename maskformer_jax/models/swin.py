"""Swin Transformer backbone (T/S/B/L) as used by MaskFormer: shifted windows, relative position bias,
windows padded inside each block, a LayerNorm on each returned stage. Images are NHWC.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maskformer_jax.models.conv import Conv

# Swin and the official configs use PyTorch's LayerNorm epsilon (Flax's default is 1e-6).
LAYER_NORM_EPSILON = 1e-5
_trunc_normal = nn.initializers.truncated_normal(0.02)


def relative_position_index(window_size: int) -> np.ndarray:
    """[w*w, w*w] index into the (2w-1)^2 bias table for every pair of positions in a window."""
    coords = np.stack(np.meshgrid(np.arange(window_size), np.arange(window_size), indexing="ij"))
    coords = coords.reshape(2, -1)
    relative = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window_size - 1)
    return relative[..., 0] * (2 * window_size - 1) + relative[..., 1]


def shifted_window_mask(height: int, width: int, window_size: int, shift: int) -> np.ndarray:
    """[num_windows, w*w, w*w] additive mask: -100 between positions from different shifted regions."""
    def regions(size):
        return (np.arange(size) >= size - window_size).astype(int) + (np.arange(size) >= size - shift)

    labels = regions(height)[:, None] * 3 + regions(width)[None, :]
    windows = window_partition(labels[None, :, :, None], window_size).reshape(-1, window_size**2)
    return np.where(windows[:, None, :] != windows[:, :, None], -100.0, 0.0).astype(np.float32)


def window_partition(x, window_size: int):
    """[B, H, W, C] → [B * H/w * W/w, w, w, C] (works on numpy and jax arrays)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)


def window_reverse(windows, window_size: int, height: int, width: int):
    """Inverse of window_partition: [B * H/w * W/w, w, w, C] → [B, H, W, C]."""
    c = windows.shape[-1]
    x = windows.reshape(-1, height // window_size, width // window_size, window_size, window_size, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias."""

    num_heads: int
    window_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        """x: [N, w*w, C] windows; mask: [num_windows, w*w, w*w] additive or None."""
        n, length, channels = x.shape
        head_dim = channels // self.num_heads
        dense = dict(dtype=self.dtype, kernel_init=_trunc_normal)
        qkv = nn.Dense(3 * channels, name="qkv", **dense)(x)
        qkv = qkv.reshape(n, length, 3, self.num_heads, head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * head_dim**-0.5, qkv[1], qkv[2]  # [N, heads, w*w, head_dim]
        table = self.param(
            "relative_position_bias_table", _trunc_normal, ((2 * self.window_size - 1) ** 2, self.num_heads)
        )
        bias = table[relative_position_index(self.window_size)].transpose(2, 0, 1)  # [heads, w*w, w*w]
        logits = jnp.einsum("nhqd,nhkd->nhqk", q, k) + bias.astype(self.dtype)
        if mask is not None:
            num_windows = mask.shape[0]
            logits = logits.reshape(n // num_windows, num_windows, self.num_heads, length, length)
            logits = (logits + mask[None, :, None].astype(self.dtype)).reshape(n, self.num_heads, length, length)
        weights = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("nhqk,nhkd->nqhd", weights, v).reshape(n, length, channels)
        return nn.Dense(channels, name="proj", **dense)(out)


class SwinBlock(nn.Module):
    """Pre-norm block: (shifted) window attention and a 4x GELU MLP, each with drop-path residual."""

    num_heads: int
    window_size: int
    shift: int
    drop_path: float
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        """x: [B, H, W, C] → [B, H, W, C]."""
        b, h, w, c = x.shape
        ws = self.window_size
        y = nn.LayerNorm(LAYER_NORM_EPSILON, dtype=self.dtype, name="norm1")(x)
        # Pad bottom/right to a multiple of the window after the norm (zeros), as the official code.
        pad_h, pad_w = (-h) % ws, (-w) % ws
        y = jnp.pad(y, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
        hp, wp = h + pad_h, w + pad_w
        mask = None
        if self.shift > 0:
            y = jnp.roll(y, (-self.shift, -self.shift), axis=(1, 2))
            mask = jnp.asarray(shifted_window_mask(hp, wp, ws, self.shift))
        windows = window_partition(y, ws).reshape(-1, ws * ws, c)
        windows = WindowAttention(self.num_heads, ws, dtype=self.dtype, name="attn")(windows, mask)
        y = window_reverse(windows.reshape(-1, ws, ws, c), ws, hp, wp)
        if self.shift > 0:
            y = jnp.roll(y, (self.shift, self.shift), axis=(1, 2))
        y = y[:, :h, :w]
        # Stochastic depth: the whole residual branch dropped per sample.
        drop_path = nn.Dropout(self.drop_path, broadcast_dims=(1, 2, 3), deterministic=not train)
        x = x + drop_path(y)

        dense = dict(dtype=self.dtype, kernel_init=_trunc_normal)
        y = nn.LayerNorm(LAYER_NORM_EPSILON, dtype=self.dtype, name="norm2")(x)
        y = nn.Dense(int(c * self.mlp_ratio), name="fc1", **dense)(y)
        y = nn.gelu(y, approximate=False)  # exact (erf) GELU, as torch.nn.GELU
        y = nn.Dense(c, name="fc2", **dense)(y)
        return x + drop_path(y)


class PatchMerging(nn.Module):
    """2x2 neighbours concatenated (order x00, x10, x01, x11), LayerNorm(4C), Linear 4C → 2C without bias."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        """x: [B, H, W, C] → [B, ceil(H/2), ceil(W/2), 2C]."""
        b, h, w, c = x.shape
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
        x = nn.LayerNorm(LAYER_NORM_EPSILON, dtype=self.dtype, name="norm")(x)
        return nn.Dense(2 * c, use_bias=False, dtype=self.dtype, kernel_init=_trunc_normal, name="reduction")(x)


class Swin(nn.Module):
    """Returns {"res2".."res5"} with C, 2C, 4C, 8C channels at strides 4, 8, 16, 32."""

    embed_dim: int = 96
    depths: Sequence[int] = (2, 2, 6, 2)
    num_heads: Sequence[int] = (3, 6, 12, 24)
    window_size: int = 7
    drop_path_rate: float = 0.3
    patch_size: int = 4
    mlp_ratio: float = 4.0
    remat: bool = False  # recompute each block's activations in the backward pass (less memory)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images, train: bool = False):
        x = images.astype(self.dtype)
        h, w = x.shape[1:3]
        p = self.patch_size
        x = jnp.pad(x, ((0, 0), (0, (-h) % p), (0, (-w) % p), (0, 0)))
        x = Conv(self.embed_dim, (p, p), strides=p, padding="VALID", dtype=self.dtype, name="patch_embed")(x)
        x = nn.LayerNorm(LAYER_NORM_EPSILON, dtype=self.dtype, name="patch_norm")(x)
        # Drop-path rates rise linearly from 0 to drop_path_rate over all blocks.
        rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
        block_class = nn.remat(SwinBlock, static_argnums=(2,)) if self.remat else SwinBlock
        features = {}
        for stage, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
            for block in range(depth):
                x = block_class(
                    num_heads=heads,
                    window_size=self.window_size,
                    shift=0 if block % 2 == 0 else self.window_size // 2,
                    drop_path=rates[sum(self.depths[:stage]) + block],
                    mlp_ratio=self.mlp_ratio,
                    dtype=self.dtype,
                    name=f"stage{stage}_block{block}",
                )(x, train)
            out = nn.LayerNorm(LAYER_NORM_EPSILON, dtype=self.dtype, name=f"norm{stage}")(x)
            features[f"res{stage + 2}"] = out
            if stage < len(self.depths) - 1:
                x = PatchMerging(dtype=self.dtype, name=f"stage{stage}_downsample")(x)
        return features
