"""Hugging Face transformers `MaskFormerForInstanceSegmentation` state dict → Flax variables.

Every Flax variable is filled from named source tensors by one rule; the conversion fails, naming the
keys, when a source tensor is missing, left unused, or has the wrong shape.
"""

from typing import Callable, Iterator, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from maskformer_jax.models import build_model

BATCH_NORM_EPSILON = 1e-5

# Source tensors that no Flax variable needs: derived buffers, the loss's class weights, and the final
# LayerNorm of HF's Swin model, which no backbone output goes through.
SKIPPED_SUFFIXES = ("num_batches_tracked", "relative_position_index")
SKIPPED_NAMES = (
    "criterion.empty_weight",
    "model.pixel_level_module.encoder.model.layernorm.weight",
    "model.pixel_level_module.encoder.model.layernorm.bias",
)


class Rule(NamedTuple):
    """Fill the Flax variable at `path` with `convert(*state_dict[name] for name in sources)`."""

    path: tuple
    sources: Sequence[str]
    convert: Callable[..., np.ndarray]


def _conv(weight):  # torch [out, in, kh, kw] → flax [kh, kw, in, out]
    return weight.transpose(2, 3, 1, 0)


def _dense(weight):  # torch [out, in] → flax [in, out]
    return weight.T


def _same(array):
    return array


def _bn_scale(weight, bias, mean, var):
    return weight / np.sqrt(var + BATCH_NORM_EPSILON)


def _bn_bias(weight, bias, mean, var):
    return bias - mean * _bn_scale(weight, bias, mean, var)


def _linear(path, prefix):
    yield Rule(path + ("kernel",), [f"{prefix}.weight"], _dense)
    yield Rule(path + ("bias",), [f"{prefix}.bias"], _same)


def _norm(path, prefix):
    yield Rule(path + ("scale",), [f"{prefix}.weight"], _same)
    yield Rule(path + ("bias",), [f"{prefix}.bias"], _same)


def _conv_frozen_bn(path, conv_prefix, norm_prefix):
    yield Rule(("params",) + path + ("conv", "kernel"), [f"{conv_prefix}.weight"], _conv)
    stats = [f"{norm_prefix}.{name}" for name in ("weight", "bias", "running_mean", "running_var")]
    yield Rule(("frozen",) + path + ("norm", "scale"), stats, _bn_scale)
    yield Rule(("frozen",) + path + ("norm", "bias"), stats, _bn_bias)


def _resnet_rules(config) -> Iterator[Rule]:
    if config.deep_stem or tuple(config.res5_multi_grid) != (1, 1, 1):
        raise ValueError("Hugging Face MaskFormer has no ResNet with a deep stem or dilated res5 (R101c)")
    prefix = "model.pixel_level_module.encoder."
    stem = prefix + "embedder.embedder."
    yield from _conv_frozen_bn(("backbone", "stem_conv1"), stem + "convolution", stem + "normalization")
    for stage, depth in enumerate(config.depths):
        for block in range(depth):
            source = f"{prefix}encoder.stages.{stage}.layers.{block}."
            target = ("backbone", f"res{stage + 2}_{block}")
            for i in range(3):
                layer = f"{source}layer.{i}."
                yield from _conv_frozen_bn(target + (f"conv{i + 1}",), layer + "convolution", layer + "normalization")
            if block == 0:
                shortcut = source + "shortcut."
                yield from _conv_frozen_bn(target + ("shortcut",), shortcut + "convolution", shortcut + "normalization")


