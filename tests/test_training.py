"""Training end to end: overfitting, non-finite stops, 8 devices, 2 processes (with evaluation), kill and resume."""

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import tiny
from maskformer_jax.training import step as step_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Small, fast runs of the tiny config; dropout off so that image order cannot change the result; a
# constant learning rate so that num_steps is not part of the compiled step and every run below
# reuses one compiled program from the shared cache.
TINY_FLAGS = [
    "--config", str(ROOT / "configs/tiny.py"), "--config.batch_size=4", "--config.log_every=1",
    "--config.dataset.synthetic_train_examples=8", "--config.model.dropout=0.0",
    "--config.model.backbone.drop_path_rate=0.0", "--config.optimizer.schedule=step",
    "--config.optimizer.learning_rate=3e-4", "--config.optimizer.clip_grad_norm=1.0",
    "--config.optimizer.backbone_multiplier=1.0",
]


@pytest.fixture(scope="module")
def environment(tmp_path_factory):
    """Subprocess environment sharing one persistent compilation cache (the runs compile the same step).
    The runs are on CPU on every machine: the resume and multi-process tests compare parameters bit
    for bit, which needs deterministic kernels (GPU reductions and scatters are not)."""
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PLATFORMS="cpu")
    return env


def train(workdir, environment, *extra, wait=True):
    command = [sys.executable, str(ROOT / "train.py"), "--workdir", str(workdir), *TINY_FLAGS, *extra]
    process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if wait:
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output[-3000:]
        return output
    return process


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, environment):
    """12 uninterrupted steps, every second one checkpointed and kept: what the runs below must reproduce."""
    workdir = tmp_path_factory.mktemp("straight")
    train(workdir, environment, "--config.num_steps=12", "--config.checkpoint_every=2", "--config.checkpoints_to_keep=6")
    return workdir


def checkpoint_steps(workdir):
    folder = pathlib.Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def final_params(workdir, step=None):
    """(step, its parameters as numpy arrays), the latest step by default, whichever devices wrote them."""
    step = checkpoint_steps(workdir)[-1] if step is None else step
    path = pathlib.Path(workdir) / "checkpoints" / str(step) / "state"
    checkpointer = ocp.PyTreeCheckpointer()
    metadata = checkpointer.metadata(path)
    tree = getattr(getattr(metadata, "item_metadata", metadata), "tree", metadata)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return step, checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))["params"]


def assert_trees_equal(a, b, tolerance=0.0):
    """Bit-identical, or every element within rtol = atol = `tolerance`."""
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tolerance, atol=tolerance)


def test_tiny_config_overfits_a_few_images(tmp_path, environment):
    """8 synthetic images, 150 steps: the loss falls to less than half of its start; evaluated at the end."""
    train(tmp_path, environment, "--config.num_steps=150", "--config.checkpoint_every=1000", "--config.eval_every=150",
          "--config.eval.num_examples=4")
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [line["loss"] for line in lines if line["split"] == "train"]
    assert lines[-2]["step"] == 150 and np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5]), losses
    assert lines[-1]["split"] == "eval" and lines[-1]["step"] == 150 and 0 <= lines[-1]["mIoU"] <= 100
    assert (tmp_path / "tensorboard").is_dir() and checkpoint_steps(tmp_path)[-1] == 150


def test_coco_recipe_compiles_one_train_step_per_canvas(tmp_path, environment):
    """The DETR recipe on the synthetic set: batches on a landscape and a portrait canvas, padding
    absent (the encoder's masks in use), each canvas compiled once; panoptic evaluation at the end."""
    output = train(tmp_path, dict(environment, JAX_LOG_COMPILES="1"), "--config.num_steps=8",
                   "--config.checkpoint_every=1000", "--config.dataset.synthetic_train_examples=12",
                   "--config.dataset.transform=detr", "--config.dataset.target_mode=panoptic",
                   "--config.dataset.min_size_train=(48,64)", "--config.dataset.max_size_train=96",
                   "--config.dataset.crop_min_sizes=(48,64)", "--config.dataset.crop_size_range=(32,56)",
                   "--config.model.encoder_layers=1", "--config.inference.task=panoptic", "--config.eval_every=8",
                   "--config.eval.num_examples=2")
    compiled = re.findall(r"Compiling jit\(train_step\) with global shapes and types \((.*?)\)\. Argument", output)
    canvases = sorted(re.findall(r"uint8\[4,(\d+),(\d+),3\]", line)[0] for line in compiled)
    assert canvases == [("64", "96"), ("96", "64")], canvases
    for canvas in ("64x96", "96x64"):
        assert output.count(f"compiling the train step for {canvas} batches") == 1
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if line["split"] == "train"] == list(range(1, 9))
    assert lines[-1]["split"] == "eval" and 0 <= lines[-1]["PQ"] <= 100


