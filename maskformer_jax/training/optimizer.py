"""AdamW with the reference's schedules, backbone multiplier, decay masks and clipping. docs/reference.md §6.

- Schedules: "poly" lr = base * warmup(t) * (1 - t / T)^power; "step" lr = base * warmup(t) *
  factor^(number of decay steps passed); warmup(t) = f + (1 - f) * t / W for t < W, else 1.
- The backbone's learning rate is multiplied by `backbone_multiplier` (it scales the weight decay
  term too, as in PyTorch's AdamW with a per-group learning rate).
- No weight decay on normalisation layers, the query embeddings and Swin's relative position tables;
  convolution and linear kernels and biases are decayed (the reference does not exclude biases).
- Gradients are clipped to a global norm over the whole model, then non-finite updates are skipped
  (`optax.apply_if_finite`, which counts them).
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from maskformer_jax.errors import ConfigError

NO_DECAY_PARAMETERS = ("query_embed", "relative_position_bias_table")


def learning_rate_schedule(config: ml_collections.ConfigDict, num_steps: int):
    """step → learning rate, for `config.optimizer`."""
    base, warmup_steps, warmup_factor = config.learning_rate, config.warmup_steps, config.warmup_factor

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warmup = jnp.where(step < warmup_steps, warmup_factor + (1 - warmup_factor) * step / max(warmup_steps, 1), 1.0)
        if config.schedule == "poly":
            decay = jnp.maximum(1 - step / num_steps, 0.0) ** config.poly_power
        elif config.schedule == "step":
            passed = sum((step >= boundary).astype(jnp.float32) for boundary in config.decay_steps)
            decay = config.decay_factor**passed
        else:
            raise ConfigError(f"config.optimizer.schedule must be 'poly' or 'step', got {config.schedule!r}")
        return base * warmup * decay

    return schedule


def _is_norm(module: dict) -> bool:
    """Flax LayerNorm and GroupNorm hold a "scale"; convolutions and dense layers hold a "kernel"."""
    return "scale" in module and "kernel" not in module


def weight_decay_mask(params):
    """True for the parameters that get weight decay."""

    def mark(tree, name=""):
        if isinstance(tree, dict):
            if _is_norm(tree):
                return jax.tree.map(lambda _: False, tree)
            return {key: mark(value, key) for key, value in tree.items()}
        return name not in NO_DECAY_PARAMETERS

    return mark(dict(params))


def parameter_groups(params):
    """"backbone" for the backbone's parameters, "head" for the rest."""
    return {key: jax.tree.map(lambda _: "backbone" if key == "backbone" else "head", value) for key, value in params.items()}


def build_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The full optimizer for `config` (reads config.optimizer and config.num_steps)."""
    optimizer = config.optimizer
    schedule = learning_rate_schedule(optimizer, config.num_steps)

    def adamw(multiplier):
        return optax.adamw(
            lambda step: multiplier * schedule(step),
            b1=0.9, b2=0.999, eps=1e-8, weight_decay=optimizer.weight_decay, mask=weight_decay_mask,
        )

    transform = optax.chain(
        optax.clip_by_global_norm(optimizer.clip_grad_norm),
        optax.multi_transform(
            {"backbone": adamw(optimizer.backbone_multiplier), "head": adamw(1.0)}, parameter_groups
        ),
    )
    return optax.apply_if_finite(transform, max_consecutive_errors=optimizer.max_consecutive_nonfinite)


def applied_updates(opt_state) -> jax.Array:
    """int32 scalar: updates applied so far. AdamW's own counter, which `apply_if_finite` leaves as it
    was on a skipped update (unlike the train state's step, which counts every step)."""

    def head_schedule(path, _):
        return path[-1].tuple_name == "ScaleByScheduleState" and jax.tree_util.DictKey("head") in path

    return optax.tree_utils.tree_get(opt_state, "count", filtering=head_schedule)


def optimizer_metrics(config: ml_collections.ConfigDict, opt_state) -> dict:
    """After an update: "learning_rate" of the last applied update (the head's; the backbone's is
    `backbone_multiplier` times it), "nonfinite_in_a_row" and "nonfinite_total" skipped updates."""
    schedule = learning_rate_schedule(config.optimizer, config.num_steps)
    return {
        "learning_rate": schedule(jnp.maximum(applied_updates(opt_state) - 1, 0)),
        "nonfinite_in_a_row": opt_state.notfinite_count,
        "nonfinite_total": opt_state.total_notfinite,
    }
