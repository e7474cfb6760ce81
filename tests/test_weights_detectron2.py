"""The detectron2 (official MaskFormer model zoo) converter: parity with the Hugging Face model through a
model-zoo style .pkl, parity of the transformer-encoder pixel decoder with a PyTorch reference, and
error reporting."""

import json
import math
import os
import pathlib
import pickle
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from configs import ade20k_r50, ade20k_r101c, ade20k_swin_t, coco_panoptic_r50
from maskformer_jax.models import build_model
from maskformer_jax.models.pixel_decoder import PixelDecoder
from maskformer_jax.training.checkpoint import load_weights
from maskformer_jax.weights import detectron2
from maskformer_jax.weights.rules import convert_state_dict, variable_shapes
from tests.test_weights_hf import hf_maskformer, reference_outputs

HF_BACKBONE = r"model\.pixel_level_module\.encoder\."
HF_SWIN = HF_BACKBONE + r"model\.encoder\.layers\.(\d+)\."
HF_BLOCK = HF_SWIN + r"blocks\.(\d+)\."
HF_PIXEL = r"model\.pixel_level_module\.decoder\."
HF_DECODER = r"model\.transformer_module\.decoder\.layers\.(\d+)\."
D2_TRANSFORMER = "sem_seg_head.predictor.transformer.decoder."
D2_DECODER = D2_TRANSFORMER + "layers.{}."
D2_ATTENTION = {"self_attn": "self_attn", "encoder_attn": "multihead_attn"}
PACKED = {"q": 0, "k": 1, "v": 2, "query": 0, "key": 1, "value": 2}


def _block(match):
    return f"backbone.layers.{match[1]}.blocks.{match[2]}."


def _fpn(match, pixel_decoder):
    """HF orders the FPN from res4 down (layers.0 = res4); detectron2 numbers by level (res4 = 3)."""
    layer, kind, part = match.groups()
    name = ("adapter_" if kind == "proj" else "layer_") + str(3 - int(layer))
    return f"{pixel_decoder}{name}.{'norm.' if part == '1' else ''}"


