"""Model pieces against PyTorch references, the tiny config end to end, and bfloat16."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import DetrConfig, ResNetConfig
from transformers.models.detr.modeling_detr import DetrEncoderLayer
from transformers.models.maskformer.modeling_maskformer import MaskFormerSinePositionEmbedding

from configs import tiny
from maskformer_jax.models import build_model
from maskformer_jax.models.resnet import Bottleneck, max_pool
from maskformer_jax.models.transformer import TransformerEncoder, sine_position_encoding
from maskformer_jax.resize import resize_nearest_legacy


@pytest.mark.parametrize("height,width,features", [(3, 5, 128), (7, 4, 16)])
def test_sine_position_encoding_equals_reference(height, width, features):
    reference = MaskFormerSinePositionEmbedding(num_position_features=features, normalize=True)
    expected = reference((1, 2 * features, height, width), "cpu", torch.float32)[0].permute(1, 2, 0).numpy()
    ours = sine_position_encoding(height, width, features)
    assert ours.shape == (height, width, 2 * features)
    np.testing.assert_allclose(ours, expected, atol=1e-6)


@pytest.mark.parametrize("size_in,size_out", [((13, 20), (26, 40)), ((26, 34), (51, 67)), ((7, 5), (5, 9))])
def test_legacy_nearest_resize_equals_torch(size_in, size_out):
    x = np.random.default_rng(0).normal(size=(1, 2, *size_in)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(x), size=size_out, mode="nearest").numpy()
    ours = resize_nearest_legacy(jnp.asarray(x.transpose(0, 2, 3, 1)), *size_out)
    np.testing.assert_array_equal(np.asarray(ours).transpose(0, 3, 1, 2), expected)


def _randomise(tree, seed):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.uniform(k, x.shape, minval=0.5, maxval=1.5) for k, x in zip(keys, leaves)])


def test_stem_max_pool_and_its_gradient_after_a_relu_equal_torch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 13, 10, 3)).astype(np.float32)
    grad = rng.standard_normal((2, 7, 5, 3)).astype(np.float32)
    ours, vjp = jax.vjp(lambda x: max_pool(jax.nn.relu(x), 3, 2, 1), x)
    x_torch = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_()
    theirs = F.max_pool2d(F.relu(x_torch), 3, 2, 1)
    theirs.backward(torch.tensor(grad).permute(0, 3, 1, 2))
    np.testing.assert_array_equal(ours, theirs.detach().permute(0, 2, 3, 1).numpy())
    # Overlapping windows add their gradients, possibly in another order than torch.
    np.testing.assert_allclose(vjp(grad)[0], x_torch.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-6, atol=1e-6)


def test_dilated_strided_bottleneck_equals_torch_convolutions():
    """R101c's res5 blocks: stride and dilation both sit on the 3x3 conv, with padding = dilation."""
    block = Bottleneck(features=64, stride=2, dilation=2)
    x = jax.random.normal(jax.random.key(0), (2, 12, 10, 32))
    variables = block.init(jax.random.key(1), x)
    variables = {"params": variables["params"], "frozen": _randomise(variables["frozen"], 2)}
    ours = block.apply(variables, x)

    p, f = variables["params"], variables["frozen"]

    def conv_norm(name, y, stride=1, dilation=1):
        kernel = torch.from_numpy(np.asarray(p[name]["conv"]["kernel"]).transpose(3, 2, 0, 1).copy())
        pad = dilation * (kernel.shape[-1] - 1) // 2
        y = F.conv2d(y, kernel, stride=stride, padding=pad, dilation=dilation)
        scale, bias = (torch.tensor(np.asarray(f[name]["norm"][k])) for k in ("scale", "bias"))
        return y * scale[:, None, None] + bias[:, None, None]

    t = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
    y = F.relu(conv_norm("conv1", t))
    y = F.relu(conv_norm("conv2", y, stride=2, dilation=2))
    expected = F.relu(conv_norm("conv3", y) + conv_norm("shortcut", t, stride=2))
    assert ours.shape == (2, 6, 5, 64)
    np.testing.assert_allclose(np.asarray(ours).transpose(0, 3, 1, 2), expected.numpy(), atol=1e-4)


