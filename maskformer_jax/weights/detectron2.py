"""Official MaskFormer model-zoo checkpoints (detectron2 `model_final_*.pkl`) → Flax variables.

A model-zoo file is a pickle of {"model": {detectron2 name: numpy array}, "__author__": ..., ...}.
Names follow the modules of facebookresearch/MaskFormer: `backbone.*` (detectron2 ResNet, DeepLab stem
for R101c, or `D2SwinTransformer`), `sem_seg_head.pixel_decoder.*` (`BasePixelDecoder` /
`TransformerEncoderPixelDecoder`) and `sem_seg_head.predictor.*` (`TransformerPredictor`). Files
written before `MaskFormerHead` version 2 keep the pixel decoder directly under `sem_seg_head.`
(the ResNet model-zoo files do); both layouts are read.
"""

import pickle
from typing import Iterator, Mapping

import ml_collections
import numpy as np

from maskformer_jax.weights.rules import (Rule, conv_frozen_bn, conv_group_norm, conv_with_bias, convert_state_dict,
                                          linear, norm, same, swin_backbone_rules, to_numpy)

# Buffers that no Flax variable needs: BatchNorm counters, Swin's derived index and mask tables, the
# loss's class weights and the input normalisation (ours is models.normalize).
SKIPPED_SUFFIXES = ("num_batches_tracked", "relative_position_index", "attn_mask")
SKIPPED_NAMES = ("criterion.empty_weight", "pixel_mean", "pixel_std")
PIXEL_DECODER_PREFIX = "sem_seg_head.pixel_decoder."
LEGACY_PIXEL_DECODER_PREFIX = "sem_seg_head."  # MaskFormerHead < version 2
PREDICTOR_PREFIX = "sem_seg_head.predictor."


def read_pickle(path) -> dict[str, np.ndarray]:
    """name → array of a detectron2 .pkl: the dict under "model" if there is one, else the dict itself.

    Non-array entries (e.g. "__author__", "matching_heuristics") are dropped. MaskFormer's Swin
    conversions pickle torch tensors, which need torch to unpickle and become numpy here. Raises
    ValueError naming `path` when the file is not a pickled dict of arrays.
    """
    try:
        with open(path, "rb") as file:
            data = pickle.load(file, encoding="latin1")  # latin1: files pickled by Python 2 (Caffe2 era)
    except ImportError as error:
        raise ImportError(f"{path} holds PyTorch tensors; reading it needs torch (CPU build: pip install torch "
                          "--index-url https://download.pytorch.org/whl/cpu)") from error
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise ValueError(f"{path} is not a detectron2 .pkl checkpoint (unpickling failed: {error})") from error
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a detectron2 .pkl checkpoint: it holds a {type(data).__name__}, not a dict")
    arrays = {name: to_numpy(value) if hasattr(value, "detach") else value
              for name, value in data.items() if isinstance(value, np.ndarray) or hasattr(value, "detach")}
    if not arrays:
        raise ValueError(f"{path} is not a detectron2 .pkl checkpoint: no numpy arrays in it")
    return arrays


def resnet_rules(backbone_config: ml_collections.ConfigDict, prefix: str) -> Iterator[Rule]:
    """Rules for detectron2's ResNet (`{prefix}stem.conv1`, `{prefix}res2.0.conv1`, ...).

    With `deep_stem` the stem is DeepLab's `DeepLabStem`: `stem.conv1`, `stem.conv2`, `stem.conv3`.
    Dilations change no parameter. Every conv has a frozen BatchNorm at `<conv>.norm`.
    """
    stem_convs = ("conv1", "conv2", "conv3") if backbone_config.deep_stem else ("conv1",)
    for name in stem_convs:
        source = f"{prefix}stem.{name}"
        yield from conv_frozen_bn(("params", "backbone", f"stem_{name}"), source, f"{source}.norm")
    for stage, depth in enumerate(backbone_config.depths):
        for block in range(depth):
            source = f"{prefix}res{stage + 2}.{block}."
            target = ("params", "backbone", f"res{stage + 2}_{block}")
            # detectron2 adds a shortcut conv only where channels change: the first block of a stage.
            convs = ("conv1", "conv2", "conv3", "shortcut") if block == 0 else ("conv1", "conv2", "conv3")
            for name in convs:
                yield from conv_frozen_bn(target + (name,), source + name, f"{source}{name}.norm")


