"""ImageNet backbone conversion: random torchvision ResNet-50 and official Swin-T state dicts, converted,
give the features of independent PyTorch references; file loading and error reporting."""

import functools
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import traverse_util
from safetensors.numpy import save_file
from transformers import SwinConfig, SwinModel

from configs import ade20k_r50, ade20k_r101c, ade20k_swin_t
from maskformer_jax.models.maskformer import build_backbone
from maskformer_jax.training.checkpoint import init_weights
from maskformer_jax.weights import convert
from maskformer_jax.weights.convert import load_state_dict
from maskformer_jax.weights.imagenet import backbone_variables

R50_DEPTHS = (3, 4, 6, 3)
SWIN_T = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7)


def random_conv(generator, out_channels, in_channels, size):
    fan_in = in_channels * size * size
    return torch.randn(out_channels, in_channels, size, size, generator=generator) * (2.0 / fan_in) ** 0.5


def random_batch_norm(generator, prefix, channels):
    """BatchNorm with every statistic randomised, so a swapped mean/var or scale/bias changes the output."""
    def uniform(low, high):
        return torch.rand(channels, generator=generator) * (high - low) + low

    return {f"{prefix}.weight": uniform(0.5, 1.5), f"{prefix}.bias": uniform(-0.2, 0.2),
            f"{prefix}.running_mean": uniform(-0.2, 0.2), f"{prefix}.running_var": uniform(0.5, 2.0),
            f"{prefix}.num_batches_tracked": torch.tensor(1000)}


def torchvision_resnet50_state_dict() -> dict:
    """torchvision's resnet50 names and shapes (bottleneck width 64 * 2**stage), random values."""
    generator = torch.Generator().manual_seed(0)
    state = {"conv1.weight": random_conv(generator, 64, 3, 7), **random_batch_norm(generator, "bn1", 64)}
    in_channels = 64
    for stage, depth in enumerate(R50_DEPTHS):
        width, out_channels = 64 * 2**stage, 256 * 2**stage
        for block in range(depth):
            prefix = f"layer{stage + 1}.{block}"
            shapes = [(width, in_channels, 1), (width, width, 3), (out_channels, width, 1)]
            for i, shape in enumerate(shapes, start=1):
                state[f"{prefix}.conv{i}.weight"] = random_conv(generator, *shape)
                state.update(random_batch_norm(generator, f"{prefix}.bn{i}", shape[0]))
            if block == 0:
                state[f"{prefix}.downsample.0.weight"] = random_conv(generator, out_channels, in_channels, 1)
                state.update(random_batch_norm(generator, f"{prefix}.downsample.1", out_channels))
            in_channels = out_channels
    state["fc.weight"] = torch.randn(1000, 2048, generator=generator) * 0.01
    state["fc.bias"] = torch.zeros(1000)
    return state


def torch_resnet_features(state, images) -> dict:
    """Reference torchvision ResNet (stride on the 3x3 conv, as MaskFormer's STRIDE_IN_1X1: False) from
    torch ops; images [B, 3, H, W] → {"res2".."res5"} [B, C, H/s, W/s]."""
    def conv_bn(x, conv, bn, stride=1, padding=0):
        x = F.conv2d(x, state[f"{conv}.weight"], stride=stride, padding=padding)
        return F.batch_norm(x, state[f"{bn}.running_mean"], state[f"{bn}.running_var"], state[f"{bn}.weight"],
                            state[f"{bn}.bias"], training=False, eps=1e-5)

    x = F.max_pool2d(F.relu(conv_bn(images, "conv1", "bn1", 2, 3)), 3, 2, 1)
    features = {}
    for stage, depth in enumerate(R50_DEPTHS):
        for block in range(depth):
            prefix = f"layer{stage + 1}.{block}"
            stride = 2 if block == 0 and stage > 0 else 1
            y = F.relu(conv_bn(x, f"{prefix}.conv1", f"{prefix}.bn1"))
            y = F.relu(conv_bn(y, f"{prefix}.conv2", f"{prefix}.bn2", stride, 1))
            y = conv_bn(y, f"{prefix}.conv3", f"{prefix}.bn3")
            shortcut = conv_bn(x, f"{prefix}.downsample.0", f"{prefix}.downsample.1", stride) if block == 0 else x
            x = F.relu(y + shortcut)
        features[f"res{stage + 2}"] = x
    return features


