"""FPN pixel decoder ("BasePixelDecoder") and its variant with a transformer encoder on res5.

Layer names follow the reference: `adapter_{1,2,3}` laterals for res2..res4, `layer_{1..4}` output
convs, `mask_features` for the final projection.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from maskformer_jax.models.conv import Conv
from maskformer_jax.models.transformer import TransformerEncoder
from maskformer_jax.resize import downsample_valid, resize_nearest_legacy

# detectron2's c2_xavier_fill: kaiming-uniform with a=1, i.e. U(±sqrt(3 / fan_in)); biases 0.
c2_xavier_fill = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


class ConvGroupNorm(nn.Module):
    """Conv (no bias) → GroupNorm(32) → optional ReLU; with `valid` (bool [B, H, W], image positions)
    the GroupNorm statistics cover the image only, as on a canvas of its own size."""

    features: int
    kernel_size: int
    relu: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, valid=None):
        pad = self.kernel_size // 2
        x = Conv(
            self.features,
            (self.kernel_size, self.kernel_size),
            padding=((pad, pad), (pad, pad)),
            use_bias=False,
            dtype=self.dtype,
            kernel_init=c2_xavier_fill,
            name="conv",
        )(x)
        mask = None if valid is None else jnp.broadcast_to(valid[..., None], x.shape)
        x = nn.GroupNorm(num_groups=32, epsilon=1e-5, dtype=self.dtype, name="norm")(x, mask=mask)
        return nn.relu(x) if self.relu else x


class PixelDecoder(nn.Module):
    """Top-down FPN from res5 to res2, then a 3x3 conv to the per-pixel embeddings at stride 4.

    With `encoder_layers > 0` ("TransformerEncoderPixelDecoder"), res5 is projected to `conv_dim` and
    passed through that many transformer encoder layers before the FPN; the encoder output is also
    what the query decoder attends to. Otherwise the query decoder attends to the raw res5.
    """

    conv_dim: int = 256
    mask_dim: int = 256
    encoder_layers: int = 0
    num_heads: int = 8
    dim_feedforward: int = 2048
    dropout: float = 0.1
    remat: bool = False  # recompute each conv layer's (and encoder layer's) activations in the backward pass
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, valid=None, train: bool = False):
        """features: {"res2".."res5"} NHWC maps; valid: bool [B, H, W] input pixels (padding absent)
        or None (every position is image).

        Returns (pixel_embeddings [B, H/4, W/4, mask_dim], decoder_input [B, H/32, W/32, C]).
        """
        conv_class = nn.remat(ConvGroupNorm) if self.remat else ConvGroupNorm
        decoder_input = features["res5"]
        if self.encoder_layers > 0:
            x = Conv(self.conv_dim, (1, 1), dtype=self.dtype, kernel_init=c2_xavier_fill, name="input_proj")(
                decoder_input.astype(self.dtype)
            )
            decoder_input = TransformerEncoder(
                self.encoder_layers, self.num_heads, self.dim_feedforward, self.dropout, self.remat, self.dtype,
                name="encoder",
            )(x, valid, train)

        def valid_at(x):  # the image's positions at x's resolution (GroupNorm statistics)
            return None if valid is None else downsample_valid(valid, *x.shape[1:3])

        y = conv_class(self.conv_dim, 3, dtype=self.dtype, name="layer_4")(decoder_input, valid_at(decoder_input))
        for level in (3, 2, 1):  # res4, res3, res2
            lateral = features[f"res{level + 1}"]
            level_valid = valid_at(lateral)
            lateral = conv_class(self.conv_dim, 1, relu=False, dtype=self.dtype, name=f"adapter_{level}")(
                lateral, level_valid)
            y = lateral + resize_nearest_legacy(y, *lateral.shape[1:3])
            y = conv_class(self.conv_dim, 3, dtype=self.dtype, name=f"layer_{level}")(y, level_valid)
        pixel_embeddings = Conv(
            self.mask_dim,
            (3, 3),
            padding=((1, 1), (1, 1)),
            dtype=self.dtype,
            kernel_init=c2_xavier_fill,
            name="mask_features",
        )(y)
        return pixel_embeddings, decoder_input