def _swin_rules(config) -> Iterator[Rule]:
    prefix = "model.pixel_level_module.encoder."
    target = ("params", "backbone")
    embeddings = prefix + "model.embeddings."
    yield Rule(target + ("patch_embed", "kernel"), [embeddings + "patch_embeddings.projection.weight"], _conv)
    yield Rule(target + ("patch_embed", "bias"), [embeddings + "patch_embeddings.projection.bias"], _same)
    yield from _norm(target + ("patch_norm",), embeddings + "norm")
    for stage, depth in enumerate(config.depths):
        layer = f"{prefix}model.encoder.layers.{stage}."
        for block in range(depth):
            source = f"{layer}blocks.{block}."
            path = target + (f"stage{stage}_block{block}",)
            attention = source + "attention.self."
            qkv = [f"{attention}{name}" for name in ("query", "key", "value")]
            yield Rule(
                path + ("attn", "qkv", "kernel"),
                [f"{name}.weight" for name in qkv],
                lambda *w: np.concatenate(w, axis=0).T,
            )
            yield Rule(
                path + ("attn", "qkv", "bias"), [f"{name}.bias" for name in qkv], lambda *b: np.concatenate(b)
            )
            yield Rule(
                path + ("attn", "relative_position_bias_table"),
                [attention + "relative_position_bias_table"],
                _same,
            )
            yield from _linear(path + ("attn", "proj"), source + "attention.output.dense")
            yield from _norm(path + ("norm1",), source + "layernorm_before")
            yield from _norm(path + ("norm2",), source + "layernorm_after")
            yield from _linear(path + ("fc1",), source + "intermediate.dense")
            yield from _linear(path + ("fc2",), source + "output.dense")
        if stage < len(config.depths) - 1:
            downsample = target + (f"stage{stage}_downsample",)
            yield Rule(downsample + ("reduction", "kernel"), [layer + "downsample.reduction.weight"], _dense)
            yield from _norm(downsample + ("norm",), layer + "downsample.norm")
        yield from _norm(target + (f"norm{stage}",), f"{prefix}hidden_states_norms.{stage}")


def _attention_rules(path, prefix, num_heads) -> Iterator[Rule]:
    def split_heads(weight):  # [C, C] torch → [C, heads, head_dim]
        return weight.T.reshape(weight.shape[1], num_heads, -1)

    for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        yield Rule(path + (ours, "kernel"), [f"{prefix}.{theirs}.weight"], split_heads)
        yield Rule(path + (ours, "bias"), [f"{prefix}.{theirs}.bias"], lambda b: b.reshape(num_heads, -1))
    yield Rule(path + ("out", "kernel"), [f"{prefix}.o_proj.weight"], lambda w: w.T.reshape(num_heads, -1, w.shape[0]))
    yield Rule(path + ("out", "bias"), [f"{prefix}.o_proj.bias"], _same)


def _head_rules(config) -> Iterator[Rule]:
    decoder = "model.pixel_level_module.decoder."
    pixel = ("params", "pixel_decoder")

    def conv_group_norm(name, prefix):
        yield Rule(pixel + (name, "conv", "kernel"), [f"{prefix}.0.weight"], _conv)
        yield from _norm(pixel + (name, "norm"), f"{prefix}.1")

    yield from conv_group_norm("layer_4", decoder + "fpn.stem")
    for i, level in enumerate((3, 2, 1)):  # HF orders the FPN layers from res4 down to res2
        yield from conv_group_norm(f"adapter_{level}", f"{decoder}fpn.layers.{i}.proj")
        yield from conv_group_norm(f"layer_{level}", f"{decoder}fpn.layers.{i}.block")
    yield Rule(pixel + ("mask_features", "kernel"), [decoder + "mask_projection.weight"], _conv)
    yield Rule(pixel + ("mask_features", "bias"), [decoder + "mask_projection.bias"], _same)

    transformer = "model.transformer_module."
    queries = ("params", "query_decoder")
    yield Rule(queries + ("query_embed",), [transformer + "queries_embedder.weight"], _same)
    for i in range(config.decoder_layers):
        source = f"{transformer}decoder.layers.{i}."
        layer = queries + (f"layer{i}",)
        yield from _attention_rules(layer + ("self_attn",), source + "self_attn", config.num_heads)
        yield from _attention_rules(layer + ("cross_attn",), source + "encoder_attn", config.num_heads)
        yield from _norm(layer + ("norm1",), source + "self_attn_layer_norm")
        yield from _norm(layer + ("norm2",), source + "encoder_attn_layer_norm")
        yield from _norm(layer + ("norm3",), source + "final_layer_norm")
        yield from _linear(layer + ("ffn", "linear1"), source + "mlp.fc1")
        yield from _linear(layer + ("ffn", "linear2"), source + "mlp.fc2")
    yield from _norm(queries + ("norm",), transformer + "decoder.layernorm")
    yield from _linear(("params", "class_embed"), "class_predictor")
    for i in range(3):
        yield from _linear(("params", "mask_embed", f"layer{i}"), f"mask_embedder.{i}.0")


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
    for name in ("weight", "bias"):
        convert = _conv if name == "weight" else _same
        param = "kernel" if name == "weight" else "bias"
        yield Rule(("params", "input_proj", param), [f"model.transformer_module.input_projection.{name}"], convert)