def test_non_finite_gradients_stop_training_after_the_configured_count(tmp_path, monkeypatch):
    real_loss = step_lib.set_loss

    def poisoned(*args, **kwargs):
        total, metrics = real_loss(*args, **kwargs)
        return total * np.float32("nan"), metrics

    monkeypatch.setattr(step_lib, "set_loss", poisoned)
    config = tiny.get_config()
    config.batch_size, config.num_steps, config.optimizer.max_consecutive_nonfinite = 2, 50, 3
    config.model.dropout, config.model.backbone.drop_path_rate = 0.0, 0.0
    import train as train_script

    with pytest.raises(FloatingPointError, match="3 updates in a row had non-finite gradients"):
        train_script.train_and_evaluate(config, tmp_path)


def test_console_shows_the_loss_terms_of_the_config(tmp_path, capsys):
    """A term switched on in config.loss.weights is logged with the others, as the loss lists them."""
    config = tiny.get_config()
    config.batch_size, config.num_steps, config.log_every, config.eval_every = 2, 1, 1, 0
    config.loss.weights = {"class": 1.0, "focal": 20.0, "dice": 1.0, "bce": 2.0}
    import train as train_script

    result = train_script.train_and_evaluate(config, tmp_path)
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("step 1/1"))
    terms = line.split("(")[1].split(")")[0].split()
    from maskformer_jax.losses import loss_terms

    assert terms[::2] == list(loss_terms(config.loss)) and sorted(terms[::2]) == ["bce", "class", "dice", "focal"]
    logged = dict(zip(terms[::2], map(float, terms[1::2])))
    assert logged["bce"] == pytest.approx(result["loss_bce"], abs=1e-3) and result["loss_bce"] > 0


