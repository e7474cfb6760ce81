"""Our train and inference steps side by side with Hugging Face's PyTorch MaskFormer, same machine.

    python -m benchmarks.compare --config configs/ade20k_r50.py --config.batch_size=2 \
        --config.dataset.image_size="(256, 256)" [--config.model.dtype=bfloat16] \
        [--config.loss.max_targets=10] [--steps 6]

Each side runs in its own worker process (so peak memory is its own). Both workers build their model
with random weights, compile and warm up, then take turns one step at a time, the side that goes first
alternating, so that a machine whose speed drifts (a shared virtual machine) slows both alike. The batch is config.batch_size random images of config.dataset.image_size,
each with config.loss.max_targets block-shaped segments. Timed: --steps train steps (forward + matching + loss with deep supervision + backward + update), then
--steps inference steps (forward + semantic scores at the input size). Printed: median ms/step,
images/s, peak memory of the timed steps (resident set on CPU, after returning freed heap memory to
the OS; device allocator peak on GPU), the ratio ours/theirs, and our model FLOP utilisation (XLA's
FLOP count of the step's HLO before optimisation, the same on every backend, ÷ the matmul peak of
benchmarks/peak.py; XLA's count of the compiled program is printed beside it).
Hugging Face's model is built from the equivalent config with `use_auxiliary_loss=True` and called
with `output_hidden_states=True`, as the paper trains; it needs torch and transformers (test-only).
Both workers inherit the environment, so `GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python -m
benchmarks.compare ...` or `LD_PRELOAD=.../libtcmalloc_minimal.so.4 python -m benchmarks.compare
...` runs both sides with that allocator setting (see README, Performance); the header names both.
"""

import ctypes
import functools
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import flags
from ml_collections import config_flags

from maskformer_jax import cli

ROOT = pathlib.Path(__file__).resolve().parent.parent
REPLY = "@reply"  # marks a worker's answers on stdout, apart from anything a library prints there


