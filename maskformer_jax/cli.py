"""What the commands (train.py, eval.py, predict.py, data.check) share: a --config flag whose file
and override keys are checked before anything runs, a check of the config's values and dataset, and
errors a person can act on.

A failure the user fixes (errors.ConfigError, errors.DataError, a missing file, a bad flag) prints
one line, `error: ...`, on stderr and exits with status 2; `--verbose` shows the traceback instead.
"""

import difflib
import importlib.util
import pathlib
import sys

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from maskformer_jax.errors import ConfigError, DataError

USER_ERRORS = (ConfigError, DataError, FileNotFoundError)
# What config.dataset.root holds, for the datasets that read one.
DATASET_ROOTS = {
    "ade20k": "the folder that holds ADEChallengeData2016/",
    "coco_panoptic": "the COCO folder with train2017/, val2017/ and annotations/",
    "semantic_folder": "the folder with images/, labels/ and classes.txt (docs/own_data.md)",
    "coco_stuff_10k": "the coco_stuff_10k folder with images_detectron2/ and annotations_detectron2/",
    "ade20k_full": "the ADE20K_2021_17_01 folder with images_detectron2/ and annotations_detectron2/",
    "cityscapes": "the cityscapes folder with leftImg8bit/ and gtFine/",
    "mapillary_vistas": "the mapillary_vistas folder with training/ and validation/",
    "ade20k_panoptic": "the folder that holds ADEChallengeData2016/ with ade20k_panoptic_{train,val}",
}