# HF name prefix (regex) → detectron2 prefix, from HF's convert_maskformer_{resnet,swin}_to_pytorch.py
# and convert_maskformer_original_pytorch_checkpoint_to_pytorch.py, read in reverse. A replacement of
# the form "name#i" marks slot i of a packed q/k/v tensor.
def _renames(pixel_decoder):
    return [
        (HF_BACKBONE + r"embedder\.embedder\.convolution\.", lambda m: "backbone.stem.conv1."),
        (HF_BACKBONE + r"embedder\.embedder\.normalization\.", lambda m: "backbone.stem.conv1.norm."),
        (
            HF_BACKBONE
            + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(?:layer\.(\d)|(shortcut))\.(convolution|normalization)\.",
            lambda m: f"backbone.res{int(m[1]) + 2}.{m[2]}."
            + (m[4] or f"conv{int(m[3]) + 1}")
            + (".norm." if m[5] == "normalization" else "."),
        ),
        (HF_BACKBONE + r"model\.embeddings\.patch_embeddings\.projection\.", lambda m: "backbone.patch_embed.proj."),
        (HF_BACKBONE + r"model\.embeddings\.norm\.", lambda m: "backbone.patch_embed.norm."),
        (HF_BLOCK + r"layernorm_before\.", lambda m: _block(m) + "norm1."),
        (HF_BLOCK + r"layernorm_after\.", lambda m: _block(m) + "norm2."),
        (HF_BLOCK + r"attention\.self\.(relative_position_\w+)", lambda m: _block(m) + f"attn.{m[3]}"),
        (
            HF_BLOCK + r"attention\.self\.(query|key|value)\.(weight|bias)",
            lambda m: _block(m) + f"attn.qkv.{m[4]}#{PACKED[m[3]]}",
        ),
        (HF_BLOCK + r"attention\.output\.dense\.", lambda m: _block(m) + "attn.proj."),
        (HF_BLOCK + r"intermediate\.dense\.", lambda m: _block(m) + "mlp.fc1."),
        (HF_BLOCK + r"output\.dense\.", lambda m: _block(m) + "mlp.fc2."),
        (HF_SWIN + r"downsample\.", lambda m: f"backbone.layers.{m[1]}.downsample."),
        (HF_BACKBONE + r"hidden_states_norms\.(\d+)\.", lambda m: f"backbone.norm{m[1]}."),
        (HF_BACKBONE + r"model\.layernorm\.", lambda m: None),  # D2SwinTransformer has no final norm
        (HF_PIXEL + r"fpn\.stem\.(\d)\.", lambda m: f"{pixel_decoder}layer_4.{'norm.' * int(m[1])}"),
        (HF_PIXEL + r"fpn\.layers\.(\d)\.(proj|block)\.(\d)\.", lambda m: _fpn(m, pixel_decoder)),
        (HF_PIXEL + r"mask_projection\.", lambda m: f"{pixel_decoder}mask_features."),
        (r"model\.transformer_module\.queries_embedder\.", lambda m: "sem_seg_head.predictor.query_embed."),
        (r"model\.transformer_module\.input_projection\.", lambda m: "sem_seg_head.predictor.input_proj."),
        (
            HF_DECODER + r"(self_attn|encoder_attn)\.([qkv])_proj\.(weight|bias)",
            lambda m: D2_DECODER.format(m[1]) + D2_ATTENTION[m[2]] + f".in_proj_{m[4]}#{PACKED[m[3]]}",
        ),
        (
            HF_DECODER + r"(self_attn|encoder_attn)\.o_proj\.",
            lambda m: D2_DECODER.format(m[1]) + D2_ATTENTION[m[2]] + ".out_proj.",
        ),
        (HF_DECODER + r"self_attn_layer_norm\.", lambda m: D2_DECODER.format(m[1]) + "norm1."),
        (HF_DECODER + r"encoder_attn_layer_norm\.", lambda m: D2_DECODER.format(m[1]) + "norm2."),
        (HF_DECODER + r"final_layer_norm\.", lambda m: D2_DECODER.format(m[1]) + "norm3."),
        (HF_DECODER + r"mlp\.fc1\.", lambda m: D2_DECODER.format(m[1]) + "linear1."),
        (HF_DECODER + r"mlp\.fc2\.", lambda m: D2_DECODER.format(m[1]) + "linear2."),
        (r"model\.transformer_module\.decoder\.layernorm\.", lambda m: D2_TRANSFORMER + "norm."),
        (r"class_predictor\.", lambda m: "sem_seg_head.predictor.class_embed."),
        (r"mask_embedder\.(\d)\.0\.", lambda m: f"sem_seg_head.predictor.mask_embed.layers.{m[1]}."),
        (r"criterion\.empty_weight", lambda m: "criterion.empty_weight"),
    ]


def detectron2_state_dict(hf_model, legacy_pixel_decoder: bool = False) -> dict[str, np.ndarray]:
    """The detectron2-named arrays of the official MaskFormer that `hf_model` was converted from.

    legacy_pixel_decoder: pixel decoder names directly under `sem_seg_head.`, as in the ResNet
    model-zoo files (HF's ResNet conversion script reads them so).
    """
    pixel_decoder = "sem_seg_head." if legacy_pixel_decoder else "sem_seg_head.pixel_decoder."
    renames = [(re.compile(pattern), rename) for pattern, rename in _renames(pixel_decoder)]
    state, packed = {}, {}
    for name, tensor in hf_model.state_dict().items():
        matches = [(pattern.match(name), rename) for pattern, rename in renames]
        matches = [(match, rename) for match, rename in matches if match]
        assert len(matches) == 1, f"{name}: {len(matches)} renames"
        match, rename = matches[0]
        new = rename(match)
        if new is None:
            continue
        new += name[match.end():]
        array = tensor.detach().numpy().copy()
        if "#" in new:
            new, slot = new.split("#")
            packed.setdefault(new, {})[int(slot)] = array
        else:
            state[new] = array
    for name, parts in packed.items():
        state[name] = np.concatenate([parts[i] for i in range(3)])
    state["pixel_mean"] = np.array([123.675, 116.280, 103.530], np.float32).reshape(3, 1, 1)
    state["pixel_std"] = np.array([58.395, 57.120, 57.375], np.float32).reshape(3, 1, 1)
    return state


