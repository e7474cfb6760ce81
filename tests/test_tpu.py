"""Programs compile for a TPU slice ahead of time on this machine, without a TPU: libtpu compiles the
tiny config's train step (with either matcher) and inference step for a v5e 2x2 slice, through
benchmarks/memory.py, and a step too large for one chip is reported, not raised. It guards against
CPU-only code reaching TPU programs: ops or custom calls that TPUs lack, host callbacks that cannot be
compiled, options for another platform."""

import os
import pathlib
import subprocess
import sys

import pytest

from maskformer_jax.devices import compiler_options

ROOT = pathlib.Path(__file__).resolve().parent.parent
LIBTPU = ROOT / ".venv" / "libtpu"  # scripts/test.sh installs jax's libtpu here, outside the environment


@pytest.fixture(scope="module")
def libtpu():
    if not (LIBTPU / "libtpu").is_dir():
        reason = f"libtpu is not installed in {LIBTPU} (scripts/test.sh installs it): TPU compilation not tested"
        print(reason)
        pytest.skip(reason)
    return LIBTPU


def compile_for_tpu(libtpu, *flags, batch_size=4, topology="v5e:2x2"):
    environment = dict(os.environ, PYTHONPATH=str(libtpu), JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "benchmarks.memory", "--config", "configs/tiny.py",
               f"--config.batch_size={batch_size}", "--topology", topology, *flags]
    result = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_train_and_inference_steps_compile_for_a_tpu_slice(libtpu):
    output = compile_for_tpu(libtpu, "--eval")
    assert "4 x TPU v5 lite (v5e:2x2)" in output
    lines = [line for line in output.splitlines() if "per device" in line]
    assert [line.split(",")[0] for line in lines] == ["train step", "inference step (semantic)"]
    assert all(line.endswith("of 16.0 GiB: fits") for line in lines), output


def test_the_scipy_matcher_compiles_for_a_tpu_through_its_host_callback(libtpu):
    output = compile_for_tpu(libtpu, "--config.loss.matcher=scipy")
    assert "train step, batch 4 of 64x64" in output


def test_a_step_that_does_not_fit_the_chip_is_reported_with_what_it_needs(libtpu):
    output = compile_for_tpu(libtpu, "--config.dataset.image_size=(1024, 1024)", batch_size=64, topology="v5e:1x1")
    line, = [line for line in output.splitlines() if line.startswith("train step")]
    assert "does not fit: RESOURCE_EXHAUSTED" in line and "exceeds available HBM (15.75G)" in line


def test_tpu_programs_get_no_cpu_compiler_options():
    assert compiler_options("tpu") == {} and compiler_options("gpu") == {}


def test_a_bad_topology_is_a_one_line_error():
    command = [sys.executable, "-m", "benchmarks.memory", "--config", "configs/tiny.py", "--topology", "v9x:2x2"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: --topology 'v9x:2x2': expected <chip>:<shape> with a chip of ['v4', 'v5e', 'v5p', 'v6e'], "
        "e.g. v5e:2x4 or v4:2x2x4"]
