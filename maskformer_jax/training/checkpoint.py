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

    def latest_step(self):
        return self.manager.latest_step()

    def save(self, step: int, state, iterator, force: bool = False) -> bool:
        """Save at the interval (or always with `force`); a step that is saved already is not saved
        again (a stop request right after an interval checkpoint). Returns whether it saved."""
        if step == self.manager.latest_step():
            return False
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data_iter=grain.checkpoint.CheckpointSave(iterator))
        return self.manager.save(step, args=args, force=force)

    def restore(self, abstract_state, iterator, step=None):
        """The state at `step` (default: the latest) placed as `abstract_state`'s shardings say;
        `iterator` is moved to where it was. None when there is no checkpoint."""
        step = self.manager.latest_step() if step is None else step
        if step is None:
            return None
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


def load_weights(path, abstract_weights):
    """{"params", "frozen"} from a checkpoint (see `checkpoint_folder`), ignoring the optimizer state
    and the step: for `config.init_from` and evaluation."""
    path = checkpoint_folder(path)
    return ocp.PyTreeCheckpointer().restore(
        path / "state",
        args=ocp.args.PyTreeRestore(item=abstract_weights, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_weights), partial_restore=True),
    )


def stored_shapes(path) -> dict:
    """{path tuple: shape} of the {"params", "frozen"} arrays stored in a checkpoint, read from its metadata."""
    metadata = ocp.PyTreeCheckpointer().metadata(checkpoint_folder(path) / "state")
    tree = getattr(getattr(metadata, "item_metadata", metadata), "tree", metadata)
    tree = {key: tree[key] for key in ("params", "frozen") if key in tree}
    return {key: tuple(leaf.shape) for key, leaf in traverse_util.flatten_dict(tree).items()}


def init_weights(path, fresh_weights, reinitialize_mismatched: bool = False):
    """Weights to fine-tune from (`config.init_from`): {"params", "frozen"} from the checkpoint at
    `path`, placed as `fresh_weights` (the freshly initialised arrays) are.

    A variable whose stored shape differs (another class or query count) is an error naming it,
    unless `reinitialize_mismatched`: then it keeps its fresh value. Returns (weights, the
    "/"-joined names of the re-initialised variables).
    """
    stored = stored_shapes(path)
    fresh = traverse_util.flatten_dict(fresh_weights)
    missing = sorted("/".join(key) for key in fresh if key not in stored)
    mismatched = {key for key, value in fresh.items() if key in stored and stored[key] != value.shape}
    names = sorted(f"{'/'.join(key)} {stored[key]} → {fresh[key].shape}" for key in mismatched)
    if missing:
        raise ValueError(f"{path}: the checkpoint lacks {len(missing)} variables of this model: {', '.join(missing[:12])}")
    if mismatched and not reinitialize_mismatched:
        raise ValueError(f"{path}: shapes differ from this model's for {', '.join(names)}; set "
                         "config.init_reinitialize_mismatched=True to initialise these afresh")
    abstract = {key: jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=value.sharding)
                for key, value in fresh.items() if key not in mismatched}
    restored = traverse_util.flatten_dict(load_weights(path, traverse_util.unflatten_dict(abstract)))
    return traverse_util.unflatten_dict({**fresh, **restored}), sorted("/".join(key) for key in mismatched)