def write_model_zoo_pickle(path, state):
    """As the model zoo ships them: a pickled dict with the arrays under "model" and metadata beside."""
    with open(path, "wb") as file:
        pickle.dump({"model": state, "__author__": "test", "matching_heuristics": True}, file)


OUR_CONFIGS = {"r50": ade20k_r50.get_config, "swin_t": ade20k_swin_t.get_config}


@pytest.fixture(scope="module", params=["r50", "swin_t"])
def checkpoint(request, tmp_path_factory):
    """(backbone, HF model, our model config, the detectron2 state dict as read back from a .pkl)."""
    model = hf_maskformer(request.param)
    # The ResNet model-zoo files keep the pre-version-2 pixel decoder names; Swin ones the current.
    state = detectron2_state_dict(model, legacy_pixel_decoder=request.param == "r50")
    path = tmp_path_factory.mktemp("model_zoo") / f"model_final_{request.param}.pkl"
    write_model_zoo_pickle(path, state)
    return request.param, model, OUR_CONFIGS[request.param]().model, detectron2.read_pickle(path), path


ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG_FILES = {"r50": "configs/ade20k_r50.py", "swin_t": "configs/ade20k_swin_t.py"}


def test_model_zoo_pickle_converted_by_the_command_gives_the_hf_outputs(checkpoint, tmp_path):
    name, model, config, state, path = checkpoint
    assert "pixel_mean" in state and "__author__" not in state
    command = [sys.executable, "-m", "maskformer_jax.weights.convert", "--source", "detectron2", "--input", str(path),
               "--config", CONFIG_FILES[name], "--output", str(tmp_path / "converted")]
    # Converting is host work: on CPU, so the subprocess does not compete for the accelerator.
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "converted/conversion.json").read_text())["source"] == "detectron2"
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])),
                            detectron2.variables_from_detectron2(state, config))
    variables = load_weights(tmp_path / "converted", abstract)  # what eval.py --checkpoint and init_from read
    images = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    class_ref, mask_ref, pixel_ref = reference_outputs(model, images)
    ours = jax.jit(build_model(config).apply)(variables, jnp.asarray(images.permute(0, 2, 3, 1).numpy()))
    np.testing.assert_allclose(ours["pixel_embeddings"], pixel_ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours["class_logits"], class_ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours["mask_logits"], mask_ref, atol=1e-4, rtol=0)
    assert np.abs(mask_ref).max() > 5 and np.abs(class_ref[0] - class_ref[-1]).max() > 0.1


@pytest.mark.parametrize("get_config", [ade20k_r50.get_config, ade20k_r101c.get_config, ade20k_swin_t.get_config,
                                        coco_panoptic_r50.get_config])
def test_rules_cover_every_variable_of_each_architecture(get_config):
    """R101c's deep stem (stem.conv1..3, DeepLabStem) and the 6-layer encoder included."""
    config = get_config().model
    shapes = variable_shapes(config)
    targets = {rule.path for rule in detectron2.conversion_rules(config)}
    assert set(shapes) <= targets
    assert targets - set(shapes) <= {("params", "input_proj", "kernel"), ("params", "input_proj", "bias")}
    sources = {name for rule in detectron2.conversion_rules(config) for name in rule.sources}
    if config.backbone.name == "resnet" and config.backbone.deep_stem:
        assert {f"backbone.stem.conv{i}.norm.running_var" for i in (1, 2, 3)} <= sources


# ---- The transformer-encoder pixel decoder (COCO panoptic R50/R101) against a PyTorch reference. ----


