"""DETR-style transformer pieces: 2D sine position encoding, post-norm encoder and decoder layers,
and the query decoder that returns every layer's output through a shared final LayerNorm.
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from maskformer_jax.resize import downsample_valid

LAYER_NORM_EPSILON = 1e-5  # PyTorch's default, used by the reference
_xavier = nn.initializers.xavier_uniform()
# The reference packs q/k/v into one [3C, C] matrix and applies xavier to it: fan_in C, fan_out 3C.
# For each [C, C] slice that is a uniform variance of 2 / (4C), i.e. half of xavier on [C, C].
_packed_xavier = nn.initializers.variance_scaling(0.5, "fan_avg", "uniform")


def sine_position_encoding(height: int, width: int, num_features: int = 128, temperature: float = 10000.0):
    """[H, W, 2 * num_features] float32: (y, x) encodings of normalised coordinates scaled to 2π.

    Positions run 1..H and 1..W (cumsum of an all-valid mask), normalised by the last position + 1e-6;
    channels are [sin, cos, sin, cos, ...] with frequencies temperature^(2*floor(i/2)/num_features),
    y channels first. Computed with numpy at trace time: the encoding depends only on the shape.
    """
    valid = np.ones((1, height, width), bool)
    return np.asarray(masked_sine_position_encoding(valid, num_features, temperature, np)[0])


def masked_sine_position_encoding(valid, num_features: int = 128, temperature: float = 10000.0, xp=jnp):
    """DETR's mask-aware form: valid bool [B, H, W] → [B, H, W, 2 * num_features] float32.

    Positions are cumulative sums of `valid` along each axis, normalised by their last value, so an
    image in the top-left corner of a larger canvas encodes exactly as on a canvas of its own size.
    """
    scale = 2 * math.pi
    valid = xp.asarray(valid, xp.float32)
    y, x = xp.cumsum(valid, axis=1), xp.cumsum(valid, axis=2)
    y = y / (y[:, -1:, :] + 1e-6) * scale
    x = x / (x[:, :, -1:] + 1e-6) * scale
    dim_t = np.arange(num_features, dtype=np.float32)
    dim_t = (temperature ** (2 * (dim_t // 2) / num_features)).astype(np.float32)

    def interleave(v):
        v = v[..., None] / dim_t
        return xp.stack([xp.sin(v[..., 0::2]), xp.cos(v[..., 1::2])], axis=-1).reshape(*v.shape[:-1], -1)

    return xp.concatenate([interleave(y), interleave(x)], axis=-1)


def tokens_and_positions(features, dtype, valid=None):
    """[B, H, W, C] feature map → (tokens [B, H*W, C], sine positions in `dtype`, key mask).

    Without `valid` the positions depend only on the shape ([H*W, C]) and the key mask is None; with
    valid bool [B, H', W'] (the input pixels), positions are mask-aware [B, H*W, C] and the key mask
    [B, H*W] is True on image tokens.
    """
    b, h, w, c = features.shape
    tokens = features.reshape(b, h * w, c)
    if valid is None:
        return tokens, jnp.asarray(sine_position_encoding(h, w, c // 2), dtype).reshape(h * w, c), None
    valid = downsample_valid(valid, h, w)
    positions = masked_sine_position_encoding(valid, c // 2).astype(dtype).reshape(b, h * w, c)
    return tokens, positions, valid.reshape(b, h * w)


def _attention_float32_softmax(query, key, value, mask=None, dropout_rng=None, dropout_rate=0.0,
                                broadcast_dropout=False, deterministic=True, dtype=None, precision=None, module=None):
    """flax's dot-product attention with the softmax in float32 and the weights back in the input dtype."""
    weights = nn.dot_product_attention_weights(
        query, key, mask=mask, broadcast_dropout=broadcast_dropout, dropout_rng=dropout_rng,
        dropout_rate=dropout_rate, deterministic=deterministic, dtype=dtype, precision=precision, module=module,
        force_fp32_for_softmax=True)
    return jnp.einsum("...hqk,...khd->...qhd", weights.astype(value.dtype), value, precision=precision)


def attention(num_heads: int, dropout: float, dtype, name: str, train: bool) -> nn.MultiHeadDotProductAttention:
    """PyTorch-style multi-head attention (q/k/v and output projections with bias, the reference's
    inits, dropout on each attention weight), its softmax in float32. Call it as
    `(query [B, Nq, C], key [B, Nk, C], value [B, Nk, C], mask=key_mask(key_valid))` → [B, Nq, C]."""
    return nn.MultiHeadDotProductAttention(
        num_heads, dtype=dtype, dropout_rate=dropout, broadcast_dropout=False, deterministic=not train,
        kernel_init=_packed_xavier, out_kernel_init=_xavier, attention_fn=_attention_float32_softmax, name=name)


def key_mask(key_valid):
    """bool [B, Nk] (True: attend) or None → the attention mask [B, 1, 1, Nk] or None."""
    return None if key_valid is None else key_valid[:, None, None, :]