def fail(message: str):
    """Print `error: message` as one line on stderr and exit with status 2."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr, flush=True)
    sys.exit(2)


def _verbose() -> bool:
    return any(arg in ("--verbose", "-verbose", "--verbose=true", "--verbose=True") for arg in sys.argv)


def _config_arguments(argv):
    """(the --config file or None, [override keys]) as written on the command line."""
    path, keys = None, []
    for index, arg in enumerate(argv):
        if arg in ("--config", "-config") and index + 1 < len(argv):
            path = argv[index + 1]
        elif arg.startswith(("--config=", "-config=")):
            path = arg.split("=", 1)[1]
        elif arg.startswith(("--config.", "-config.")):
            keys.append(arg.split("config.", 1)[1].split("=", 1)[0])
    return path, keys


def flatten(config, prefix: str = "") -> dict:
    """{"a.b": value} of every leaf of a config (or its JSON dict): the keys --config.<key>=<value> sets."""
    flat = {}
    for key, value in config.items():
        flat.update(flatten(value, f"{prefix}{key}.") if isinstance(value, (dict, ml_collections.ConfigDict))
                    else {prefix + key: value})
    return flat


def _load_config(path: str, given: bool) -> ml_collections.ConfigDict:
    """The config that a config file's get_config() returns; a missing or broken file is a ConfigError."""
    file = pathlib.Path(path.split(":", 1)[0])
    if not file.is_file():
        configs = sorted(p.stem for p in (pathlib.Path(__file__).parents[1] / "configs").glob("*.py")
                         if p.stem not in ("__init__", "base"))
        raise ConfigError(f"--config {path}: no such file" + (f"; the configs are configs/{{{','.join(configs)}}}.py"
                                                               if given and configs else ""))
    spec = importlib.util.spec_from_file_location(f"_checked_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        return module.get_config()
    except Exception as error:  # the file is the user's: its own error, in one line
        raise ConfigError(f"--config {path}: loading it failed: {type(error).__name__}: {error}") from error


def define_config_flag(default: str | None = None) -> flags.FlagHolder:
    """config_flags' --config (locked: no new keys), after checking the file and that every
    --config.<key> override names an existing key (else one line with the closest names)."""
    path, keys = _config_arguments(sys.argv[1:])
    try:
        if path is not None or default is not None:
            known = list(flatten(_load_config(path or default, given=path is not None)))
            for key in keys:
                if key not in known:
                    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
                    close = close or [k for k in known if k.split(".")[-1] == key.split(".")[-1]][:3]
                    hint = f"did you mean {' or '.join('--config.' + k for k in close)}?" if close else \
                        f"the keys are in {path or default} and configs/base.py"
                    raise ConfigError(f"--config.{key}: no such config key; {hint}")
        return config_flags.DEFINE_config_file("config", default, "Experiment config file (configs/*.py).",
                                               lock_config=True)
    except ConfigError as error:
        if _verbose():
            raise
        fail(error)


def run(main, arguments: bool = False):
    """absl's app.run with one-line errors: bad flags and USER_ERRORS from `main` print
    `error: ...` and exit with status 2 (--verbose: the traceback). Logs below WARNING are off.
    Positional arguments after the flags are an error unless `arguments` (they reach main's argv)."""
    flags.DEFINE_bool("verbose", False, "Show the traceback of an error instead of its one-line message.")

    def parse(argv):
        try:
            return flags.FLAGS(argv)
        except flags.Error as error:
            fail(error)

    def guarded(argv):
        logging.set_verbosity(logging.WARNING)  # orbax and grain log every save, jax every backend probe, at INFO
        try:
            if len(argv) > 1 and not arguments:
                raise ConfigError(f"unexpected arguments {' '.join(argv[1:])}; flags are --name=value")
            return main(argv)
        except USER_ERRORS as error:
            if flags.FLAGS.verbose:
                raise
            fail(error)

    app.run(guarded, flags_parser=parse)


def check_config(config: ml_collections.ConfigDict, training: bool):
    """Raise a ConfigError or DataError for the first config value that cannot work, before any work
    or file is written: the model, loss, optimizer and inference keys, the batch against the
    devices, the dataset's root and its class count. A config.model.num_classes of 0 is set to the
    dataset's class count (a semantic_folder's classes.txt)."""
    from maskformer_jax import losses, predictor  # the model stack is imported when a command runs
    import jax

    from maskformer_jax.data import pipeline, transforms
    from maskformer_jax.data.metadata import dataset_metadata
    from maskformer_jax.models import build_model
    from maskformer_jax.training.optimizer import build_optimizer

    dataset = config.dataset
    if dataset.name not in pipeline.DATASETS:
        raise ConfigError(f"config.dataset.name must be one of {pipeline.DATASETS}, got {dataset.name!r}")
    if dataset.name in DATASET_ROOTS:
        if not dataset.root:
            raise ConfigError(f"config.dataset.root is not set: pass --config.dataset.root=DIR, "
                              f"{DATASET_ROOTS[dataset.name]}")
        if not pathlib.Path(dataset.root).is_dir():
            raise ConfigError(f"config.dataset.root={dataset.root}: no such folder; it should be "
                              f"{DATASET_ROOTS[dataset.name]}")
    if dataset.name == "tfds" and not dataset.tfds_name:
        raise ConfigError("config.dataset.tfds_name is not set: pass e.g. --config.dataset.tfds_name=ade20k_semantic")
    if dataset.name != "tfds":  # TFDS names its classes only once the builder is read
        count = len(dataset_metadata(dataset).class_names)
        if config.model.num_classes == 0:
            config.model.num_classes = count
        elif config.model.num_classes != count:
            raise ConfigError(f"config.model.num_classes is {config.model.num_classes} but the {dataset.name} "
                              f"data has {count} classes; pass --config.model.num_classes={count} (or 0 to take "
                              "the dataset's count)")
    build_model(config.model)
    predictor.validate(config)
    if training:
        losses.validate(config)
        build_optimizer(config)
        transforms.padding_absent(dataset)
        devices = jax.device_count()
        if config.batch_size % devices:
            raise ConfigError(
                f"config.batch_size={config.batch_size} is not divisible by the {devices} devices "
                f"({jax.process_count()} processes × {jax.local_device_count()}); pass a multiple of {devices}, "
                f"e.g. --config.batch_size={max(devices, config.batch_size // devices * devices)}")
