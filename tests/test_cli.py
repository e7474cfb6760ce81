"""The commands as a user runs them: every mistake is one line `error: ...` that names the fix, exit
status 2, no traceback, nothing written."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import tiny
from maskformer_jax import cli
from maskformer_jax.data.check import check
from maskformer_jax.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parent.parent


def command(*args, env=None):
    """Run `python <args>` in the repository; (exit status, stdout, stderr)."""
    environment = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
    result = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=environment, capture_output=True,
                            text=True, timeout=300)
    return result.returncode, result.stdout, result.stderr


def assert_one_line_error(result, *fragments):
    status, stdout, stderr = result
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert status == 2, stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-2000:]
    assert "Traceback" not in stderr + stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def write_folder_dataset(root, class_names=("road", "car", "tree"), labels=None):
    """A semantic_folder dataset: a train and a validation image of 4x5 with their labels."""
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(name + "\n" for name in class_names))
    for index, split in enumerate(("train", "validation")):
        for name, values in (labels or {f"scene{index}": np.arange(20).reshape(4, 5) % len(class_names)}).items():
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((4, 5, 3), 100, np.uint8)).save(root / "images" / split / f"{name}.png")
            if values is not None:
                Image.fromarray(np.asarray(values, np.uint8)).save(root / "labels" / split / f"{name}.png")
    return root


@pytest.mark.parametrize("flags, fragments", [
    (["--config.batchsize=4"], ["--config.batchsize: no such config key", "did you mean --config.batch_size"]),
    (["--config.model.numqueries=30"], ["did you mean --config.model.num_queries"]),
    (["--config", "configs/nonexistent.py"], ["--config configs/nonexistent.py: no such file", "configs/{ade20k_", "cityscapes_r101"]),
    (["--config.batch_size=abc"], ["--config.batch_size=abc", "invalid literal for int()"]),
    (["--config.model.dtype=float16"], ["config.model.dtype must be one of", "'float16'"]),
    (["--config", "configs/ade20k_r50.py"], ["config.dataset.root is not set", "ADEChallengeData2016"]),
    (["--config", "configs/ade20k_r50.py", "--config.dataset.root=/no/such/folder"],
     ["config.dataset.root=/no/such/folder: no such folder"]),
    (["--config", "configs/coco_panoptic_r50.py", "--config.loss.max_targets=200"],
     ["config.loss.max_targets (200) exceeds config.model.num_queries (100)"]),
])
def test_train_config_mistakes_are_one_line_and_write_nothing(tmp_path, flags, fragments):
    workdir = tmp_path / "run"
    if "root" not in " ".join(flags) and "coco" in " ".join(flags):  # a root, so that the loss check is reached
        flags = [*flags, f"--config.dataset.root={tmp_path}"]
    assert_one_line_error(command("train.py", "--workdir", workdir, *flags), *fragments)
    assert not workdir.exists()


def test_verbose_shows_the_traceback(tmp_path):
    status, _, stderr = command("train.py", "--workdir", tmp_path / "run", "--config", "configs/ade20k_r50.py",
                                "--verbose")
    assert status != 0 and "Traceback" in stderr and "config.dataset.root is not set" in stderr


def test_batch_not_divisible_by_the_devices(tmp_path):
    result = command("train.py", "--workdir", tmp_path / "run", "--config", "configs/tiny.py", "--config.batch_size=4",
                     env={"XLA_FLAGS": "--xla_force_host_platform_device_count=3"})
    assert_one_line_error(result, "config.batch_size=4 is not divisible by the 3 devices", "--config.batch_size=3")
    assert not (tmp_path / "run").exists()


def test_class_count_must_match_classes_txt_or_is_taken_from_it(tmp_path):
    root = write_folder_dataset(tmp_path / "data")
    flags = ["--config", "configs/tiny.py", "--config.dataset.name=semantic_folder", f"--config.dataset.root={root}"]
    result = command("train.py", "--workdir", tmp_path / "run", *flags, "--config.model.num_classes=7")
    assert_one_line_error(result, "config.model.num_classes is 7 but the semantic_folder data has 3 classes",
                          "--config.model.num_classes=3")
    assert not (tmp_path / "run").exists()
    config = tiny.get_config()
    config.dataset.update(name="semantic_folder", root=str(root))
    config.model.num_classes = 0
    cli.check_config(config, training=True)
    assert config.model.num_classes == config.dataset.num_classes == 3


def test_data_check_reports_every_problem_then_exits_1(tmp_path, capsys):
    labels = {"good": np.zeros((4, 5)), "no_label": None, "out_of_range": np.full((4, 5), 9),
              "also_no_label": None}
    root = write_folder_dataset(tmp_path / "data", labels=labels)
    flags = ["--config", "configs/tiny.py", "--config.dataset.name=semantic_folder", f"--config.dataset.root={root}",
             "--config.model.num_classes=0"]
    status, stdout, _ = command("-m", "maskformer_jax.data.check", *flags)
    assert status == 1, stdout
    assert "semantic_folder train: 4 examples, 3 problems" in stdout
    for name in ("no_label.png", "also_no_label.png", "out_of_range.png: label values [9]"):
        assert name in stdout
    assert "road" in stdout and "tree" in stdout  # the class table names the classes of classes.txt
    assert_one_line_error(command("-m", "maskformer_jax.data.check", *flags[:-1], "--config.model.num_classes=150"),
                          "has 3 classes")


def test_eval_and_predict_mistakes(tmp_path):
    assert_one_line_error(command("eval.py", "--config", "configs/demo.py", "--workdir", tmp_path / "empty"),
                          "no checkpoint")
    assert_one_line_error(command("predict.py", "--config", "configs/demo.py", "--checkpoint", tmp_path,
                                  "--output", tmp_path / "pictures", tmp_path / "missing.jpg"),
                          "missing.jpg: no such image or folder")
    assert_one_line_error(command("predict.py", "--config", "configs/demo.py", "--checkpoint", tmp_path,
                                  "--output", tmp_path / "pictures"), "no images")
    assert not (tmp_path / "pictures").exists()


def test_config_keys_and_check_config_in_process():
    config = tiny.get_config()
    keys = cli.flatten(config)
    assert keys["batch_size"] == 2 and "model.backbone.depths" in keys and "loss.weights.focal" in keys
    config.dataset.name = "imagenet"
    with pytest.raises(ConfigError, match="config.dataset.name must be one of"):
        cli.check_config(config, training=False)


def test_check_function_counts_missing_labels(tmp_path, capsys):
    root = write_folder_dataset(tmp_path / "data", labels={"a": np.zeros((4, 5)), "b": None})
    config = tiny.get_config()
    config.dataset.update(name="semantic_folder", root=str(root))
    config.model.num_classes = 3
    assert check(config, "train") == 1
    assert "b.png" in capsys.readouterr().out