def test_one_step_on_eight_devices_equals_one_device():
    result = subprocess.run([sys.executable, str(ROOT / "tests/multidevice_step.py")], capture_output=True, text=True,
                            timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["devices"] == 8
    fsdp = report["fsdp"]
    assert fsdp["sharded_leaves"] > 0  # parameters and moments split over the data axis too
    assert fsdp["loss_relative"] <= 1e-5 and fsdp["params_close"] and fsdp["params_changed"], report


def test_two_processes_equal_one_process(tmp_path, environment, straight_run, capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    steps = ["--config.num_steps=4", "--config.checkpoint_every=4", "--config.eval_every=4",
             "--config.eval.num_examples=4", "--config.inference.task=instance"]
    processes = [
        train(tmp_path / "two", environment, *steps, f"--coordinator_address=127.0.0.1:{port}",
              "--num_processes=2", f"--process_id={i}", wait=False)
        for i in range(2)
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    step_two, params_two = final_params(tmp_path / "two")
    _, params_one = final_params(straight_run, step=4)
    assert step_two == 4
    # Same global batch (the two processes hold different halves), so the same parameters up to the
    # order of floating-point sums. Adam turns a rounding difference in a near-zero gradient into a
    # visible one (g / (|g| + eps)), so the bound is 1e-5 absolute: 3% of one step at lr 3e-4.
    assert_trees_equal(params_two, params_one, tolerance=1e-5)

    # The evaluation at the end, each process on its half of the examples, equals one process
    # evaluating the same checkpoint on all of them; the instance records of both processes reach
    # process 0, which scores them all.
    import eval as eval_script

    logged = json.loads((tmp_path / "two/metrics.jsonl").read_text().splitlines()[-1])
    config = tiny.get_config()
    config.eval.num_examples, config.inference.task = 4, "instance"
    capsys.readouterr()
    alone = eval_script.evaluate_checkpoint(config, tmp_path / "alone", tmp_path / "two/checkpoints/4")
    scored = re.search(r"COCO mask AP of \d+ instances in 4 images", capsys.readouterr().out).group()
    assert scored in outputs[0] and scored not in outputs[1]
    assert logged["split"] == "eval" and logged["step"] == 4
    for key in ("mIoU", "fwIoU", "mACC", "pACC", "AP", "AP50"):
        assert logged[key] == pytest.approx(alone[key], abs=1e-6, nan_ok=True), key


def test_killed_run_resumes_bit_identically_and_sigterm_saves(tmp_path, environment, straight_run):
    steps = ["--config.num_steps=12", "--config.checkpoint_every=2"]
    process = train(tmp_path / "killed", environment, *steps, wait=False)
    deadline = time.time() + 600
    while not any(step >= 4 for step in checkpoint_steps(tmp_path / "killed")) and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = checkpoint_steps(tmp_path / "killed")[-1]
    assert 4 <= killed_at < 12
    output = train(tmp_path / "killed", environment, *steps)
    assert f"resumed from step {killed_at}" in output
    # Each step logged once, although the killed run had logged steps after its last checkpoint.
    rows = [json.loads(line) for line in (tmp_path / "killed/metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if row["split"] == "train"] == list(range(1, 13))
    step_straight, straight = final_params(straight_run)
    step_resumed, resumed = final_params(tmp_path / "killed")
    assert step_straight == step_resumed == 12
    assert_trees_equal(resumed, straight)

    def stop_with(name, sent, min_steps, *extra):
        """Start a long run, send `sent` once `min_steps` rows are logged: a clean exit that saved."""
        process = train(tmp_path / name, environment, "--config.num_steps=100000", *extra, wait=False)
        metrics = tmp_path / name / "metrics.jsonl"
        while (not metrics.exists() or len(metrics.read_text().splitlines()) < min_steps) and time.time() < deadline:
            time.sleep(0.2)
        process.send_signal(sent)
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-3000:]
        saved = checkpoint_steps(tmp_path / name)[-1]
        assert saved >= min_steps and f"stop requested: saved step {saved}" in output, output[-3000:]
        assert "Traceback" not in output and "leaked" not in output, output[-3000:]

    # SIGTERM with every step checkpointed (so it lands right after an interval save of the step it
    # stops at) and a grain worker process: a clean exit with that checkpoint, workers shut down.
    stop_with("terminated", signal.SIGTERM, 3, "--config.checkpoint_every=1", "--config.dataset.num_workers=1")
    # Ctrl-C (SIGINT) saves and exits like SIGTERM.
    stop_with("interrupted", signal.SIGINT, 2, "--config.checkpoint_every=100000")


def test_a_checkpoint_of_another_config_is_refused_before_anything_is_written(tmp_path, environment, straight_run):
    files = {path: path.stat().st_mtime_ns for path in straight_run.rglob("*")}
    command = [sys.executable, str(ROOT / "train.py"), "--workdir", str(straight_run), *TINY_FLAGS,
               "--config.num_steps=12", "--config.model.num_queries=12"]
    result = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert "does not fit this config: 1 array differs: params/query_decoder/query_embed (" in lines[0]
    assert "stored" in lines[0] and f"--config.init_from={straight_run}" in lines[0], lines[0]
    assert "init_reinitialize_mismatched" in lines[0]
    # Evaluating it with another model's config (the demo's: other widths and class count).
    command = [sys.executable, str(ROOT / "eval.py"), "--config", str(ROOT / "configs/demo.py"),
               "--workdir", str(straight_run)]
    result = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "does not fit this config" in lines[0], result.stderr[-3000:]
    assert {path: path.stat().st_mtime_ns for path in straight_run.rglob("*")} == files  # nothing written


def test_a_resumed_run_with_a_changed_config_keeps_config_json(tmp_path, environment, straight_run):
    workdir = tmp_path / "copy"
    shutil.copytree(straight_run, workdir)
    original = (workdir / "config.json").read_text()
    output = train(workdir, environment, "--config.num_steps=13", "--config.checkpoint_every=2",
                   "--config.checkpoints_to_keep=6")
    assert "resumed from step 12" in output and "differs from config.json in num_steps" in output
    assert (workdir / "config.json").read_text() == original
    assert json.loads((workdir / "config_resumed_12.json").read_text())["num_steps"] == 13