class ConvNorm(nn.Conv2d):
    """detectron2's Conv2d with a norm: parameters `weight` and `norm.{weight,bias}`."""

    def __init__(self, in_channels, out_channels, kernel_size, relu):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.GroupNorm(32, out_channels)
        self.relu = relu

    def forward(self, x):
        x = self.norm(super().forward(x))
        return F.relu(x) if self.relu else x


class EncoderLayer(nn.Module):
    """DETR's post-norm encoder layer (MaskFormer transformer.py, forward_post), eval mode."""

    def __init__(self, dim, heads, ffn):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads)
        self.linear1, self.linear2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, src, pos):  # [HW, B, C]
        q = k = src + pos
        src = self.norm1(src + self.self_attn(q, k, value=src)[0])
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


def sine_position(x, num_features, temperature=10000.0):
    """DETR's PositionEmbeddingSine(normalize=True) of an all-valid [B, C, H, W] map → [B, 2F, H, W]."""
    b, _, h, w = x.shape
    y_embed = torch.arange(1, h + 1, dtype=torch.float32)[:, None].expand(h, w)
    x_embed = torch.arange(1, w + 1, dtype=torch.float32)[None, :].expand(h, w)
    y_embed = y_embed / (h + 1e-6) * 2 * math.pi
    x_embed = x_embed / (w + 1e-6) * 2 * math.pi
    dim_t = torch.arange(num_features, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_features)

    def encode(embed):
        v = embed[:, :, None] / dim_t
        return torch.stack((v[:, :, 0::2].sin(), v[:, :, 1::2].cos()), dim=3).flatten(2)

    return torch.cat((encode(y_embed), encode(x_embed)), dim=2).permute(2, 0, 1)[None].expand(b, -1, -1, -1)


class Transformer(nn.Module):
    def __init__(self, dim, heads, ffn, layers):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(EncoderLayer(dim, heads, ffn) for _ in range(layers))


