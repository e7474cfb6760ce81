"""The loss over a batch split across 8 CPU devices equals the single-device loss."""

import json
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).with_name("multidevice_loss.py")


@pytest.fixture(scope="module")
def report():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=600,
                            cwd=SCRIPT.parent.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("solver", ["jax", "scipy"])
def test_loss_on_eight_devices_equals_one_device(report, solver):
    assert report["devices"] == 8
    single, sharded = report[solver]["single"], report[solver]["sharded"]
    assert single["num_masks"] == sharded["num_masks"] == 26
    for name, value in single.items():
        assert sharded[name] == pytest.approx(value, rel=1e-6, abs=1e-7), name


def test_scipy_matcher_runs_once_per_device_on_its_shard(report):
    # 8 devices, each with 1 image of the 8: eight callbacks of batch 1, none with the global batch.
    assert report["scipy"]["callback_batch_sizes"] == [1] * 8


def test_jax_solver_works_inside_shard_map(report):
    assert report["shard_map_solver_equal"]
