"""Hugging Face transformers `MaskFormerForInstanceSegmentation` state dict → Flax variables.

Every Flax variable is filled from named source tensors by one rule; the conversion fails, naming the
keys, when a source tensor is missing, left unused, or has the wrong shape.
"""

from typing import Iterator, Mapping

import ml_collections
import numpy as np

from maskformer_jax.weights.rules import (Rule, conv_frozen_bn, conv_group_norm, conv_with_bias, convert_state_dict,
                                          linear, norm, same, swin_backbone_rules)

# Source tensors that no Flax variable needs: derived buffers, the loss's class weights, and the final
# LayerNorm of HF's Swin model, which no backbone output goes through.
SKIPPED_SUFFIXES = ("num_batches_tracked", "relative_position_index")
SKIPPED_NAMES = (
    "criterion.empty_weight",
    "model.pixel_level_module.encoder.model.layernorm.weight",
    "model.pixel_level_module.encoder.model.layernorm.bias",
)


def _resnet_rules(config) -> Iterator[Rule]:
    if config.deep_stem or tuple(config.res5_multi_grid) != (1, 1, 1):
        raise ValueError("Hugging Face MaskFormer has no ResNet with a deep stem or dilated res5 (R101c)")
    prefix = "model.pixel_level_module.encoder."
    stem = prefix + "embedder.embedder."
    yield from conv_frozen_bn(("params", "backbone", "stem_conv1"), stem + "convolution", stem + "normalization")
    for stage, depth in enumerate(config.depths):
        for block in range(depth):
            source = f"{prefix}encoder.stages.{stage}.layers.{block}."
            target = ("params", "backbone", f"res{stage + 2}_{block}")
            for i in range(3):
                layer = f"{source}layer.{i}."
                yield from conv_frozen_bn(target + (f"conv{i + 1}",), layer + "convolution", layer + "normalization")
            if block == 0:
                shortcut = source + "shortcut."
                yield from conv_frozen_bn(target + ("shortcut",), shortcut + "convolution", shortcut + "normalization")


def _swin_rules(config) -> Iterator[Rule]:
    prefix = "model.pixel_level_module.encoder."
    embeddings = prefix + "model.embeddings."

    def block_names(stage, block):
        source = f"{prefix}model.encoder.layers.{stage}.blocks.{block}."
        attention = source + "attention.self."
        qkv = [f"{attention}{name}" for name in ("query", "key", "value")]

        def qkv_rules(path):  # three Linear(C, C) → our one qkv of [C, 3C]
            yield Rule(path + ("kernel",), [f"{name}.weight" for name in qkv], lambda *w: np.concatenate(w, axis=0).T)
            yield Rule(path + ("bias",), [f"{name}.bias" for name in qkv], lambda *b: np.concatenate(b))

        return {"qkv": qkv_rules, "relative_position_bias_table": attention + "relative_position_bias_table",
                "proj": source + "attention.output.dense", "norm1": source + "layernorm_before",
                "norm2": source + "layernorm_after", "fc1": source + "intermediate.dense", "fc2": source + "output.dense"}

    yield from swin_backbone_rules(config.depths, embeddings + "patch_embeddings.projection", embeddings + "norm", block_names,
                          lambda stage: f"{prefix}model.encoder.layers.{stage}.downsample",
                          lambda stage: f"{prefix}hidden_states_norms.{stage}")


def _attention_rules(path, prefix, num_heads) -> Iterator[Rule]:
    def split_heads(weight):  # [C, C] torch → [C, heads, head_dim]
        return weight.T.reshape(weight.shape[1], num_heads, -1)

    for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        yield Rule(path + (ours, "kernel"), [f"{prefix}.{theirs}.weight"], split_heads)
        yield Rule(path + (ours, "bias"), [f"{prefix}.{theirs}.bias"], lambda b: b.reshape(num_heads, -1))
    yield Rule(path + ("out", "kernel"), [f"{prefix}.o_proj.weight"], lambda w: w.T.reshape(num_heads, -1, w.shape[0]))
    yield Rule(path + ("out", "bias"), [f"{prefix}.o_proj.bias"], same)


def _head_rules(config) -> Iterator[Rule]:
    decoder = "model.pixel_level_module.decoder."
    pixel = ("params", "pixel_decoder")

    def conv_groupnorm(name, prefix):  # HF's Sequential(conv, GroupNorm, ...)
        yield from conv_group_norm(pixel + (name,), f"{prefix}.0", f"{prefix}.1")

    yield from conv_groupnorm("layer_4", decoder + "fpn.stem")
    for i, level in enumerate((3, 2, 1)):  # HF orders the FPN layers from res4 down to res2
        yield from conv_groupnorm(f"adapter_{level}", f"{decoder}fpn.layers.{i}.proj")
        yield from conv_groupnorm(f"layer_{level}", f"{decoder}fpn.layers.{i}.block")
    yield from conv_with_bias(pixel + ("mask_features",), decoder + "mask_projection")

    transformer = "model.transformer_module."
    queries = ("params", "query_decoder")
    yield Rule(queries + ("query_embed",), [transformer + "queries_embedder.weight"], same)
    for i in range(config.decoder_layers):
        source = f"{transformer}decoder.layers.{i}."
        layer = queries + (f"layer{i}",)
        yield from _attention_rules(layer + ("self_attn",), source + "self_attn", config.num_heads)
        yield from _attention_rules(layer + ("cross_attn",), source + "encoder_attn", config.num_heads)
        yield from norm(layer + ("norm1",), source + "self_attn_layer_norm")
        yield from norm(layer + ("norm2",), source + "encoder_attn_layer_norm")
        yield from norm(layer + ("norm3",), source + "final_layer_norm")
        yield from linear(layer + ("ffn", "linear1"), source + "mlp.fc1")
        yield from linear(layer + ("ffn", "linear2"), source + "mlp.fc2")
    yield from norm(queries + ("norm",), transformer + "decoder.layernorm")
    yield from linear(("params", "class_embed"), "class_predictor")
    for i in range(3):
        yield from linear(("params", "mask_embed", f"layer{i}"), f"mask_embedder.{i}.0")


def conversion_rules(model_config: ml_collections.ConfigDict) -> Iterator[Rule]:
    """Every rule needed for the model that `model_config` describes, input projection included."""
    if model_config.encoder_layers > 0:
        raise ValueError(
            "Hugging Face MaskFormer has no transformer-encoder pixel decoder; "
            f"config.model.encoder_layers must be 0, got {model_config.encoder_layers}"
        )
    backbone = model_config.backbone
    yield from (_resnet_rules if backbone.name == "resnet" else _swin_rules)(backbone)
    yield from _head_rules(model_config)
    yield from conv_with_bias(("params", "input_proj"), "model.transformer_module.input_projection")


def variables_from_hf(state_dict: Mapping[str, object], model_config: ml_collections.ConfigDict) -> dict:
    """Flax variables {"params", "frozen"} (numpy float32) for `build_model(model_config)`.

    state_dict: names → torch tensors or numpy arrays, as `model.state_dict()` or a safetensors file
    of `MaskFormerForInstanceSegmentation` gives them. Raises ValueError naming every missing,
    unexpected or mis-shaped entry.
    """
    return convert_state_dict(state_dict, conversion_rules(model_config), model_config, "Hugging Face state dict",
                              skipped=lambda name: name in SKIPPED_NAMES or name.endswith(SKIPPED_SUFFIXES),
                              class_key="class_predictor.weight")