class FeedForward(nn.Module):
    """Linear → ReLU → dropout → Linear: [..., C] → [..., C]."""

    hidden_dim: int
    dropout: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        y = nn.Dense(self.hidden_dim, dtype=self.dtype, kernel_init=_xavier, name="linear1")(x)
        y = nn.Dropout(self.dropout)(nn.relu(y), deterministic=not train)
        return nn.Dense(x.shape[-1], dtype=self.dtype, kernel_init=_xavier, name="linear2")(y)


def add_and_norm(x, y, name: str, dropout: float, train: bool, dtype):
    """The post-norm residual of the reference's layers: LayerNorm(x + dropout(y)), the norm named `name`."""
    y = nn.Dropout(dropout, deterministic=not train)(y)
    return nn.LayerNorm(LAYER_NORM_EPSILON, dtype=dtype, name=name)(x + y)


class EncoderLayer(nn.Module):
    """Post-norm self-attention layer; the position encoding is added to queries and keys only."""

    num_heads: int = 8
    dim_feedforward: int = 2048
    dropout: float = 0.1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, pos, key_valid=None, train: bool = False):
        """x: [B, N, C] tokens, pos: [N, C] or [B, N, C], key_valid: bool [B, N] or None → [B, N, C]."""
        residual = functools.partial(add_and_norm, dropout=self.dropout, train=train, dtype=self.dtype)
        qk = x + pos
        y = attention(self.num_heads, self.dropout, self.dtype, "self_attn", train)(qk, qk, x, mask=key_mask(key_valid))
        x = residual(x, y, "norm1")
        return residual(x, FeedForward(self.dim_feedforward, self.dropout, self.dtype, name="ffn")(x, train), "norm2")


class DecoderLayer(nn.Module):
    """Post-norm DETR decoder layer: self-attention, cross-attention to the image, feed-forward."""

    num_heads: int = 8
    dim_feedforward: int = 2048
    dropout: float = 0.1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, query_pos, memory, memory_pos, memory_valid=None, train: bool = False):
        """x: [B, Q, C], query_pos: [Q, C], memory: [B, N, C], memory_pos: [N, C] or [B, N, C],
        memory_valid: bool [B, N] or None (image tokens) → [B, Q, C]."""
        residual = functools.partial(add_and_norm, dropout=self.dropout, train=train, dtype=self.dtype)
        q = x + query_pos
        x = residual(x, attention(self.num_heads, self.dropout, self.dtype, "self_attn", train)(q, q, x), "norm1")
        y = attention(self.num_heads, self.dropout, self.dtype, "cross_attn", train)(
            x + query_pos, memory + memory_pos, memory, mask=key_mask(memory_valid))
        x = residual(x, y, "norm2")
        return residual(x, FeedForward(self.dim_feedforward, self.dropout, self.dtype, name="ffn")(x, train), "norm3")


class TransformerEncoder(nn.Module):
    """A stack of post-norm encoder layers over a feature map (no final norm, as the reference)."""

    num_layers: int = 6
    num_heads: int = 8
    dim_feedforward: int = 2048
    dropout: float = 0.1
    remat: bool = False  # recompute each layer's activations in the backward pass
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, valid=None, train: bool = False):
        """features: [B, H, W, C], valid: bool [B, H', W'] input pixels or None → [B, H, W, C]."""
        x, pos, key_valid = tokens_and_positions(features, self.dtype, valid)
        layer_class = nn.remat(EncoderLayer, static_argnums=(4,)) if self.remat else EncoderLayer
        for i in range(self.num_layers):
            x = layer_class(self.num_heads, self.dim_feedforward, self.dropout, self.dtype, name=f"layer{i}")(
                x, pos, key_valid, train
            )
        return x.reshape(features.shape)


class QueryDecoder(nn.Module):
    """Learned queries attending to an image feature map.

    The decoder content starts at zeros; the learned query embeddings are the query positions.
    Returns every layer's output through the shared final LayerNorm (deep supervision).
    """

    num_queries: int = 100
    num_layers: int = 6
    num_heads: int = 8
    dim_feedforward: int = 2048
    dropout: float = 0.1
    remat: bool = False  # recompute each layer's activations in the backward pass
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, memory, valid=None, train: bool = False):
        """memory: [B, H, W, C], valid: bool [B, H', W'] input pixels or None → [L, B, Q, C] for L
        decoder layers. With `valid`, positions are mask-aware and padded tokens are never attended."""
        b, c = memory.shape[0], memory.shape[-1]
        memory, memory_pos, memory_valid = tokens_and_positions(memory, self.dtype, valid)
        query_pos = self.param("query_embed", nn.initializers.normal(1.0), (self.num_queries, c))
        query_pos = query_pos.astype(self.dtype)
        x = jnp.zeros((b, self.num_queries, c), self.dtype)
        final_norm = nn.LayerNorm(LAYER_NORM_EPSILON, dtype=self.dtype, name="norm")
        outputs = []
        layer_class = nn.remat(DecoderLayer, static_argnums=(6,)) if self.remat else DecoderLayer
        for i in range(self.num_layers):
            layer = layer_class(self.num_heads, self.dim_feedforward, self.dropout, self.dtype, name=f"layer{i}")
            x = layer(x, query_pos, memory, memory_pos, memory_valid, train)
            outputs.append(final_norm(x))
        return jnp.stack(outputs)