def _to_numpy(tensor) -> np.ndarray:
    if hasattr(tensor, "detach"):  # a torch tensor; torch is not imported here
        tensor = tensor.detach().cpu().float().numpy()
    return np.asarray(tensor, dtype=np.float32)


def _listing(names, limit=12) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def variables_from_hf(state_dict: Mapping[str, object], model_config: ml_collections.ConfigDict) -> dict:
    """Flax variables {"params", "frozen"} (numpy float32) for `build_model(model_config)`.

    state_dict: names → torch tensors or numpy arrays, as `model.state_dict()` or a safetensors file
    of `MaskFormerForInstanceSegmentation` gives them. Raises ValueError naming every missing,
    unexpected or mis-shaped entry.
    """
    model = build_model(model_config)
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32))
    expected = {path: leaf.shape for path, leaf in traverse_util.flatten_dict(abstract).items()}

    rules = list(conversion_rules(model_config))
    rules = [rule for rule in rules if rule.path in expected]  # the input projection exists only if needed
    missing, mismatched, flat, used = set(), [], {}, set()
    for rule in rules:
        absent = [name for name in rule.sources if name not in state_dict]
        if absent:
            missing.update(absent)
            continue
        used.update(rule.sources)
        value = rule.convert(*(_to_numpy(state_dict[name]) for name in rule.sources))
        if value.shape != expected[rule.path]:
            shapes = ", ".join(f"{name} {tuple(np.shape(state_dict[name]))}" for name in rule.sources)
            mismatched.append(f"{shapes} → {'/'.join(rule.path)} needs {expected[rule.path]}")
            continue
        flat[rule.path] = value

    errors = []
    class_key = "class_predictor.weight"
    if class_key in state_dict and np.shape(state_dict[class_key])[0] != model_config.num_classes + 1:
        errors.append(
            f"{class_key} has {np.shape(state_dict[class_key])[0] - 1} classes + no-object, "
            f"config.model.num_classes is {model_config.num_classes}"
        )
    unexpected = [
        name
        for name in state_dict
        if name not in used
        and name not in SKIPPED_NAMES
        and not name.endswith(SKIPPED_SUFFIXES)
    ]
    if missing:
        errors.append(f"missing from the state dict ({len(missing)}): {_listing(missing)}")
    if unexpected:
        errors.append(f"unexpected in the state dict ({len(unexpected)}): {_listing(unexpected)}")
    if mismatched:
        errors.append(f"shape mismatch ({len(mismatched)}): " + "; ".join(mismatched[:12]))
    if errors:
        raise ValueError("Cannot convert the Hugging Face state dict:\n  " + "\n  ".join(errors))
    unfilled = set(expected) - set(flat)
    if unfilled:  # a rule is missing for this model: a bug here, not in the input
        raise RuntimeError(f"no conversion rule for {_listing('/'.join(p) for p in unfilled)}")
    return traverse_util.unflatten_dict(flat)
