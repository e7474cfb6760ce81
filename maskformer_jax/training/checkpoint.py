"""Checkpoints with orbax: the TrainState and every process's data-iterator state, saved
asynchronously and atomically (orbax writes to a temporary folder and renames it when complete).

Layout: <workdir>/checkpoints/<step>/{state, data_iter}. A run restarted with the same workdir
resumes from the latest complete step, data iterator included.
"""

import pathlib

import grain
import jax
import orbax.checkpoint as ocp
from flax import traverse_util

from maskformer_jax.errors import ConfigError


def _key_name(key) -> str:
    """One step of a jax key path as orbax names it: a dict key, a sequence index or a field name."""
    for attribute in ("key", "idx", "name"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _arrays(tree, prefix=()) -> dict:
    """{"a/b/c": (shape, dtype name)} of the arrays of a pytree: abstract arrays or orbax's stored
    metadata (nested dicts and lists whose leaves have a shape and a dtype)."""
    if hasattr(tree, "shape") and hasattr(tree, "dtype"):
        return {"/".join(prefix): (tuple(tree.shape), str(tree.dtype))}
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _arrays(value, prefix + (str(key),)).items()}
    if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
        return {k: v for index, value in enumerate(tree) for k, v in _arrays(value, prefix + (str(index),)).items()}
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(prefix + tuple(map(_key_name, path))): (tuple(leaf.shape), str(leaf.dtype)) for path, leaf in leaves}


def _stored_arrays(folder) -> dict:
    """`_arrays` of a checkpoint step's state, read from its metadata (no array is loaded)."""
    metadata = ocp.PyTreeCheckpointHandler().metadata(pathlib.Path(folder) / "state")
    return _arrays(getattr(metadata, "tree", metadata))


def check_fits(folder, abstract, hint: str):
    """Raise a ConfigError naming every array of the checkpoint `folder` (one step's) whose shape or
    dtype differs from `abstract`'s, and the arrays only one of them has, before orbax reads it.
    Only the top-level entries of `abstract` are compared (e.g. {"params", "frozen"} for weights)."""
    wanted = _arrays(abstract)
    top = {name.split("/")[0] for name in wanted}
    stored = {name: value for name, value in _stored_arrays(folder).items() if name.split("/")[0] in top}
    differ = [f"{name} {stored[name][0]} {stored[name][1]} stored, {wanted[name][0]} {wanted[name][1]} here"
              for name in sorted(wanted) if name in stored and stored[name] != wanted[name]]
    missing = sorted(set(wanted) - set(stored))
    extra = sorted(set(stored) - set(wanted))
    if not (differ or missing or extra):
        return
    parts = []
    if differ:
        optimizer = [line for line in differ if line.startswith("opt_state/")]
        if len(optimizer) < len(differ):  # the weights say it; their optimizer moments follow them
            differ = [line for line in differ if not line.startswith("opt_state/")]
        parts.append(f"{_arrays_count(len(differ))} {'differs' if len(differ) == 1 else 'differ'}: " + "; ".join(differ)
                     + (f" (and {len(optimizer)} optimizer-state arrays)" if optimizer and optimizer != differ else ""))
    for label, names in (("missing from the checkpoint", missing), ("not in this config", extra)):
        if names:
            parts.append(f"{_arrays_count(len(names))} {label} ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
    raise ConfigError(f"{folder} does not fit this config: " + "; ".join(parts) + f". {hint}")


def _arrays_count(count: int) -> str:
    return f"{count} array" + ("s" if count != 1 else "")


def with_shardings(abstract, shardings):
    """Attach target shardings to an abstract pytree (restore places every array where it belongs)."""
    return jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                        abstract, shardings)


