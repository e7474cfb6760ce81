"""MaskFormer: backbone → pixel decoder → query decoder → class and mask heads."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from maskformer_jax.errors import ConfigError
from maskformer_jax.models.conv import Conv
from maskformer_jax.models.pixel_decoder import PixelDecoder, c2_xavier_fill
from maskformer_jax.models.resnet import ResNet
from maskformer_jax.models.swin import Swin
from maskformer_jax.models.transformer import QueryDecoder

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Precision of every matmul-like op (convolutions, dense layers, einsums), as jax names it: "default"
# is the backend's fast choice (TF32 or bfloat16 passes for float32 on GPUs and TPUs), "highest" full
# float32 (CPUs always compute float32 fully); "bfloat16", "tensorfloat32", "float32" name the passes.
PRECISIONS = ("default", "high", "highest", "bfloat16", "tensorfloat32", "float32")
# The model's variable collections: trained parameters, and frozen BatchNorm statistics (never updated).
COLLECTIONS = ("params", "frozen")
PIXEL_MEAN = (123.675, 116.280, 103.530)  # docs/reference.md §1, RGB on a 0-255 scale
PIXEL_STD = (58.395, 57.120, 57.375)


def normalize(images, valid=None):
    """The model's input: uint8 [B, H, W, 3] → float32 normalised with the reference's mean and std;
    with valid bool [B, H, W], 0 outside it (detectron2 pads after normalising)."""
    images = (images.astype(jnp.float32) - jnp.asarray(PIXEL_MEAN)) / jnp.asarray(PIXEL_STD)
    return images if valid is None else jnp.where(valid[..., None], images, 0.0)


def init_variables(model: nn.Module, rng, image_size=(64, 64)) -> dict:
    """{"params", "frozen"} (COLLECTIONS) of `model`, initialised on one zero image of `image_size` (H, W).
    rng: a typed key or a raw uint32 [2] one (`jax.random.PRNGKey`)."""
    variables = model.init(rng, jnp.zeros((1, *image_size, 3), jnp.float32))
    return {name: variables.get(name, {}) for name in COLLECTIONS}


def abstract_variables(model_config: ml_collections.ConfigDict) -> dict:
    """Shapes and dtypes (jax.ShapeDtypeStruct) of `build_model(model_config)`'s variables, without computing them."""
    return jax.eval_shape(functools.partial(init_variables, build_model(model_config)), jax.random.key(0))


def torch_linear(features: int, fan_in: int, dtype, name: str) -> nn.Dense:
    """Dense with PyTorch's default Linear init, as the reference heads: U(±1/sqrt(fan_in)) for the
    kernel and the bias."""
    bound = fan_in**-0.5

    def bias_init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    kernel_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
    return nn.Dense(features, dtype=dtype, kernel_init=kernel_init, bias_init=bias_init, name=name)


class MaskEmbedding(nn.Module):
    """MLP hidden → hidden → hidden → mask_dim with ReLU between layers."""

    hidden_dim: int
    mask_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1]
        x = nn.relu(torch_linear(self.hidden_dim, fan_in, self.dtype, "layer0")(x))
        x = nn.relu(torch_linear(self.hidden_dim, self.hidden_dim, self.dtype, "layer1")(x))
        return torch_linear(self.mask_dim, self.hidden_dim, self.dtype, "layer2")(x)


