"""Convert pretrained weights into a checkpoint that `eval.py --checkpoint` and
`train.py --config.init_from` read.

    python -m maskformer_jax.weights.convert --source detectron2 --input model_final_xxx.pkl \
        --config configs/ade20k_r50.py --output DIR

Sources: `detectron2` (the official MaskFormer model zoo .pkl), `hf` (Hugging Face
facebook/maskformer-* .safetensors or .bin), `torchvision` (an ImageNet ResNet: torchvision .pth or
detectron2's R-50.pkl / R-101.pkl / R-103.pkl) and `swin` (the official Swin ImageNet .pth or its
detectron2 .pkl conversion). ImageNet sources fill the backbone; the rest is freshly initialised.
Writes DIR/checkpoints/0/state ({"params", "frozen"}) and DIR/conversion.json. Reading .pkl and
.safetensors needs no torch; .pth and .bin do.
"""

import pathlib
import pickle

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import flags
from flax import traverse_util

from maskformer_jax import cli
from maskformer_jax.models import build_model, init_variables
from maskformer_jax.files import write_json
from maskformer_jax.weights.detectron2 import read_pickle, variables_from_detectron2
from maskformer_jax.weights.hf import variables_from_hf
from maskformer_jax.weights.imagenet import backbone_variables
from maskformer_jax.weights.rules import to_numpy

SOURCES = ("detectron2", "hf", "torchvision", "swin")


def load_state_dict(path) -> dict[str, np.ndarray]:
    """name → numpy array from a .pkl (detectron2), .safetensors, or .pth / .pt / .bin (needs torch)
    file; a top-level "model" or "state_dict" entry holding the weights is unwrapped."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".pkl":
        return read_pickle(path)
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        return dict(load_file(str(path)))
    if suffix in (".pth", ".pt", ".bin"):
        try:
            import torch
        except ImportError as error:
            raise ImportError(f"{path}: reading {suffix} files needs PyTorch (CPU build: pip install torch --index-url "
                              "https://download.pytorch.org/whl/cpu); .pkl and .safetensors files do not") from error
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise ValueError(f"{path}: holds objects other than tensors, which torch.load(weights_only=True) "
                             f"refuses to unpickle ({error})") from error
        for key in ("model", "state_dict"):
            if isinstance(data, dict) and isinstance(data.get(key), dict):
                data = data[key]
                break
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a dict of tensors, got {type(data).__name__}")
        return {name: to_numpy(value) for name, value in data.items() if isinstance(value, torch.Tensor)}
    raise ValueError(f"{path}: unknown weight file type {suffix!r} (expected .pkl, .safetensors, .pth, .pt or .bin)")


def fresh_variables(model_config: ml_collections.ConfigDict, seed: int = 0) -> dict:
    """Freshly initialised {"params", "frozen"} as numpy arrays."""
    return jax.device_get(jax.jit(init_variables, static_argnums=0)(build_model(model_config), jax.random.PRNGKey(seed)))


def convert(source: str, state_dict: dict, model_config: ml_collections.ConfigDict, seed: int = 0) -> dict:
    """{"params", "frozen"} for `build_model(model_config)` from a state dict of `source` (SOURCES)."""
    if source == "detectron2":
        return variables_from_detectron2(state_dict, model_config)
    if source == "hf":
        return variables_from_hf(state_dict, model_config)
    if source in ("torchvision", "swin"):
        backbone = traverse_util.flatten_dict(backbone_variables(state_dict, model_config, source))
        variables = traverse_util.flatten_dict(fresh_variables(model_config, seed))
        return traverse_util.unflatten_dict({**variables, **backbone})
    raise ValueError(f"--source must be one of {SOURCES}, got {source!r}")


def save_variables(output, variables, report: dict) -> pathlib.Path:
    """Write the variables as step 0 of a checkpoint folder and a report, each atomically."""
    output = pathlib.Path(output).absolute()
    path = output / "checkpoints" / "0" / "state"
    if path.exists():
        raise FileExistsError(f"{path} exists; choose another --output")
    ocp.PyTreeCheckpointer().save(path, variables)
    write_json(output / "conversion.json", report, indent=2)
    return output


def main(argv):
    config = _CONFIG.value
    state_dict = load_state_dict(FLAGS.input)
    variables = convert(FLAGS.source, state_dict, config.model, FLAGS.seed)
    count = sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(variables))
    output = save_variables(FLAGS.output, variables, {
        "source": FLAGS.source, "input": str(pathlib.Path(FLAGS.input).absolute()), "tensors_read": len(state_dict),
        "parameters": count, "model": config.model.to_dict(),
    })
    print(f"converted {FLAGS.input} ({FLAGS.source}, {len(state_dict)} tensors) → {output} ({count:,} values)")


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    _CONFIG = cli.define_config_flag()
    flags.DEFINE_enum("source", None, SOURCES, "Format of --input.")
    flags.DEFINE_string("input", None, "The weight file.")
    flags.DEFINE_string("output", None, "Folder to write the checkpoint to.")
    flags.DEFINE_integer("seed", 0, "Seed of the freshly initialised parts (ImageNet sources).")
    flags.mark_flags_as_required(["config", "source", "input", "output"])
    cli.run(main)