class Checkpointer:
    """Saves every `every` steps (and when forced), keeps the last `keep`."""

    def __init__(self, workdir, every: int, keep: int):
        self.manager = ocp.CheckpointManager(
            pathlib.Path(workdir).absolute() / "checkpoints",
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every, create=True),
            item_names=("state", "data_iter"),
        )

    def reached_preemption(self, step: int) -> bool:
        """Whether the cluster announced a preemption (orbax's multi-host signal) that this step should save for."""
        return self.manager.reached_preemption(step)

    def save(self, step: int, state, iterator, force: bool = False) -> bool:
        """Save at the interval (or always with `force`); a step that is saved already is not saved
        again (a stop request right after an interval checkpoint). Returns whether it saved."""
        if step == self.manager.latest_step():
            return False
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data_iter=grain.checkpoint.CheckpointSave(iterator))
        return self.manager.save(step, args=args, force=force)

    def restore(self, abstract_state, iterator, step=None):
        """The state at `step` (default: the latest) placed as `abstract_state`'s shardings say;
        `iterator` is moved to where it was. None when there is no checkpoint. A checkpoint of
        another model (shapes, dtypes or arrays differ) is a ConfigError that lists the differences."""
        step = self.manager.latest_step() if step is None else step
        if step is None:
            return None
        workdir = self.manager.directory.parent
        check_fits(self.manager.directory / str(step), abstract_state,
                   f"Resume with the config it was saved with ({workdir / 'config.json'}), or train in a new "
                   f"workdir with --config.init_from={workdir} (and --config.init_reinitialize_mismatched=True "
                   "to initialise the differing weights afresh)")
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data_iter=grain.checkpoint.CheckpointRestore(iterator)
        )
        return self.manager.restore(step, args=args).state

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def checkpoint_folder(path) -> pathlib.Path:
    """One step's folder from a workdir, its checkpoints/ folder (the latest step) or the step folder."""
    path = pathlib.Path(path).absolute()
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if (path / "state").is_dir():
        return path
    steps = sorted((int(p.name) for p in path.iterdir() if p.name.isdigit()), reverse=True) if path.is_dir() else []
    if not steps:
        raise FileNotFoundError(f"{path}: no checkpoint (expected <step>/state inside)")
    return path / str(steps[0])


def load_weights(path, abstract_weights, check: bool = True):
    """{"params", "frozen"} from a checkpoint (see `checkpoint_folder`), ignoring the optimizer state
    and the step: for `config.init_from` and evaluation. With `check`, weights of another model are a
    ConfigError that lists the differences."""
    path = checkpoint_folder(path)
    if check:
        check_fits(path, abstract_weights, "Use the config it was trained with (config.json in its workdir)")
    return ocp.PyTreeCheckpointer().restore(
        path / "state",
        args=ocp.args.PyTreeRestore(item=abstract_weights, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_weights), partial_restore=True),
    )


def init_weights(path, fresh_weights, reinitialize_mismatched: bool = False):
    """Weights to fine-tune from (`config.init_from`): {"params", "frozen"} from the checkpoint at
    `path`, placed as `fresh_weights` (the freshly initialised arrays) are.

    A variable whose stored shape differs (another class or query count) is an error naming it,
    unless `reinitialize_mismatched`: then it keeps its fresh value. Returns (weights, the
    "/"-joined names of the re-initialised variables).
    """
    stored = {name: shape for name, (shape, _) in _stored_arrays(checkpoint_folder(path)).items()}
    fresh = {tuple(name.split("/")): value for name, value in traverse_util.flatten_dict(fresh_weights, sep="/").items()}
    missing = sorted("/".join(key) for key in fresh if "/".join(key) not in stored)
    mismatched = {key for key, value in fresh.items() if "/".join(key) in stored and stored["/".join(key)] != value.shape}
    names = sorted(f"{'/'.join(key)} {stored['/'.join(key)]} → {fresh[key].shape}" for key in mismatched)
    if missing:
        raise ConfigError(f"{path}: the checkpoint lacks {len(missing)} variables of this model: {', '.join(missing[:12])}")
    if mismatched and not reinitialize_mismatched:
        raise ConfigError(f"{path}: shapes differ from this model's for {', '.join(names)}; set "
                         "config.init_reinitialize_mismatched=True to initialise these afresh")
    abstract = {key: jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=value.sharding)
                for key, value in fresh.items() if key not in mismatched}
    restored = traverse_util.flatten_dict(load_weights(path, traverse_util.unflatten_dict(abstract), check=False))
    return traverse_util.unflatten_dict({**fresh, **restored}), sorted("/".join(key) for key in mismatched)