def swin_rules(backbone_config: ml_collections.ConfigDict, prefix: str, out_norms: bool = True) -> Iterator[Rule]:
    """Rules for the official Swin names (`{prefix}patch_embed.proj`, `{prefix}layers.0.blocks.0.attn.qkv`, ...).

    out_norms: also the per-stage output LayerNorms `{prefix}norm{s}` of MaskFormer's
    `D2SwinTransformer` (ImageNet classification checkpoints have none).
    """
    def block_names(stage, block):
        source = f"{prefix}layers.{stage}.blocks.{block}."
        # qkv is one Linear(C, 3C) in both; its output splits as (3, heads, head_dim) in both.
        return {"qkv": lambda path: linear(path, source + "attn.qkv"),
                "relative_position_bias_table": source + "attn.relative_position_bias_table",
                "proj": source + "attn.proj", "norm1": source + "norm1", "norm2": source + "norm2",
                "fc1": source + "mlp.fc1", "fc2": source + "mlp.fc2"}

    yield from swin_backbone_rules(backbone_config.depths, f"{prefix}patch_embed.proj", f"{prefix}patch_embed.norm", block_names,
                          lambda stage: f"{prefix}layers.{stage}.downsample",
                          lambda stage: f"{prefix}norm{stage}" if out_norms else None)