class TransformerEncoderPixelDecoder(nn.Module):
    """The reference's forward_features: res5 → input_proj → encoder → layer_4, then for res4..res2
    adapter + nearest-upsampled coarser map → layer, and mask_features on the last."""

    def __init__(self, channels, conv_dim, mask_dim, heads, ffn, layers):
        super().__init__()
        self.input_proj = nn.Conv2d(channels[-1], conv_dim, 1)
        self.transformer = Transformer(conv_dim, heads, ffn, layers)
        for level in (1, 2, 3):
            setattr(self, f"adapter_{level}", ConvNorm(channels[level - 1], conv_dim, 1, relu=False))
            setattr(self, f"layer_{level}", ConvNorm(conv_dim, conv_dim, 3, relu=True))
        self.layer_4 = ConvNorm(conv_dim, conv_dim, 3, relu=True)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 3, padding=1)

    def forward(self, features):
        x = self.input_proj(features["res5"])
        b, c, h, w = x.shape
        pos = sine_position(x, c // 2).flatten(2).permute(2, 0, 1)
        tokens = x.flatten(2).permute(2, 0, 1)
        for layer in self.transformer.encoder.layers:
            tokens = layer(tokens, pos)
        encoded = tokens.permute(1, 2, 0).reshape(b, c, h, w)
        y = self.layer_4(encoded)
        for level in (3, 2, 1):
            lateral = getattr(self, f"adapter_{level}")(features[f"res{level + 1}"])
            y = lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest")
            y = getattr(self, f"layer_{level}")(y)
        return self.mask_features(y), encoded


def test_transformer_encoder_pixel_decoder_equals_torch_reference():
    config = coco_panoptic_r50.get_config().model
    config.conv_dim = config.mask_dim = 64
    config.dim_feedforward = 128
    channels = (256, 512, 1024, 2048)  # R50's res2..res5
    torch.manual_seed(0)
    reference = TransformerEncoderPixelDecoder(channels, 64, 64, config.num_heads, 128, config.encoder_layers).eval()
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
            if isinstance(module, nn.MultiheadAttention):
                module.in_proj_bias.uniform_(-0.2, 0.2)
                module.out_proj.bias.uniform_(-0.2, 0.2)
    state = {f"sem_seg_head.pixel_decoder.{name}": value.numpy() for name, value in reference.state_dict().items()}
    variables = convert_state_dict(state, detectron2.conversion_rules(config), config, "detectron2 checkpoint",
                                   only=lambda path: path[1] == "pixel_decoder")
    # Uneven sizes: nearest upsampling from 3x5 to 6x9 follows PyTorch's legacy rule.
    sizes = {"res2": (24, 34), "res3": (12, 17), "res4": (6, 9), "res5": (3, 5)}
    generator = torch.Generator().manual_seed(1)
    features = {name: torch.randn(2, c, *sizes[name], generator=generator) for name, c in zip(sizes, channels)}
    with torch.no_grad():
        pixel_ref, encoded_ref = reference(features)
    decoder = PixelDecoder(conv_dim=64, mask_dim=64, encoder_layers=config.encoder_layers,
                           num_heads=config.num_heads, dim_feedforward=128)
    pixel, encoded = decoder.apply(
        {"params": variables["params"]["pixel_decoder"]},
        {name: jnp.asarray(x.permute(0, 2, 3, 1).numpy()) for name, x in features.items()},
    )
    np.testing.assert_allclose(encoded, encoded_ref.permute(0, 2, 3, 1).numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(pixel, pixel_ref.permute(0, 2, 3, 1).numpy(), atol=1e-4, rtol=0)
    assert np.abs(pixel_ref.numpy()).max() > 1


# ---- Error reporting. ----


def test_class_count_mismatch_names_the_key(checkpoint):
    _, _, config, state, _ = checkpoint
    state = dict(state)
    state["sem_seg_head.predictor.class_embed.weight"] = np.zeros((134, 256), np.float32)
    state["sem_seg_head.predictor.class_embed.bias"] = np.zeros(134, np.float32)
    with pytest.raises(ValueError, match=r"class_embed\.weight has 133 classes .*num_classes is 150"):
        detectron2.variables_from_detectron2(state, config)


def test_missing_and_extra_keys_are_named(checkpoint):
    name, _, config, state, _ = checkpoint
    state = dict(state)
    missing = "backbone.res3.1.conv2.weight" if name == "r50" else "backbone.layers.2.blocks.3.attn.qkv.bias"
    del state[missing]
    state["sem_seg_head.predictor.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as error:
        detectron2.variables_from_detectron2(state, config)
    message = str(error.value)
    assert f"missing from the detectron2 checkpoint (1): {missing}" in message
    assert "unexpected in the detectron2 checkpoint (1): sem_seg_head.predictor.extra.weight" in message


def test_misshaped_attention_is_named(checkpoint):
    _, _, config, state, _ = checkpoint
    state = dict(state)
    key = "sem_seg_head.predictor.transformer.decoder.layers.2.multihead_attn.in_proj_weight"
    state[key] = np.zeros((3 * 128, 256), np.float32)
    with pytest.raises(ValueError, match=rf"{re.escape(key)} \(384, 256\) → params/query_decoder/layer2/cross_attn"):
        detectron2.variables_from_detectron2(state, config)


def test_read_pickle_names_the_file_when_it_is_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.pkl"
    text.write_text("not a pickle")
    with pytest.raises(ValueError, match=re.escape(str(text))):
        detectron2.read_pickle(text)
    listing = tmp_path / "list.pkl"
    listing.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match=re.escape(str(listing)) + ".*list"):
        detectron2.read_pickle(listing)


def test_read_pickle_takes_a_bare_dict_and_keeps_only_arrays(tmp_path):
    path = tmp_path / "bare.pkl"
    path.write_bytes(pickle.dumps({"a.weight": np.ones((2, 2), np.float32), "__author__": "x", "step": 3}))
    assert list(detectron2.read_pickle(path)) == ["a.weight"]