class MaskFormer(nn.Module):
    """Images [B, H, W, 3] float32 (`normalize`d), H and W multiples of 32, and
    optionally valid bool [B, H, W] (True on image pixels; padding, at the bottom and right, then
    gets no attention and no share of the position encoding) → dict of
    class_logits [L, B, Q, K+1] float32 (index K = "no object"),
    mask_logits [L, B, Q, H/4, W/4] float32,
    pixel_embeddings [B, H/4, W/4, mask_dim] (the per-pixel embeddings).
    L = decoder layers; the last is the prediction, the others feed the auxiliary losses.
    """

    backbone: nn.Module
    pixel_decoder: PixelDecoder
    query_decoder: QueryDecoder
    num_classes: int
    hidden_dim: int = 256
    enforce_input_projection: bool = False
    dtype: Any = jnp.float32
    precision: str = "default"  # of every matmul-like op (PRECISIONS)

    @nn.compact
    def __call__(self, images, valid=None, train: bool = False):
        with jax.default_matmul_precision(self.precision):
            return self._forward(images, valid, train)

    def _forward(self, images, valid, train):
        features = self.backbone(images, train=train)
        pixel_embeddings, decoder_input = self.pixel_decoder(features, valid, train=train)
        if decoder_input.shape[-1] != self.hidden_dim or self.enforce_input_projection:
            decoder_input = Conv(
                self.hidden_dim, (1, 1), dtype=self.dtype, kernel_init=c2_xavier_fill, name="input_proj"
            )(decoder_input)
        queries = self.query_decoder(decoder_input, valid, train=train)  # [L, B, Q, C]
        class_head = torch_linear(self.num_classes + 1, queries.shape[-1], self.dtype, "class_embed")
        class_logits = class_head(queries)
        mask_embeddings = MaskEmbedding(self.hidden_dim, pixel_embeddings.shape[-1], self.dtype, name="mask_embed")(
            queries
        )
        # One product per layer, stacked: each is a plain batched matmul in [B, Q, h, w] layout (no
        # transpose), and inference, which keeps only the last layer, computes only that one.
        mask_logits = jnp.stack([jnp.einsum("bqc,bhwc->bqhw", e, pixel_embeddings) for e in mask_embeddings])
        return {
            "class_logits": class_logits.astype(jnp.float32),
            "mask_logits": mask_logits.astype(jnp.float32),
            "pixel_embeddings": pixel_embeddings,
        }


def build_backbone(config: ml_collections.ConfigDict, dtype, remat: bool = False) -> nn.Module:
    """A ResNet or Swin from `config.model.backbone` (see configs/base.py for the presets)."""
    if config.name == "resnet":
        return ResNet(
            depths=tuple(config.depths),
            deep_stem=config.deep_stem,
            res5_multi_grid=tuple(config.res5_multi_grid),
            remat=remat,
            dtype=dtype,
        )
    if config.name == "swin":
        return Swin(
            embed_dim=config.embed_dim,
            depths=tuple(config.depths),
            num_heads=tuple(config.num_heads),
            window_size=config.window_size,
            drop_path_rate=config.drop_path_rate,
            patch_size=config.patch_size,
            mlp_ratio=config.mlp_ratio,
            remat=remat,
            dtype=dtype,
        )
    raise ConfigError(f"config.model.backbone.name must be 'resnet' or 'swin', got {config.name!r}")


def build_model(config: ml_collections.ConfigDict) -> MaskFormer:
    """The MaskFormer described by a model config (`config.model` of an experiment config)."""
    if config.dtype not in DTYPES:
        raise ConfigError(f"config.model.dtype must be one of {sorted(DTYPES)}, got {config.dtype!r}")
    if config.precision not in PRECISIONS:
        raise ConfigError(f"config.model.precision must be one of {PRECISIONS}, got {config.precision!r}")
    dtype = DTYPES[config.dtype]
    transformer = dict(
        num_heads=config.num_heads, dim_feedforward=config.dim_feedforward, dropout=config.dropout,
        remat=config.remat_decoder, dtype=dtype,
    )
    return MaskFormer(
        backbone=build_backbone(config.backbone, dtype, config.remat_backbone),
        pixel_decoder=PixelDecoder(
            conv_dim=config.conv_dim, mask_dim=config.mask_dim, encoder_layers=config.encoder_layers, **transformer
        ),
        query_decoder=QueryDecoder(
            num_queries=config.num_queries, num_layers=config.decoder_layers, **transformer
        ),
        num_classes=config.num_classes,
        hidden_dim=config.hidden_dim,
        enforce_input_projection=config.enforce_input_projection,
        dtype=dtype,
        precision=config.precision,
    )
