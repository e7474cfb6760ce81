"""The optimizer treats exactly the parameters the reference treats: multiplier, decay masks, skips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import ade20k_r50, ade20k_swin_t, coco_panoptic_r50
from maskformer_jax.models import abstract_variables
from maskformer_jax.training.optimizer import (build_optimizer, learning_rate_schedule, optimizer_metrics,
                                               parameter_groups, weight_decay_mask)


def flat(tree):
    return {"/".join(path): value for path, value in traverse_util.flatten_dict(tree).items()}


def is_reference_no_decay(path: str) -> bool:
    """The reference's rule, written from its module types: norm layers (GroupNorm, LayerNorm; frozen
    BatchNorm is not trained), the query embedding and Swin's relative position tables."""
    module, name = path.rsplit("/", 2)[-2], path.rsplit("/", 1)[-1]
    is_norm = module.startswith("norm") or module.endswith("_norm") or (module == "norm")
    return is_norm or name in ("query_embed", "relative_position_bias_table")


@pytest.mark.parametrize("config", [ade20k_r50, ade20k_swin_t, coco_panoptic_r50], ids=["r50", "swin_t", "coco_r50_encoder"])
def test_decay_mask_and_groups_match_the_reference_on_full_configs(config):
    params = abstract_variables(config.get_config().model)["params"]
    decay, groups = flat(weight_decay_mask(params)), flat(parameter_groups(params))
    assert decay.keys() == groups.keys() == flat(params).keys()
    for path in decay:
        assert decay[path] == (not is_reference_no_decay(path)), path
        assert groups[path] == ("backbone" if path.startswith("backbone/") else "head"), path
    # Biases of convolutions and linear layers are decayed, as in the reference.
    assert decay["class_embed/bias"] and decay["query_decoder/layer0/self_attn/query/bias"]
    assert not decay["query_decoder/query_embed"] and not decay["pixel_decoder/layer_1/norm/scale"]


def test_backbone_multiplier_and_decay_in_one_update():
    config = ade20k_r50.get_config()  # lr 1e-4, weight decay 1e-4, backbone x0.1
    config.optimizer.clip_grad_norm = 1e9
    ones = jnp.ones((4, 4))
    params = {"backbone": {"conv": {"kernel": ones}}, "class_embed": {"kernel": ones},
              "pixel_decoder": {"norm": {"scale": ones[0], "bias": ones[0]}}, "query_decoder": {"query_embed": ones}}
    grads = jax.tree.map(jnp.zeros_like, params)  # zero gradients: only weight decay moves parameters
    optimizer = build_optimizer(config)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    step = flat(updates)
    np.testing.assert_allclose(step["class_embed/kernel"], -1e-4 * 1e-4 * ones, rtol=1e-6)
    np.testing.assert_allclose(step["backbone/conv/kernel"], -0.1 * 1e-4 * 1e-4 * ones, rtol=1e-6)
    assert not np.any(step["pixel_decoder/norm/scale"]) and not np.any(step["query_decoder/query_embed"])
    # With equal gradients, the backbone's Adam step is a tenth of the head's.
    grads = jax.tree.map(lambda p: 0.5 * jnp.ones_like(p), params)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    step = flat(updates)
    np.testing.assert_allclose(step["backbone/conv/kernel"], 0.1 * step["class_embed/kernel"], rtol=1e-5)


def test_non_finite_gradients_are_skipped_and_counted():
    config = ade20k_r50.get_config()
    params = {"class_embed": {"kernel": jnp.ones((2, 2))}}
    optimizer = build_optimizer(config)
    state = optimizer.init(params)
    bad = {"class_embed": {"kernel": jnp.array([[1.0, jnp.nan], [0.0, 0.0]])}}
    updates, state = optimizer.update(bad, state, params)
    assert not np.any(updates["class_embed"]["kernel"])
    assert int(state.notfinite_count) == 1 and int(state.total_notfinite) == 1
    updates, state = optimizer.update(jax.tree.map(jnp.ones_like, params), state, params)
    assert np.all(np.asarray(updates["class_embed"]["kernel"]) < 0) and int(state.notfinite_count) == 0


def test_schedules_follow_the_reference():
    poly = ade20k_r50.get_config().optimizer
    schedule = learning_rate_schedule(poly, 160_000)
    assert float(schedule(0)) == pytest.approx(1e-4)
    assert float(schedule(80_000)) == pytest.approx(1e-4 * 0.5**0.9, rel=1e-5)
    assert float(schedule(160_000)) == 0.0
    swin = learning_rate_schedule(ade20k_swin_t.get_config().optimizer, 160_000)
    assert float(swin(0)) == pytest.approx(6e-5 * 1e-6, rel=1e-4)  # linear warmup from a factor of 1e-6
    assert float(swin(750)) == pytest.approx(6e-5 * (1e-6 + (1 - 1e-6) * 0.5) * (1 - 750 / 160_000) ** 0.9, rel=1e-5)
    coco = coco_panoptic_r50.get_config()
    step = learning_rate_schedule(coco.optimizer, coco.num_steps)
    assert float(step(369_599)) == pytest.approx(1e-4) and float(step(369_600)) == pytest.approx(1e-5)


def test_logged_learning_rate_is_the_applied_one_after_a_skipped_update():
    config = ade20k_r50.get_config()
    config.num_steps, config.optimizer.weight_decay, config.optimizer.clip_grad_norm = 4, 0.0, 1e9
    schedule = learning_rate_schedule(config.optimizer, config.num_steps)
    params = {"class_embed": {"kernel": jnp.ones((2, 2))}}
    optimizer = build_optimizer(config)
    state = optimizer.init(params)
    good = jax.tree.map(jnp.ones_like, params)
    bad = {"class_embed": {"kernel": jnp.full((2, 2), jnp.nan)}}
    logged = []
    for grads in (good, bad, good):  # steps 0, 1 (skipped), 2
        updates, state = optimizer.update(grads, state, params)
        logged.append(float(optimizer_metrics(config, state)["learning_rate"]))
    # With a constant gradient and no weight decay, Adam's step is the learning rate itself.
    applied = -float(updates["class_embed"]["kernel"][0, 0])
    np.testing.assert_allclose(logged[2], applied, rtol=1e-4)
    np.testing.assert_allclose(logged, [schedule(0), schedule(0), schedule(1)], rtol=1e-6)
    assert abs(logged[2] - float(schedule(2))) > 0.1 * logged[2]  # not the step count's learning rate
    assert int(optimizer_metrics(config, state)["nonfinite_total"]) == 1
