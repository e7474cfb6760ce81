"""ImageNet-pretrained backbones → the backbone variables of our model (the rest is the caller's).

ResNet: torchvision's resnet50/101 .pth, or detectron2-named .pkl files (MaskFormer's R-50.pkl and
R-101.pkl, converted from torchvision by detectron2's convert-torchvision-to-d2.py, and the deep-stem
R-103.pkl for R101c). Swin: the official ImageNet .pth ({"model": state dict}) or its detectron2 .pkl
conversion, which keeps the official names. The per-stage output LayerNorms `norm{s}` of our Swin
backbone are not in any ImageNet checkpoint and stay freshly initialised, as in MaskFormer.
"""

import re
from typing import Iterator, Mapping

import ml_collections

from maskformer_jax.weights.detectron2 import SKIPPED_SUFFIXES, resnet_rules, swin_rules
from maskformer_jax.weights.rules import Rule, conv_frozen_bn, convert_state_dict

SOURCES = ("torchvision", "swin")

# Source tensors that no backbone variable needs: the classifier heads (detectron2's conversion of a
# torchvision file renames fc to stem.fc) and Swin's final LayerNorm in front of its head; plus the
# buffers our model recomputes (detectron2.SKIPPED_SUFFIXES).
SKIPPED_PREFIXES = {"resnet": ("fc.", "stem.fc."), "swin": ("head.", "norm.")}

# caffe2 (MSRA) names, as in detectron2's ImageNetPretrained/MSRA/R-50.pkl: res2_0_branch2a_w, conv1_w.
_CAFFE2_NAME = re.compile(r"res\d+_\d+_branch|res_conv1_bn_|conv1_[wb]$|fc1000_")
_OUT_NORM = re.compile(r"norm\d+")


def torchvision_resnet_rules(backbone_config: ml_collections.ConfigDict) -> Iterator[Rule]:
    """Rules from torchvision ResNet names (conv1, bn1, layer{1..4}.{block}.conv{1,2,3} / bn{1,2,3},
    layer{l}.0.downsample.{0,1}) to our ResNet; raises ValueError for the deep stem of R101c."""
    if backbone_config.deep_stem:
        raise ValueError(
            "torchvision has no ResNet with a deep stem (R101c): use detectron2's R-103.pkl "
            "(https://dl.fbaipublicfiles.com/detectron2/DeepLab/R-103.pkl), which has detectron2 names"
        )
    return _torchvision_resnet_rules(backbone_config.depths)


def _torchvision_resnet_rules(depths) -> Iterator[Rule]:
    yield from conv_frozen_bn(("params", "backbone", "stem_conv1"), "conv1", "bn1")
    for stage, depth in enumerate(depths):
        layer = f"layer{stage + 1}"
        for block in range(depth):
            target = ("params", "backbone", f"res{stage + 2}_{block}")
            for i in (1, 2, 3):
                yield from conv_frozen_bn(target + (f"conv{i}",), f"{layer}.{block}.conv{i}", f"{layer}.{block}.bn{i}")
        # Every stage's first block projects its shortcut (res2: 64 → 256 channels, later ones: stride 2).
        yield from conv_frozen_bn(
            ("params", "backbone", f"res{stage + 2}_0", "shortcut"), f"{layer}.0.downsample.0", f"{layer}.0.downsample.1"
        )


def checkpoint_layout(names) -> str:
    """The naming scheme of a state dict: torchvision, detectron2, caffe2, swin or unknown."""
    names = list(names)
    if any(_CAFFE2_NAME.match(name) for name in names):
        return "caffe2"
    if any(name.startswith(("patch_embed.", "layers.")) for name in names):
        return "swin"
    if any(name.startswith("stem.") for name in names):
        return "detectron2"
    if any(name.startswith(("conv1.", "layer1.")) for name in names):
        return "torchvision"
    return "unknown"


def _layout_error(layout: str, names, backbone: str) -> str:
    if layout == "caffe2":
        return ("caffe2 (MSRA) names such as res2_0_branch2a_w are not supported (BGR input, stride in the "
                "1x1 conv); MaskFormer's configs start from torchvision weights: pass torchvision's "
                "resnet50/101 .pth or its detectron2 conversion R-50.pkl / R-101.pkl")
    sample = ", ".join(sorted(names)[:5])
    if layout == "unknown":
        hint = " (a full MaskFormer model? use source detectron2 or hf)" if any(
            name.startswith(("backbone.", "sem_seg_head.", "model.")) for name in names) else ""
        return f"no ImageNet {backbone} names found (first names: {sample}){hint}"
    found = {"swin": "Swin", "torchvision": "torchvision ResNet", "detectron2": "detectron2 ResNet"}[layout]
    return f"the state dict holds {found} names ({sample}, ...), but config.model.backbone is {backbone}"


def backbone_variables(state_dict: Mapping[str, object], model_config: ml_collections.ConfigDict,
                       source: str) -> dict:
    """{"params": {"backbone": ...}, "frozen": {"backbone": ...}} (numpy float32) from an ImageNet
    checkpoint; only the backbone, without Swin's output norms. `source`: "torchvision" (ResNet
    configs) or "swin" (Swin configs). Raises ValueError naming every missing, unexpected or
    mis-shaped tensor, or the mismatch between the checkpoint, `source` and the config."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    backbone = model_config.backbone
    wanted = "resnet" if source == "torchvision" else "swin"
    if backbone.name != wanted:
        raise ValueError(f"source {source!r} is for {wanted} configs, but config.model.backbone is {backbone.name}")
    layout = checkpoint_layout(state_dict)
    if backbone.name == "resnet" and layout == "torchvision":
        rules, what = torchvision_resnet_rules(backbone), "torchvision ResNet checkpoint"
    elif backbone.name == "resnet" and layout == "detectron2":
        rules, what = resnet_rules(backbone, prefix=""), "detectron2 ResNet checkpoint"
    elif backbone.name == "swin" and layout == "swin":
        rules, what = swin_rules(backbone, prefix="", out_norms=False), "Swin ImageNet checkpoint"
    else:
        raise ValueError(_layout_error(layout, state_dict, backbone.name))

    def skipped(name: str) -> bool:
        return name.startswith(SKIPPED_PREFIXES[backbone.name]) or name.endswith(SKIPPED_SUFFIXES)

    def only(path: tuple) -> bool:
        return path[1] == "backbone" and not _OUT_NORM.fullmatch(path[2])

    return convert_state_dict(state_dict, rules, model_config, what, skipped=skipped, only=only)