def test_transformer_encoder_equals_detr_encoder_layers():
    """The encoder of the COCO R50/R101 pixel decoder: post-norm DETR layers, position on q and k only."""
    heads, width, ffn, layers = 4, 64, 128, 2
    torch.manual_seed(0)
    # An explicit backbone config: newer transformers look a named backbone up on the hub.
    config = DetrConfig(d_model=width, encoder_attention_heads=heads, encoder_ffn_dim=ffn, use_timm_backbone=False,
                        backbone=None, backbone_config=ResNetConfig())
    reference = [DetrEncoderLayer(config).eval() for _ in range(layers)]
    with torch.no_grad():
        for layer in reference:
            for norm in (layer.self_attn_layer_norm, layer.final_layer_norm):
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.2, 0.2)

    def to_flax(layer):
        s = {k: v.numpy() for k, v in layer.state_dict().items()}
        attention = {
            ours: {"kernel": s[f"self_attn.{theirs}.weight"].T.reshape(width, heads, -1),
                   "bias": s[f"self_attn.{theirs}.bias"].reshape(heads, -1)}
            for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"))
        }
        attention["out"] = {"kernel": s["self_attn.o_proj.weight"].T.reshape(heads, -1, width),
                            "bias": s["self_attn.o_proj.bias"]}
        return {
            "self_attn": attention,
            "norm1": {"scale": s["self_attn_layer_norm.weight"], "bias": s["self_attn_layer_norm.bias"]},
            "ffn": {"linear1": {"kernel": s["mlp.fc1.weight"].T, "bias": s["mlp.fc1.bias"]},
                    "linear2": {"kernel": s["mlp.fc2.weight"].T, "bias": s["mlp.fc2.bias"]}},
            "norm2": {"scale": s["final_layer_norm.weight"], "bias": s["final_layer_norm.bias"]},
        }

    x = torch.randn(2, 5, 6, width)
    pos = torch.from_numpy(sine_position_encoding(5, 6, width // 2)).reshape(1, 30, width)
    with torch.no_grad():
        expected = x.reshape(2, 30, width)
        for layer in reference:
            expected = layer(expected, attention_mask=None, spatial_position_embeddings=pos)
    encoder = TransformerEncoder(num_layers=layers, num_heads=heads, dim_feedforward=ffn)
    params = {f"layer{i}": to_flax(layer) for i, layer in enumerate(reference)}
    ours = encoder.apply({"params": params}, jnp.asarray(x.numpy()))
    np.testing.assert_allclose(np.asarray(ours).reshape(2, 30, width), expected.numpy(), atol=1e-4)


@pytest.fixture(scope="module")
def tiny_model():
    config = tiny.get_config().model
    model = build_model(config)
    images = jax.random.normal(jax.random.key(0), (2, 64, 96, 3))
    variables = jax.jit(model.init)(jax.random.key(1), images)
    return config, model, variables, images


def test_tiny_forward_shapes_and_determinism(tiny_model):
    config, model, variables, images = tiny_model
    apply = jax.jit(model.apply, static_argnames="train")
    out = apply(variables, images)
    layers, queries, classes = config.decoder_layers, config.num_queries, config.num_classes
    assert out["class_logits"].shape == (layers, 2, queries, classes + 1)
    assert out["mask_logits"].shape == (layers, 2, queries, 16, 24)
    assert out["class_logits"].dtype == out["mask_logits"].dtype == jnp.float32
    assert np.isfinite(out["mask_logits"]).all() and float(jnp.std(out["mask_logits"])) > 0.1
    np.testing.assert_array_equal(apply(variables, images)["mask_logits"], out["mask_logits"])
    # Decoder layers are supervised separately, so their predictions must differ.
    assert float(jnp.abs(out["class_logits"][0] - out["class_logits"][1]).max()) > 1e-3

    train_a = apply(variables, images, train=True, rngs={"dropout": jax.random.key(2)})
    train_b = apply(variables, images, train=True, rngs={"dropout": jax.random.key(3)})
    assert float(jnp.abs(train_a["mask_logits"] - out["mask_logits"]).max()) > 1e-3
    assert float(jnp.abs(train_a["mask_logits"] - train_b["mask_logits"]).max()) > 1e-3


def test_frozen_batch_norm_is_outside_params():
    config = tiny.get_config().model
    config.backbone = {"name": "resnet", "depths": (1, 1, 1, 1), "deep_stem": True, "res5_multi_grid": (1, 2, 4)}
    abstract = jax.eval_shape(build_model(config).init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    params, frozen = abstract["params"]["backbone"], abstract["frozen"]["backbone"]
    assert not any("norm" in "/".join(map(str, path)) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0])
    # The deep stem: 3x3 convs 3 → 64 → 64 → 128, each with its frozen BatchNorm.
    assert [params[f"stem_conv{i}"]["conv"]["kernel"].shape for i in (1, 2, 3)] == [
        (3, 3, 3, 64), (3, 3, 64, 64), (3, 3, 64, 128)]
    assert frozen["stem_conv3"]["norm"]["scale"].shape == (128,)
    assert params["res2_0"]["conv1"]["conv"]["kernel"].shape == (1, 1, 128, 64)


def test_bfloat16_forward_matches_float32(tiny_model):
    """bfloat16 keeps 8 mantissa bits (relative rounding up to 2^-8 ≈ 0.4% per op). Through the ~30
    layers of the tiny model the errors compound to ~2% RMS of the logits' spread (measured); the bound
    is 5%, which a wrong cast (a norm or softmax computed in bfloat16 without float32 statistics,
    parameters stored in bfloat16) or a broken op exceeds. Most per-pixel mask decisions must agree."""
    config, model, variables, images = tiny_model
    config_bf16 = config.copy_and_resolve_references()
    config_bf16.dtype = "bfloat16"
    model_bf16 = build_model(config_bf16)
    abstract = jax.eval_shape(model_bf16.init, jax.random.key(1), images)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(abstract))
    full = jax.jit(model.apply)(variables, images)
    half = jax.jit(model_bf16.apply)(variables, images)
    assert half["pixel_embeddings"].dtype == jnp.bfloat16
    for key in ("class_logits", "mask_logits"):
        assert half[key].dtype == jnp.float32
        relative_rms = float(jnp.sqrt(jnp.mean((half[key] - full[key]) ** 2)) / jnp.std(full[key]))
        assert 0 < relative_rms < 0.05, (key, relative_rms)
    agree = jnp.mean(jnp.argmax(half["mask_logits"][-1], 1) == jnp.argmax(full["mask_logits"][-1], 1))
    assert float(agree) > 0.9


def test_initialisation_follows_reference(tiny_model):
    """Heads: PyTorch's default Linear, U(±1/sqrt(fan_in)); attention q/k/v: xavier on the packed
    [3C, C] matrix; FPN convs: c2_xavier_fill, U(±sqrt(3/fan_in)); queries: N(0, 1)."""
    config, _, variables, _ = tiny_model
    params = variables["params"]
    hidden, conv_dim = config.hidden_dim, config.conv_dim

    def bound(array):
        return float(jnp.abs(array).max())

    head_bound = hidden**-0.5
    assert 0.95 * head_bound < bound(params["class_embed"]["kernel"]) <= head_bound
    assert 0.9 * head_bound < bound(params["mask_embed"]["layer1"]["bias"]) <= head_bound
    qkv_bound = (6 / (hidden + 3 * hidden)) ** 0.5
    assert 0.95 * qkv_bound < bound(params["query_decoder"]["layer0"]["cross_attn"]["key"]["kernel"]) <= qkv_bound
    conv_bound = (3 / (9 * conv_dim)) ** 0.5
    assert 0.95 * conv_bound < bound(params["pixel_decoder"]["layer_1"]["conv"]["kernel"]) <= conv_bound
    assert 0.8 < float(jnp.std(params["query_decoder"]["query_embed"])) < 1.2


@pytest.mark.parametrize("backbone", ["swin", "resnet"])
def test_remat_recomputes_blocks_with_the_same_gradients(backbone):
    """Remat wraps every backbone block, pixel decoder conv and transformer layer in jax.checkpoint; the
    gradients do not change. (The memory it saves shows on accelerators: XLA's CPU scheduler does not
    use it.)"""
    config = tiny.get_config().model
    config.encoder_layers = 1
    if backbone == "resnet":
        config.backbone = {"name": "resnet", "depths": (1, 1, 1, 1), "deep_stem": False, "res5_multi_grid": (1, 1, 1)}
    images = jax.random.normal(jax.random.key(0), (1, 64, 64, 3))
    variables = jax.jit(build_model(config).init)(jax.random.key(1), images)

    def gradient(remat: bool):
        config.remat_backbone = config.remat_decoder = remat
        model = build_model(config)

        def loss(params):
            out = model.apply({**variables, "params": params}, images, train=True, rngs={"dropout": jax.random.key(2)})
            return jnp.mean(out["mask_logits"] ** 2) + jnp.mean(out["class_logits"] ** 2)

        jaxpr = str(jax.make_jaxpr(jax.grad(loss))(variables["params"]))
        checkpoints = len(re.findall(r"\b(?:remat2|checkpoint)\[", jaxpr))  # the primitive's old and new names
        return jax.jit(jax.grad(loss))(variables["params"]), checkpoints

    (plain, plain_checkpoints), (remat, remat_checkpoints) = gradient(False), gradient(True)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    blocks = 4 if backbone == "resnet" else sum(config.backbone.depths)
    layers = blocks + 7 + config.encoder_layers + config.decoder_layers  # + layer_4, 3 adapters, 3 outputs
    assert (plain_checkpoints, remat_checkpoints) == (0, layers)


@pytest.mark.parametrize("precision", ["highest", "default"])
def test_precision_reaches_every_matmul_of_the_train_step(precision):
    """config.model.precision sets every dot_general and convolution of the lowered train step:
    model, loss, matching costs and gradients (none left to the tests' global "highest")."""
    from maskformer_jax.training.optimizer import build_optimizer
    from maskformer_jax.training.state import create_train_state
    from maskformer_jax.training.step import make_train_step

    config = tiny.get_config()
    config.model.precision = precision
    config.loss.num_points = 0
    model, optimizer = build_model(config.model), build_optimizer(config)
    state = jax.eval_shape(lambda: create_train_state(config, model, optimizer, jax.random.key(0)))
    batch = {"image": jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.uint8),
             "valid": jax.ShapeDtypeStruct((2, 64, 64), bool),
             "segments": jax.ShapeDtypeStruct((2, 64, 64), jnp.int32),
             "labels": jax.ShapeDtypeStruct((2, 10), jnp.int32)}
    text = jax.jit(make_train_step(config, model, optimizer)).lower(state, batch).as_text()
    ops = [line for line in text.splitlines() if "stablehlo.dot_general" in line or "stablehlo.convolution" in line]
    assert len(ops) > 100
    highest = [line for line in ops if "HIGHEST" in line]
    assert len(highest) == (len(ops) if precision == "highest" else 0), ops[:3]
