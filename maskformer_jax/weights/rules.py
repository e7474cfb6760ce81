"""Shared machinery of the weight converters: a rule fills one Flax variable from named source
tensors, and a conversion fails, naming the keys, when a source tensor is missing, left unused (and
not deliberately skipped), or has the wrong shape, or when the class count differs from the config's.
"""

from typing import Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

import ml_collections
import numpy as np
from flax import traverse_util

from maskformer_jax.models import abstract_variables

BATCH_NORM_EPSILON = 1e-5


class Rule(NamedTuple):
    """Fill the Flax variable at `path` with `convert(*state_dict[name] for name in sources)`.

    Paths start with the collection, and the helpers below take the path of a module's parameters,
    e.g. ("params", "backbone", "stem_conv1")."""

    path: tuple
    sources: Sequence[str]
    convert: Callable[..., np.ndarray]


def conv(weight):  # torch [out, in, kh, kw] → flax [kh, kw, in, out]
    return weight.transpose(2, 3, 1, 0)


def dense(weight):  # torch [out, in] → flax [in, out]
    return weight.T


def same(array):
    return array


def bn_scale(weight, bias, mean, var):
    return weight / np.sqrt(var + BATCH_NORM_EPSILON)


def bn_bias(weight, bias, mean, var):
    return bias - mean * bn_scale(weight, bias, mean, var)


def linear(path, prefix):
    yield Rule(path + ("kernel",), [f"{prefix}.weight"], dense)
    yield Rule(path + ("bias",), [f"{prefix}.bias"], same)


def norm(path, prefix):
    yield Rule(path + ("scale",), [f"{prefix}.weight"], same)
    yield Rule(path + ("bias",), [f"{prefix}.bias"], same)


def conv_with_bias(path, prefix):
    """A convolution with a bias and no norm."""
    yield Rule(path + ("kernel",), [f"{prefix}.weight"], conv)
    yield Rule(path + ("bias",), [f"{prefix}.bias"], same)


def conv_group_norm(path, conv_prefix, norm_prefix):
    """A convolution without bias and its GroupNorm (our ConvGroupNorm: `conv` and `norm` inside `path`)."""
    yield Rule(path + ("conv", "kernel"), [f"{conv_prefix}.weight"], conv)
    yield from norm(path + ("norm",), norm_prefix)


def conv_frozen_bn(path, conv_prefix, norm_prefix):
    """A convolution without bias and its frozen BatchNorm (folded into our scale and bias, which live in
    the "frozen" collection at the same module path)."""
    yield Rule(path + ("conv", "kernel"), [f"{conv_prefix}.weight"], conv)
    stats = [f"{norm_prefix}.{name}" for name in ("weight", "bias", "running_mean", "running_var")]
    yield Rule(("frozen",) + path[1:] + ("norm", "scale"), stats, bn_scale)
    yield Rule(("frozen",) + path[1:] + ("norm", "bias"), stats, bn_bias)


def swin_backbone_rules(depths, patch_embed: str, patch_norm: str, block_names, downsample, stage_norm) -> Iterator[Rule]:
    """Our Swin backbone from a checkpoint layout that the arguments name: the patch embedding's conv and
    norm prefixes; block_names(stage, block) → {"qkv": rules for ("attn", "qkv") given its path,
    "relative_position_bias_table": name, and prefixes "proj", "norm1", "norm2", "fc1", "fc2"};
    downsample(stage) → the patch merging prefix; stage_norm(stage) → an output norm prefix or None."""
    target = ("params", "backbone")
    yield from conv_with_bias(target + ("patch_embed",), patch_embed)
    yield from norm(target + ("patch_norm",), patch_norm)
    for stage, depth in enumerate(depths):
        for block in range(depth):
            path, names = target + (f"stage{stage}_block{block}",), block_names(stage, block)
            yield from names["qkv"](path + ("attn", "qkv"))
            table = ("attn", "relative_position_bias_table")
            yield Rule(path + table, [names["relative_position_bias_table"]], same)
            yield from linear(path + ("attn", "proj"), names["proj"])
            for name in ("norm1", "norm2"):
                yield from norm(path + (name,), names[name])
            for name in ("fc1", "fc2"):
                yield from linear(path + (name,), names[name])
        if stage < len(depths) - 1:
            merging, prefix = target + (f"stage{stage}_downsample",), downsample(stage)
            yield Rule(merging + ("reduction", "kernel"), [prefix + ".reduction.weight"], dense)
            yield from norm(merging + ("norm",), prefix + ".norm")
        if stage_norm(stage):
            yield from norm(target + (f"norm{stage}",), stage_norm(stage))


