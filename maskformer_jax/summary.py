"""Model summary: parameters per module and in total, and the FLOPs of one forward pass.

    python -m maskformer_jax.summary --config configs/ade20k_r50.py [--depth 2] [--config.model.dtype=bfloat16]

FLOPs come from XLA's cost analysis of the lowered forward pass at `config.dataset.image_size`
(a multiply-add counts as 2 FLOPs; the paper's fvcore counts it as 1).
"""

import collections
from typing import Iterable

import jax
import jax.numpy as jnp
import ml_collections
from absl import flags

from maskformer_jax import cli
from maskformer_jax.models import abstract_variables, build_model


def parameter_counts(variables, depth: int = 1) -> dict[str, int]:
    """{"module/path": count} over every collection (frozen BatchNorm included), up to `depth` levels."""
    counts = collections.Counter()
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
        names = [key.key for key in path[1:]]  # drop the collection name
        counts["/".join(names[:depth] if len(names) > depth else names[:-1])] += leaf.size
    return dict(counts)


def forward_flops(model_config: ml_collections.ConfigDict, image_size: Iterable[int], batch_size: int = 1) -> float:
    """XLA's FLOP count for one eval forward pass of `batch_size` images of `image_size` (H, W)."""
    model = build_model(model_config)
    variables = abstract_variables(model_config)
    images = jax.ShapeDtypeStruct((batch_size, *image_size, 3), jnp.float32)
    return float(jax.jit(model.apply).lower(variables, images).cost_analysis()["flops"])


def format_summary(config: ml_collections.ConfigDict, depth: int = 1, batch_size: int = 1) -> str:
    variables = abstract_variables(config.model)
    counts = parameter_counts(variables, depth)
    frozen = sum(leaf.size for leaf in jax.tree.leaves(variables.get("frozen", {})))
    total = sum(counts.values())
    image_size = tuple(config.dataset.image_size)
    flops = forward_flops(config.model, image_size, batch_size)
    backbone = config.model.backbone
    lines = [
        f"MaskFormer with a {backbone.name} backbone, {config.model.num_classes} classes, "
        f"{config.model.num_queries} queries, {config.model.decoder_layers} decoder layers, {config.model.dtype}",
        f"{'module':<48}{'parameters':>16}",
    ]
    lines += [f"{name:<48}{count:>16,}" for name, count in sorted(counts.items())]
    lines += [
        f"{'total':<48}{total:>16,}  ({total / 1e6:.1f}M, of which {frozen:,} frozen BatchNorm)",
        f"forward FLOPs at {batch_size}x{image_size[0]}x{image_size[1]}: {flops / 1e9:.3g} G "
        f"({flops / 2e9:.3g} G multiply-adds)",
    ]
    return "\n".join(lines)


def main(argv):
    print(format_summary(_CONFIG.value, FLAGS.depth, FLAGS.batch_size))


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    _CONFIG = cli.define_config_flag()
    flags.DEFINE_integer("depth", 1, "Module nesting depth of the per-module parameter table.")
    flags.DEFINE_integer("batch_size", 1, "Batch size of the forward pass whose FLOPs are counted.")
    flags.mark_flag_as_required("config")
    cli.run(main)
