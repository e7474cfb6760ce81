"""Our train and inference steps side by side with Hugging Face's PyTorch MaskFormer, same machine.

    python benchmarks/compare.py --config ade20k_r50 --batch 2 --size 256 [--dtype float32|bfloat16]
        [--rounds 3] [--steps 5] [--targets 10]

Each side runs in its own worker process (so peak memory is its own), alternating for --rounds
rounds; every worker builds its model with random weights, compiles / warms up, then times --steps
train steps (forward + matching + loss with deep supervision + backward + update) and inference
steps (forward + semantic scores at the input size). Printed: median ms/step, images/s, peak memory
of the timed steps (resident set on CPU, after returning freed heap memory to the OS; device
allocator peak on GPU), the ratio ours/theirs, and our model FLOP utilisation (XLA's FLOP count of
the step ÷ the matmul peak of benchmarks/peak.py).
Hugging Face's model is built from the equivalent config with `use_auxiliary_loss=True` and called
with `output_hidden_states=True`, as the paper trains; it needs torch and transformers (test-only).
"""

import argparse
import ctypes
import importlib
import json
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def synthetic_batch(batch: int, size: int, targets: int, num_classes: int, seed: int = 0):
    """Random images and a block segmentation with `targets` segments per image."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, targets, size=(batch, max(size // 32, 1), max(size // 32, 1)))
    segments = blocks.repeat(size // blocks.shape[1], 1).repeat(size // blocks.shape[2], 2)[:, :size, :size]
    return {
        "image": rng.integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8),
        "valid": np.ones((batch, size, size), bool),
        "segments": segments.astype(np.int32),
        "labels": rng.choice(num_classes, size=(batch, targets), replace=False).astype(np.int32)
        if targets <= num_classes else rng.integers(0, num_classes, size=(batch, targets)).astype(np.int32),
    }


def _reset_peak_rss():
    """Start a new peak-resident-set window. Memory freed by compilation and warm-up goes back to the OS
    first (glibc's malloc_trim), so the window measures what the steps hold, not the allocator's cache."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        pathlib.Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak resident set
    except OSError:
        pass


def _peak_rss_bytes() -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _timed(step, count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        step()
        times.append(1e3 * (time.perf_counter() - start))
    return times


def run_ours(args) -> dict:
    import jax

    from maskformer_jax.inference import semantic_scores
    from maskformer_jax.models import build_model
    from maskformer_jax.training.optimizer import build_optimizer
    from maskformer_jax.training.state import create_train_state, make_mesh, state_sharding
    from maskformer_jax.training.step import global_batch, jit_train_step, normalize

    config = importlib.import_module(f"configs.{args.config}").get_config()
    config.dataset.image_size = (args.size, args.size)
    config.batch_size, config.loss.max_targets, config.model.dtype = args.batch, args.targets, args.dtype
    model, optimizer, mesh = build_model(config.model), build_optimizer(config), make_mesh()
    create = lambda: create_train_state(config, model, optimizer, jax.random.PRNGKey(0))  # noqa: E731
    sharding = state_sharding(jax.eval_shape(create), mesh)
    state = jax.jit(create, out_shardings=sharding)()
    batch = global_batch(synthetic_batch(args.batch, args.size, args.targets, config.model.num_classes), mesh)
    train_step = jit_train_step(config, model, optimizer, mesh, sharding)

    @jax.jit
    def infer(variables, images):
        outputs = model.apply(variables, normalize(images))
        return semantic_scores(outputs["class_logits"][-1], outputs["mask_logits"][-1], *images.shape[1:3])

    with jax.set_mesh(mesh):
        compiled = train_step.lower(state, batch).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        holder = {"state": state}

        def train():
            holder["state"], metrics = compiled(holder["state"], batch)
            jax.block_until_ready(metrics)

        def inference():
            variables = {"params": holder["state"].params, "frozen": holder["state"].frozen}
            infer(variables, batch["image"]).block_until_ready()

        for _ in range(2):
            train(), inference()
        device = jax.devices()[0]
        _reset_peak_rss()
        train_ms = _timed(train, args.steps)
        infer_ms = _timed(inference, args.steps)
    stats = device.memory_stats() or {}
    peak = stats.get("peak_bytes_in_use") or _peak_rss_bytes()
    return {"train_ms": train_ms, "infer_ms": infer_ms, "peak_bytes": peak, "train_flops": float(cost.get("flops", 0.0)),
            "device": str(device), "backend": jax.default_backend()}


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


def run_theirs(args) -> dict:
    import torch
    from transformers import MaskFormerForInstanceSegmentation

    config = importlib.import_module(f"configs.{args.config}").get_config()
    num_classes = config.model.num_classes
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    torch.manual_seed(0)
    model = MaskFormerForInstanceSegmentation(hf_config(config, num_classes)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    batch = synthetic_batch(args.batch, args.size, args.targets, num_classes)
    mean = torch.tensor([123.675, 116.28, 103.53], device=device).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375], device=device).view(1, 3, 1, 1)
    pixels = (torch.from_numpy(batch["image"]).to(device).permute(0, 3, 1, 2).float() - mean) / std
    masks = [torch.from_numpy(s[None] == np.arange(args.targets)[:, None, None]).float().to(device) for s in batch["segments"]]
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
            mask = torch.nn.functional.interpolate(out.masks_queries_logits.float(), size=(args.size, args.size),
                                                   mode="bilinear", align_corners=False).sigmoid()
            torch.einsum("bqk,bqhw->bkhw", probs, mask)
        sync()

    for _ in range(2):
        train(), inference()
    _reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train_ms = _timed(train, args.steps)
    infer_ms = _timed(inference, args.steps)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_rss_bytes()
    return {"train_ms": train_ms, "infer_ms": infer_ms, "peak_bytes": peak, "device": str(device),
            "threads": torch.get_num_threads()}


def worker(side: str, args) -> dict:
    command = [sys.executable, __file__, "--worker", side, "--config", args.config, "--batch", str(args.batch),
               "--size", str(args.size), "--dtype", args.dtype, "--steps", str(args.steps), "--targets", str(args.targets)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"the {side} worker failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="ade20k_r50", help="a module of configs/")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--targets", type=int, default=10, help="ground-truth masks per image")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per worker")
    parser.add_argument("--rounds", type=int, default=2, help="alternating worker pairs")
    parser.add_argument("--worker", choices=("ours", "theirs"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps((run_ours if args.worker == "ours" else run_theirs)(args)))
        return
    from benchmarks.peak import matmul_peak

    runs = {"ours": [], "theirs": []}
    for _ in range(args.rounds):
        for side in ("ours", "theirs"):
            runs[side].append(worker(side, args))
    summary = {}
    for side, results in runs.items():
        summary[side] = {
            "train_ms": float(np.median([t for r in results for t in r["train_ms"]])),
            "infer_ms": float(np.median([t for r in results for t in r["infer_ms"]])),
            "peak_mb": max(r["peak_bytes"] for r in results) / 2**20,
        }
    ours, theirs = summary["ours"], summary["theirs"]
    peak_flops = matmul_peak(1024 if runs["ours"][0]["backend"] == "cpu" else 8192, args.dtype)
    mfu = runs["ours"][0]["train_flops"] / (ours["train_ms"] / 1e3) / peak_flops
    print(f"{args.config}, batch {args.batch}, {args.size}x{args.size}, {args.dtype}, {args.targets} targets/image, "
          f"on {runs['ours'][0]['device']} (matmul peak {peak_flops / 1e9:.0f} GFLOP/s)")
    print(f"{'':10} {'train ms':>9} {'img/s':>7} {'infer ms':>9} {'img/s':>7} {'peak MB':>8}")
    for side in ("ours", "theirs"):
        s = summary[side]
        print(f"{side:10} {s['train_ms']:9.1f} {1e3 * args.batch / s['train_ms']:7.2f} {s['infer_ms']:9.1f} "
              f"{1e3 * args.batch / s['infer_ms']:7.2f} {s['peak_mb']:8.0f}")
    print(f"{'ours/theirs':10} speed train {theirs['train_ms'] / ours['train_ms']:.2f}x, inference "
          f"{theirs['infer_ms'] / ours['infer_ms']:.2f}x, peak memory {ours['peak_mb'] / theirs['peak_mb']:.2f}x")
    print(f"our train step: {runs['ours'][0]['train_flops'] / 1e9:.1f} GFLOP (XLA), model FLOP utilisation {100 * mfu:.1f}%")


if __name__ == "__main__":
    main()