def variable_shapes(model_config: ml_collections.ConfigDict) -> dict:
    """{path tuple: shape} of every variable of `build_model(model_config)`, without computing them."""
    return {path: leaf.shape for path, leaf in traverse_util.flatten_dict(abstract_variables(model_config)).items()}


def to_numpy(tensor) -> np.ndarray:
    if hasattr(tensor, "detach"):  # a torch tensor; torch is not imported here
        tensor = tensor.detach().cpu().float().numpy()
    return np.asarray(tensor, dtype=np.float32)


def listing(names, limit=12) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def convert_state_dict(state_dict: Mapping[str, object], rules: Iterable[Rule], model_config, what: str,
                       skipped: Callable[[str], bool] = lambda name: False, class_key: str | None = None,
                       only: Callable[[tuple], bool] | None = None) -> dict:
    """Apply `rules` to `state_dict`; returns the nested variables {"params", "frozen"} (numpy float32).

    Every variable of the model (or, with `only`, of the paths it accepts) must be filled; every
    source tensor must be used unless `skipped(name)`; `class_key` names the class-head weight whose
    first dimension must be num_classes + 1. Raises ValueError listing all problems, naming `what`.
    """
    expected = variable_shapes(model_config)
    if only is not None:
        expected = {path: shape for path, shape in expected.items() if only(path)}
    rules = [rule for rule in rules if rule.path in expected]  # e.g. the input projection exists only if needed
    missing, mismatched, flat, used = set(), [], {}, set()
    for rule in rules:
        absent = [name for name in rule.sources if name not in state_dict]
        if absent:
            missing.update(absent)
            continue
        used.update(rule.sources)
        value = rule.convert(*(to_numpy(state_dict[name]) for name in rule.sources))
        if value.shape != expected[rule.path]:
            shapes = ", ".join(f"{name} {tuple(np.shape(state_dict[name]))}" for name in rule.sources)
            mismatched.append(f"{shapes} → {'/'.join(rule.path)} needs {expected[rule.path]}")
            continue
        flat[rule.path] = value

    errors = []
    if class_key in state_dict and np.shape(state_dict[class_key])[0] != model_config.num_classes + 1:
        errors.append(f"{class_key} has {np.shape(state_dict[class_key])[0] - 1} classes + no-object, "
                      f"config.model.num_classes is {model_config.num_classes}")
    unexpected = [name for name in state_dict if name not in used and not skipped(name)]
    if missing:
        errors.append(f"missing from the {what} ({len(missing)}): {listing(missing)}")
    if unexpected:
        errors.append(f"unexpected in the {what} ({len(unexpected)}): {listing(unexpected)}")
    if mismatched:
        errors.append(f"shape mismatch ({len(mismatched)}): " + "; ".join(mismatched[:12]))
    if errors:
        raise ValueError(f"Cannot convert the {what}:\n  " + "\n  ".join(errors))
    unfilled = set(expected) - set(flat)
    if unfilled:  # a rule is missing for this model: a bug here, not in the input
        raise RuntimeError(f"no conversion rule for {listing('/'.join(p) for p in unfilled)}")
    return traverse_util.unflatten_dict(flat)