def synthetic_batch(batch: int, size, targets: int, num_classes: int, seed: int = 0):
    """Random images of `size` (a side, or (height, width)) and a block segmentation with `targets` segments per image."""
    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, targets, size=(batch, max(height // 32, 1), max(width // 32, 1)))
    segments = blocks.repeat(-(-height // blocks.shape[1]), 1).repeat(-(-width // blocks.shape[2]), 2)[:, :height, :width]
    return {
        "image": rng.integers(0, 256, size=(batch, height, width, 3), dtype=np.uint8),
        "valid": np.ones((batch, height, width), bool),
        "segments": segments.astype(np.int32),
        # Distinct classes within an image where there are enough, drawn with replacement otherwise.
        "labels": np.stack([rng.choice(num_classes, targets, replace=targets > num_classes)
                            for _ in range(batch)]).astype(np.int32),
    }


def _reset_peak_rss():
    """Start a new peak-resident-set window. Memory freed by compilation and warm-up goes back to the OS
    first (glibc's malloc_trim), so the window measures what the steps hold, not the allocator's cache."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    release = getattr(ctypes.CDLL(None), "MallocExtension_ReleaseFreeMemory", None)  # tcmalloc, if preloaded
    if release is not None:
        release()
    try:
        pathlib.Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak resident set
    except OSError:
        pass


def _peak_rss_bytes() -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def serve(steps: dict, reset_peak, final_stats) -> None:
    """A worker's loop: warm up every step, start the peak-memory window, then run the step named on each
    line of stdin and answer its milliseconds on stdout; "done" answers `final_stats()` and returns."""
    for _ in range(2):
        for step in steps.values():
            step()
    _reset_peak_rss()
    reset_peak()
    print(f"{REPLY} ready", flush=True)
    for line in sys.stdin:
        name = line.strip()
        if name == "done":
            print(f"{REPLY} {json.dumps(final_stats())}", flush=True)
            return
        start = time.perf_counter()
        steps[name]()
        print(f"{REPLY} {1e3 * (time.perf_counter() - start)}", flush=True)


def run_ours(config) -> None:
    # On a GPU both workers share the device: take memory as needed instead of JAX's default 75% up front.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    from maskformer_jax.postprocessing import semantic_scores
    from maskformer_jax.models import build_model, normalize
    from maskformer_jax.devices import compiler_options
    from maskformer_jax.training.optimizer import build_optimizer
    from maskformer_jax.devices import make_mesh
    from maskformer_jax.training.state import create_train_state, init_train_state, state_sharding
    from maskformer_jax.training.step import global_batch, jit_train_step

    model, optimizer, mesh = build_model(config.model), build_optimizer(config), make_mesh()
    create = lambda: create_train_state(config, model, optimizer, jax.random.PRNGKey(0))  # noqa: E731
    sharding = state_sharding(jax.eval_shape(create), mesh)
    state = init_train_state(create, sharding)
    jax.clear_caches()  # the initialising program's host memory is not the step's
    batch = global_batch(synthetic_batch(config.batch_size, tuple(config.dataset.image_size), config.loss.max_targets,
                                         config.model.num_classes), mesh)
    train_step = jit_train_step(config, model, optimizer, mesh, sharding)

    @functools.partial(jax.jit, compiler_options=compiler_options())
    def infer(variables, images):
        outputs = model.apply(variables, normalize(images))
        return semantic_scores(outputs["class_logits"][-1], outputs["mask_logits"][-1], *images.shape[1:3])

    with jax.set_mesh(mesh):
        lowered = train_step.lower(state, batch)
        compiled = lowered.compile()
        # The HLO before optimisation counts every convolution on every backend; the compiled
        # program's count leaves out what runs in libraries (cuDNN convolutions on GPUs).
        step_flops = float(lowered.cost_analysis()["flops"])
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        holder = {"state": state}

        def train():
            holder["state"], metrics = compiled(holder["state"], batch)
            jax.block_until_ready(metrics)

        def inference():
            infer(holder["state"].variables, batch["image"]).block_until_ready()

        device = jax.devices()[0]

        def final_stats():
            peak = (device.memory_stats() or {}).get("peak_bytes_in_use") or _peak_rss_bytes()
            return {"peak_bytes": peak, "train_flops": step_flops, "compiled_flops": float(cost.get("flops", 0.0)),
                    "device": str(device), "backend": jax.default_backend()}

        serve({"train": train, "infer": inference}, lambda: None, final_stats)


def hf_config(config, num_classes: int):
    from transformers import MaskFormerConfig, ResNetConfig, SwinConfig

    backbone, stages = config.model.backbone, ["stage1", "stage2", "stage3", "stage4"]
    if backbone.name == "resnet":
        widths = [256, 512, 1024, 2048]
        backbone_config = ResNetConfig(depths=list(backbone.depths), hidden_sizes=widths, layer_type="bottleneck",
                                       out_features=stages)
    else:
        backbone_config = SwinConfig(embed_dim=backbone.embed_dim, depths=list(backbone.depths),
                                     num_heads=list(backbone.num_heads), window_size=backbone.window_size,
                                     drop_path_rate=backbone.drop_path_rate, out_features=stages)
    return MaskFormerConfig(backbone_config=backbone_config, num_labels=num_classes, use_auxiliary_loss=True)


def run_theirs(config) -> None:
    import torch
    from transformers import MaskFormerForInstanceSegmentation
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    num_classes = config.model.num_classes
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.model.dtype == "bfloat16")
    torch.manual_seed(0)
    model = MaskFormerForInstanceSegmentation(hf_config(config, num_classes)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    size, targets = tuple(config.dataset.image_size), config.loss.max_targets
    batch = synthetic_batch(config.batch_size, size, targets, num_classes)
    # Their image processor's normalisation (ImageNet statistics on a 0-1 scale), on the 0-255 batch.
    mean = 255 * torch.tensor(IMAGENET_DEFAULT_MEAN, device=device).view(1, 3, 1, 1)
    std = 255 * torch.tensor(IMAGENET_DEFAULT_STD, device=device).view(1, 3, 1, 1)
    pixels = (torch.from_numpy(batch["image"]).to(device).permute(0, 3, 1, 2).float() - mean) / std
    masks = [torch.from_numpy(s[None] == np.arange(targets)[:, None, None]).float().to(device) for s in batch["segments"]]
    classes = [torch.from_numpy(labels).long().to(device) for labels in batch["labels"]]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train():
        model.train()
        with autocast:
            out = model(pixel_values=pixels, mask_labels=masks, class_labels=classes, output_hidden_states=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()

    def inference():
        model.eval()
        with torch.no_grad(), autocast:
            out = model(pixel_values=pixels, output_hidden_states=True)  # required with use_auxiliary_loss
            probs = out.class_queries_logits.float().softmax(-1)[..., :-1]
            mask = torch.nn.functional.interpolate(out.masks_queries_logits.float(), size=size,
                                                   mode="bilinear", align_corners=False).sigmoid()
            torch.einsum("bqk,bqhw->bkhw", probs, mask)
        sync()

    def final_stats():
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_rss_bytes()
        return {"peak_bytes": peak, "device": str(device), "threads": torch.get_num_threads()}

    serve({"train": train, "infer": inference},
          torch.cuda.reset_peak_memory_stats if device.type == "cuda" else (lambda: None), final_stats)


class Worker:
    """One side's worker process, driven over its stdin and stdout."""

    def __init__(self, side: str):
        """The worker gets this command's flags and --worker."""
        self.side, self.log = side, tempfile.TemporaryFile("w+")
        command = [sys.executable, "-m", "benchmarks.compare", f"--worker={side}", *sys.argv[1:]]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                        text=True, cwd=ROOT)
        self._reply()  # "ready": built, compiled and warmed up

    def _reply(self) -> str:
        for line in self.process.stdout:
            if line.startswith(REPLY):
                return line[len(REPLY):].strip()
        self.log.seek(0)
        raise RuntimeError(f"the {self.side} worker failed:\n{self.log.read()[-3000:]}")

    def ask(self, command: str) -> str:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._reply()

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.log.close()


def main(argv):
    config = _CONFIG.value
    if FLAGS.worker:
        (run_ours if FLAGS.worker == "ours" else run_theirs)(config)
        return
    from benchmarks.peak import matmul_peak

    workers, times = {}, {side: {"train": [], "infer": []} for side in ("ours", "theirs")}
    try:
        for side in ("ours", "theirs"):
            workers[side] = Worker(side)
        for step in ("train", "infer"):
            for i in range(FLAGS.steps):
                for side in ("ours", "theirs") if i % 2 == 0 else ("theirs", "ours"):
                    times[side][step].append(float(workers[side].ask(step)))
        stats = {side: json.loads(worker.ask("done")) for side, worker in workers.items()}
    finally:
        for worker in workers.values():
            worker.close()
    summary = {side: {"train_ms": float(np.median(times[side]["train"])), "infer_ms": float(np.median(times[side]["infer"])),
                      "peak_mb": stats[side]["peak_bytes"] / 2**20} for side in times}
    ours, theirs = summary["ours"], summary["theirs"]
    batch, (height, width), dtype = config.batch_size, config.dataset.image_size, config.model.dtype
    peak_flops = matmul_peak(1024 if stats["ours"]["backend"] == "cpu" else 8192, dtype)
    mfu = stats["ours"]["train_flops"] / (ours["train_ms"] / 1e3) / peak_flops
    print(f"{config_flags.get_config_filename(FLAGS['config'])}, batch {batch}, {height}x{width}, {dtype}, "
          f"{config.loss.max_targets} targets/image, "
          f"on {stats['ours']['device']} (matmul peak {peak_flops / 1e9:.0f} GFLOP/s), "
          + ", ".join(f"{name}={os.environ.get(name, '')!r}" for name in ("GLIBC_TUNABLES", "LD_PRELOAD")))
    print(f"{'':10} {'train ms':>9} {'img/s':>7} {'infer ms':>9} {'img/s':>7} {'peak MB':>8}")
    for side in ("ours", "theirs"):
        s = summary[side]
        print(f"{side:10} {s['train_ms']:9.1f} {1e3 * batch / s['train_ms']:7.2f} {s['infer_ms']:9.1f} "
              f"{1e3 * batch / s['infer_ms']:7.2f} {s['peak_mb']:8.0f}")
    print(f"{'ours/theirs':10} speed train {theirs['train_ms'] / ours['train_ms']:.2f}x, inference "
          f"{theirs['infer_ms'] / ours['infer_ms']:.2f}x, peak memory {ours['peak_mb'] / theirs['peak_mb']:.2f}x")
    print(f"our train step: {stats['ours']['train_flops'] / 1e9:.1f} GFLOP (XLA's count of the step's HLO, the MFU "
          f"basis; of the compiled program: {stats['ours']['compiled_flops'] / 1e9:.1f}), model FLOP utilisation "
          f"{100 * mfu:.1f}%")


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    _CONFIG = cli.define_config_flag(str(ROOT / "configs" / "ade20k_r50.py"))
    flags.DEFINE_integer("steps", 6, "Timed train steps and inference steps per side.")
    flags.DEFINE_enum("worker", None, ["ours", "theirs"], "Internal: run one side's worker.")
    cli.run(main)