def _multihead_attention_rules(path, prefix, num_heads) -> Iterator[Rule]:
    """torch.nn.MultiheadAttention (q, k, v packed in `in_proj_weight` [3C, C]) → our DenseGeneral
    query/key/value [C, heads, head_dim] and out [heads, head_dim, C].

    A tensor that cannot be split is passed on unchanged, so that the engine reports its shape.
    """

    def splittable(rows):
        return rows % 3 == 0 and (rows // 3) % num_heads == 0

    def in_proj_kernel(part):
        def convert(weight):  # [3C, C_in] → [C_in, heads, head_dim]
            if not splittable(weight.shape[0]):
                return weight
            return np.split(weight, 3)[part].T.reshape(weight.shape[1], num_heads, -1)

        return convert

    def in_proj_bias(part):
        def convert(bias):  # [3C] → [heads, head_dim]
            return np.split(bias, 3)[part].reshape(num_heads, -1) if splittable(bias.shape[0]) else bias

        return convert

    def out_kernel(weight):  # [C_out, C] → [heads, head_dim, C_out]
        return weight.T.reshape(num_heads, -1, weight.shape[0]) if weight.shape[1] % num_heads == 0 else weight

    for part, ours in enumerate(("query", "key", "value")):
        yield Rule(path + (ours, "kernel"), [f"{prefix}.in_proj_weight"], in_proj_kernel(part))
        yield Rule(path + (ours, "bias"), [f"{prefix}.in_proj_bias"], in_proj_bias(part))
    yield Rule(path + ("out", "kernel"), [f"{prefix}.out_proj.weight"], out_kernel)
    yield Rule(path + ("out", "bias"), [f"{prefix}.out_proj.bias"], same)


def pixel_decoder_rules(
    model_config: ml_collections.ConfigDict, prefix: str = PIXEL_DECODER_PREFIX
) -> Iterator[Rule]:
    """`BasePixelDecoder` (and, with encoder_layers > 0, `TransformerEncoderPixelDecoder`) names.

    detectron2 numbers the FPN convs by input level: `adapter_1`/`layer_1` read res2, `layer_4` res5
    (our names are the same). Convs with a GroupNorm have no bias; the norm is `<conv>.norm`.
    """
    target = ("params", "pixel_decoder")
    names = ["layer_4"] + [f"{kind}_{level}" for level in (3, 2, 1) for kind in ("adapter", "layer")]
    for name in names:
        yield from conv_group_norm(target + (name,), f"{prefix}{name}", f"{prefix}{name}.norm")
    yield from conv_with_bias(target + ("mask_features",), f"{prefix}mask_features")
    if model_config.encoder_layers > 0:
        yield from conv_with_bias(target + ("input_proj",), f"{prefix}input_proj")
        for i in range(model_config.encoder_layers):
            source = f"{prefix}transformer.encoder.layers.{i}."
            layer = target + ("encoder", f"layer{i}")
            yield from _multihead_attention_rules(layer + ("self_attn",), source + "self_attn", model_config.num_heads)
            yield from linear(layer + ("ffn", "linear1"), source + "linear1")
            yield from linear(layer + ("ffn", "linear2"), source + "linear2")
            yield from norm(layer + ("norm1",), source + "norm1")
            yield from norm(layer + ("norm2",), source + "norm2")


def predictor_rules(model_config: ml_collections.ConfigDict) -> Iterator[Rule]:
    """`TransformerPredictor` names: queries, the optional input projection, the DETR decoder, heads."""
    queries = ("params", "query_decoder")
    yield Rule(queries + ("query_embed",), [PREDICTOR_PREFIX + "query_embed.weight"], same)
    # Only models whose decoder input width differs from hidden_dim (or that enforce it) have one;
    # the engine drops rules for variables the model lacks.
    yield from conv_with_bias(("params", "input_proj"), PREDICTOR_PREFIX + "input_proj")
    for i in range(model_config.decoder_layers):
        source = f"{PREDICTOR_PREFIX}transformer.decoder.layers.{i}."
        layer = queries + (f"layer{i}",)
        heads = model_config.num_heads
        yield from _multihead_attention_rules(layer + ("self_attn",), source + "self_attn", heads)
        yield from _multihead_attention_rules(layer + ("cross_attn",), source + "multihead_attn", heads)
        yield from linear(layer + ("ffn", "linear1"), source + "linear1")
        yield from linear(layer + ("ffn", "linear2"), source + "linear2")
        for name in ("norm1", "norm2", "norm3"):
            yield from norm(layer + (name,), source + name)
    yield from norm(queries + ("norm",), PREDICTOR_PREFIX + "transformer.decoder.norm")
    yield from linear(("params", "class_embed"), PREDICTOR_PREFIX + "class_embed")
    for i in range(3):
        yield from linear(("params", "mask_embed", f"layer{i}"), f"{PREDICTOR_PREFIX}mask_embed.layers.{i}")


def conversion_rules(
    model_config: ml_collections.ConfigDict, pixel_decoder_prefix: str = PIXEL_DECODER_PREFIX
) -> Iterator[Rule]:
    """Every rule needed for the model that `model_config` describes (backbone under "backbone.")."""
    backbone = model_config.backbone
    if backbone.name == "resnet":
        yield from resnet_rules(backbone, "backbone.")
    elif backbone.name == "swin":
        yield from swin_rules(backbone, "backbone.")
    else:
        raise ValueError(f"no detectron2 names for backbone {backbone.name!r}")
    yield from pixel_decoder_rules(model_config, pixel_decoder_prefix)
    yield from predictor_rules(model_config)


def pixel_decoder_prefix_of(state_dict: Mapping[str, object]) -> str:
    """The prefix under which `state_dict` keeps its pixel decoder: current or pre-version-2 layout."""
    legacy = any(
        name.startswith(LEGACY_PIXEL_DECODER_PREFIX)
        and not name.startswith((PIXEL_DECODER_PREFIX, PREDICTOR_PREFIX))
        for name in state_dict
    )
    return LEGACY_PIXEL_DECODER_PREFIX if legacy else PIXEL_DECODER_PREFIX


def skipped(name: str) -> bool:
    return name in SKIPPED_NAMES or name.endswith(SKIPPED_SUFFIXES)


def variables_from_detectron2(state_dict: Mapping[str, object], model_config: ml_collections.ConfigDict) -> dict:
    """Flax variables {"params", "frozen"} (numpy float32) for `build_model(model_config)`.

    state_dict: detectron2 names → numpy arrays (or torch tensors), as `read_pickle` returns them.
    Raises ValueError naming every missing, unexpected or mis-shaped entry and a class-count mismatch.
    """
    rules = conversion_rules(model_config, pixel_decoder_prefix_of(state_dict))
    return convert_state_dict(state_dict, rules, model_config, "detectron2 checkpoint", skipped=skipped,
                              class_key=PREDICTOR_PREFIX + "class_embed.weight")