def detectron2_names(state) -> dict:
    """The renaming of detectron2's convert-torchvision-to-d2.py: stem.*, res{l+1}, conv{i}.norm, shortcut."""
    renamed = {}
    for name, value in state.items():
        new = name if name.startswith("layer") else "stem." + name
        for layer in (1, 2, 3, 4):
            new = new.replace(f"layer{layer}.", f"res{layer + 1}.")
        for i in (1, 2, 3):
            new = new.replace(f"bn{i}.", f"conv{i}.norm.")
        new = new.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
        renamed[new] = value.numpy()
    return renamed


def official_swin_state_dict() -> dict:
    """The official Swin-T classification names and shapes (github.com/microsoft/Swin-Transformer), random
    values, with the classifier, final norm and buffers that the converter skips."""
    generator = torch.Generator().manual_seed(1)
    window = SWIN_T["window_size"]

    def dense(out_features, in_features):
        return torch.randn(out_features, in_features, generator=generator) * in_features**-0.5

    def vector(size, center=0.0, spread=0.2):
        return center + spread * (2 * torch.rand(size, generator=generator) - 1)

    def layer_norm(prefix, size):
        return {f"{prefix}.weight": vector(size, 1.0, 0.5), f"{prefix}.bias": vector(size)}

    dim = SWIN_T["embed_dim"]
    state = {"patch_embed.proj.weight": torch.randn(dim, 3, 4, 4, generator=generator) * 0.2,
             "patch_embed.proj.bias": vector(dim), **layer_norm("patch_embed.norm", dim)}
    for stage, (depth, heads) in enumerate(zip(SWIN_T["depths"], SWIN_T["num_heads"])):
        for block in range(depth):
            prefix = f"layers.{stage}.blocks.{block}"
            state.update(layer_norm(f"{prefix}.norm1", dim))
            state[f"{prefix}.attn.qkv.weight"] = dense(3 * dim, dim)
            state[f"{prefix}.attn.qkv.bias"] = vector(3 * dim)
            state[f"{prefix}.attn.relative_position_bias_table"] = torch.randn(
                (2 * window - 1) ** 2, heads, generator=generator) * 0.5
            state[f"{prefix}.attn.relative_position_index"] = torch.zeros(window**2, window**2, dtype=torch.long)
            state[f"{prefix}.attn.proj.weight"] = dense(dim, dim)
            state[f"{prefix}.attn.proj.bias"] = vector(dim)
            state.update(layer_norm(f"{prefix}.norm2", dim))
            state[f"{prefix}.mlp.fc1.weight"] = dense(4 * dim, dim)
            state[f"{prefix}.mlp.fc1.bias"] = vector(4 * dim)
            state[f"{prefix}.mlp.fc2.weight"] = dense(dim, 4 * dim)
            state[f"{prefix}.mlp.fc2.bias"] = vector(dim)
            if block % 2 == 1:  # shifted blocks keep the mask of the 224x224 training resolution
                state[f"{prefix}.attn_mask"] = torch.zeros((56 // 2**stage // window) ** 2, window**2, window**2)
        if stage < len(SWIN_T["depths"]) - 1:
            state.update(layer_norm(f"layers.{stage}.downsample.norm", 4 * dim))
            state[f"layers.{stage}.downsample.reduction.weight"] = dense(2 * dim, 4 * dim)
            dim *= 2
    state.update(layer_norm("norm", dim))
    state["head.weight"] = dense(1000, dim)
    state["head.bias"] = vector(1000)
    return state


def hugging_face_swin(state) -> SwinModel:
    """HF's SwinModel holding the official weights (names mapped by hand, q/k/v split from qkv)."""
    config = SwinConfig(image_size=64, **{key: list(value) if isinstance(value, tuple) else value
                                          for key, value in SWIN_T.items()})
    model = SwinModel(config, add_pooling_layer=False).eval()
    renames = [("patch_embed.proj.", "embeddings.patch_embeddings.projection."),
               ("patch_embed.norm.", "embeddings.norm."), ("layers.", "encoder.layers."),
               (".norm1.", ".layernorm_before."), (".norm2.", ".layernorm_after."),
               (".attn.proj.", ".attention.o_proj."),
               (".attn.relative_position_bias_table", ".attention.relative_position_bias.relative_position_bias_table")]
    hf = {}
    for name, value in state.items():
        if name.startswith("head.") or name.endswith(("relative_position_index", "attn_mask")):
            continue
        if name.startswith("norm."):
            hf["layernorm." + name[len("norm."):]] = value
            continue
        for old, new in renames:
            name = name.replace(old, new)
        if ".attn.qkv." in name:
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                hf[name.replace("attn.qkv", f"attention.{part}")] = chunk
        else:
            hf[name] = value
    model.load_state_dict(hf, strict=True)
    return model


def hugging_face_swin_features(model, images) -> list:
    """Per-stage features before downsampling, [B, C, H/s, W/s]; always_partition keeps the 7x7 windows
    (padded) at stages smaller than a window, as MaskFormer's Swin does, instead of shrinking them."""
    with torch.no_grad():
        embeddings, size = model.embeddings(images)
        out = model.encoder(embeddings, size, always_partition=True, output_hidden_states=True,
                            output_hidden_states_before_downsampling=True)
    return list(out.reshaped_hidden_states[1:])


def apply_backbone(model_config, variables, images_nchw, **kwargs):
    backbone = build_backbone(model_config.backbone, jnp.float32)
    inputs = {name: collection["backbone"] for name, collection in variables.items()}
    images = jnp.asarray(images_nchw.permute(0, 2, 3, 1).numpy())
    return jax.jit(functools.partial(backbone.apply, **kwargs))(inputs, images)


def assert_same_features(ours, reference_nchw, relative=1e-4):
    reference = reference_nchw.permute(0, 2, 3, 1).numpy()
    assert ours.shape == reference.shape
    np.testing.assert_allclose(np.asarray(ours), reference, atol=relative * np.abs(reference).max(), rtol=0)


def assert_same_variables(a, b):
    a, b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert a.keys() == b.keys()
    for path in a:
        np.testing.assert_array_equal(a[path], b[path], err_msg="/".join(path))


@pytest.fixture(scope="module")
def resnet_state():
    return torchvision_resnet50_state_dict()


@pytest.fixture(scope="module")
def resnet_variables(resnet_state):
    return backbone_variables(resnet_state, ade20k_r50.get_config().model, "torchvision")


@pytest.fixture(scope="module")
def swin_state():
    return official_swin_state_dict()


def test_torchvision_resnet50_features_equal_torch_reference(resnet_state, resnet_variables):
    assert "fc.weight" in resnet_state and "bn1.num_batches_tracked" in resnet_state  # skipped, no error
    assert set(resnet_variables) == {"params", "frozen"}
    assert set(resnet_variables["params"]) == {"backbone"}
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = torch_resnet_features(resnet_state, images)
    ours = apply_backbone(ade20k_r50.get_config().model, resnet_variables, images)
    for level in ("res2", "res3", "res4", "res5"):
        assert_same_features(ours[level], reference[level])


def test_swin_t_features_equal_hugging_face_swin(swin_state):
    for skipped in ("head.weight", "norm.weight", "layers.0.blocks.1.attn_mask",
                    "layers.0.blocks.0.attn.relative_position_index"):
        assert skipped in swin_state
    config = ade20k_swin_t.get_config().model
    variables = backbone_variables(swin_state, config, "swin")
    backbone = variables["params"]["backbone"]
    assert not any(name.startswith("norm") for name in backbone)  # the out norms are the caller's
    for stage, channels in enumerate((96, 192, 384, 768)):  # identity affine: out norm = plain LayerNorm
        backbone[f"norm{stage}"] = {"scale": np.ones(channels, np.float32), "bias": np.zeros(channels, np.float32)}
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    reference = hugging_face_swin_features(hugging_face_swin(swin_state), images)
    last_blocks = {f"stage{stage}_block{depth - 1}" for stage, depth in enumerate(SWIN_T["depths"])}
    ours, state = apply_backbone(config, variables, images, mutable=["intermediates"],
                                 capture_intermediates=lambda module, method: module.name in last_blocks)
    for stage, depth in enumerate(SWIN_T["depths"]):
        before_norm = state["intermediates"][f"stage{stage}_block{depth - 1}"]["__call__"][0]
        assert_same_features(before_norm, reference[stage])
        normalized = F.layer_norm(reference[stage].permute(0, 2, 3, 1), reference[stage].shape[1:2])
        assert_same_features(ours[f"res{stage + 2}"], normalized.permute(0, 3, 1, 2))


def test_detectron2_pkl_conversion_equals_torchvision_conversion(resnet_state, resnet_variables, tmp_path):
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as file:
        pickle.dump({"model": detectron2_names(resnet_state), "__author__": "torchvision",
                     "matching_heuristics": True}, file)
    state = load_state_dict(path)
    assert "stem.conv1.norm.running_var" in state and "stem.fc.weight" in state
    assert_same_variables(backbone_variables(state, ade20k_r50.get_config().model, "torchvision"), resnet_variables)


def test_pth_files_are_unwrapped_and_read_as_numpy(resnet_state, resnet_variables, swin_state, tmp_path):
    torch.save(resnet_state, tmp_path / "resnet50.pth")
    state = load_state_dict(tmp_path / "resnet50.pth")
    assert all(isinstance(value, np.ndarray) for value in state.values())
    assert_same_variables(backbone_variables(state, ade20k_r50.get_config().model, "torchvision"), resnet_variables)
    torch.save({"model": swin_state}, tmp_path / "swin_tiny_patch4_window7_224.pth")
    state = load_state_dict(tmp_path / "swin_tiny_patch4_window7_224.pth")
    assert state.keys() == swin_state.keys()
    np.testing.assert_array_equal(state["head.weight"], swin_state["head.weight"].numpy())


def test_swin_pkl_of_torch_tensors_and_safetensors_convert_alike(swin_state, tmp_path):
    # MaskFormer's convert-pretrained-swin-model-to-d2.py pickles the torch tensors of the official .pth.
    with open(tmp_path / "swin_tiny_patch4_window7_224.pkl", "wb") as file:
        pickle.dump({"model": swin_state, "__author__": "third_party", "matching_heuristics": True}, file)
    from_pkl = load_state_dict(tmp_path / "swin_tiny_patch4_window7_224.pkl")
    save_file({name: value.numpy() for name, value in swin_state.items()}, tmp_path / "swin.safetensors")
    from_safetensors = load_state_dict(tmp_path / "swin.safetensors")
    config = ade20k_swin_t.get_config().model
    assert_same_variables(backbone_variables(from_pkl, config, "swin"),
                          backbone_variables(from_safetensors, config, "swin"))


def test_missing_and_unexpected_tensors_are_named(resnet_state):
    config = ade20k_r50.get_config().model
    missing = {name: value for name, value in resnet_state.items() if name != "layer3.2.conv2.weight"}
    with pytest.raises(ValueError, match=r"missing from the torchvision ResNet .*\(1\): layer3.2.conv2.weight"):
        backbone_variables(missing, config, "torchvision")
    extra = {**resnet_state, "layer4.3.conv1.weight": torch.zeros(512, 2048, 1, 1)}
    with pytest.raises(ValueError, match=r"unexpected in the torchvision ResNet .*\(1\): layer4.3.conv1.weight"):
        backbone_variables(extra, config, "torchvision")


def test_caffe2_names_are_rejected():
    state = {"conv1_w": np.zeros((64, 3, 7, 7)), "res_conv1_bn_s": np.zeros(64),
             "res2_0_branch2a_w": np.zeros((64, 64, 1, 1))}
    with pytest.raises(ValueError, match="caffe2 .MSRA. names .* not supported"):
        backbone_variables(state, ade20k_r50.get_config().model, "torchvision")


def test_backbone_mismatches_are_reported(resnet_state, swin_state):
    with pytest.raises(ValueError, match="holds Swin names .* config.model.backbone is resnet"):
        backbone_variables(swin_state, ade20k_r50.get_config().model, "torchvision")
    with pytest.raises(ValueError, match="holds torchvision ResNet names .* config.model.backbone is swin"):
        backbone_variables(resnet_state, ade20k_swin_t.get_config().model, "swin")
    with pytest.raises(ValueError, match="source 'swin' is for swin configs"):
        backbone_variables(swin_state, ade20k_r50.get_config().model, "swin")
    with pytest.raises(ValueError, match="R-103.pkl"):
        backbone_variables(resnet_state, ade20k_r101c.get_config().model, "torchvision")


def test_imagenet_conversion_keeps_the_backbone_and_initialises_the_rest(resnet_state, resnet_variables, tmp_path):
    """What `python -m maskformer_jax.weights.convert --source torchvision` writes: the backbone from
    the file, every other variable freshly initialised; a checkpoint that init_from reads."""
    config = ade20k_r50.get_config().model
    config.update(decoder_layers=1, num_queries=10)  # a lighter head: only the backbone must be R50
    variables = convert.convert("torchvision", resnet_state, config, seed=0)
    assert_same_variables({key: {"backbone": variables[key]["backbone"]} for key in ("params", "frozen")},
                          resnet_variables)
    head = variables["params"]["class_embed"]["kernel"]
    assert head.shape == (256, 151) and 0 < head.std() < 1  # freshly initialised, not empty
    output = convert.save_variables(tmp_path / "out", variables, {"source": "torchvision"})
    zeros = jax.tree.map(jnp.zeros_like, variables)
    loaded, reinitialised = init_weights(output, zeros)
    assert reinitialised == []
    np.testing.assert_array_equal(loaded["params"]["class_embed"]["kernel"], head)
    np.testing.assert_array_equal(loaded["params"]["backbone"]["stem_conv1"]["conv"]["kernel"],
                                  variables["params"]["backbone"]["stem_conv1"]["conv"]["kernel"])
    with pytest.raises(FileExistsError):
        convert.save_variables(tmp_path / "out", variables, {})
