"""Train MaskFormer.

    python train.py --workdir DIR [--config configs/X.py] [--config.key=value ...]

Without --config it trains configs/demo.py: a small MaskFormer on the built-in synthetic set.
Restarting with the same workdir resumes from the last checkpoint, data iterator included.
Multi-host: pass --distributed (cluster auto-detection: TPU pods, SLURM, Open MPI) or
--coordinator_address, --num_processes and --process_id.
"""

import json
import pathlib
import signal
import time

import jax
import ml_collections
from absl import flags

from maskformer_jax import cli
from maskformer_jax.errors import ConfigError
from maskformer_jax.data.pipeline import train_pipeline
from maskformer_jax.evaluation import SUMMARY_KEYS, Evaluator
from maskformer_jax.models import build_model
from maskformer_jax.losses import loss_terms
from maskformer_jax.files import write_text
from maskformer_jax.progress import Progress
from maskformer_jax.training.checkpoint import Checkpointer, init_weights, with_shardings
from maskformer_jax.training.optimizer import build_optimizer
from maskformer_jax.devices import make_mesh
from maskformer_jax.training.state import create_train_state, init_train_state, state_sharding
from maskformer_jax.training.step import global_batch, jit_train_step

DEMO_CONFIG = pathlib.Path(__file__).resolve().parent / "configs" / "demo.py"


def _logged_step(row: str) -> float:
    """The step of a metrics.jsonl row; infinity for a row a killed run left half written."""
    try:
        return json.loads(row)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


class Logger:
    """Console lines (and a progress bar on a terminal), TensorBoard events and JSON lines; process 0 only."""

    def __init__(self, workdir: pathlib.Path, total_steps: int, batch_size: int, loss_terms, start_step: int = 0):
        """Rates and ETA count from `start_step`; rows of metrics.jsonl after it (logged by a run that
        stopped before its next checkpoint) are dropped, so that a resumed run logs each step once.
        The console shows the last layer's `loss_terms` (losses.loss_terms)."""
        self.progress = Progress(total_steps, start_step)
        self.active, self.batch_size, self.loss_terms = self.progress.active, batch_size, loss_terms
        if self.active:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(workdir / "tensorboard"))
            path = workdir / "metrics.jsonl"
            if path.exists():
                rows = [row for row in path.read_text().splitlines() if _logged_step(row) <= start_step]
                write_text(path, "".join(row + "\n" for row in rows))
            self.jsonl = open(path, "a")

    def scalars(self, step: int, values: dict, prefix: str = "train", input_wait: float = 0.0):
        """Log one row; for "train", `input_wait` is the seconds spent waiting for batches since the last row."""
        if not self.active:
            return
        if prefix == "train":  # throughput over the last interval
            steps = step - self.progress.marked_done
            rate = self.progress.rate()
            values = dict(values, images_per_second=rate * self.batch_size, input_wait_ms=1e3 * input_wait / max(steps, 1))
        for key, value in values.items():
            self.writer.add_scalar(f"{prefix}/{key}", value, step)
        self.jsonl.write(json.dumps({"step": step, "split": prefix, **values}) + "\n")
        self.jsonl.flush()
        if prefix == "train":
            terms = " ".join(f"{name} {values[f'loss_{name}']:.3f}" for name in self.loss_terms)
            line = (f"step {step}/{self.progress.total} | loss {values['loss']:.4f} ({terms}) | "
                    f"lr {values['learning_rate']:.2e} | {values['images_per_second']:.1f} img/s | input wait "
                    f"{values['input_wait_ms']:.0f} ms/step | ETA {self.progress.eta(rate)}")
            if values.get("nonfinite_total"):
                line += f" | {int(values['nonfinite_total'])} non-finite updates skipped"
        else:
            line = f"step {step} | {prefix}: " + " ".join(f"{k} {v:.2f}" for k, v in values.items())
        self.progress.report(line)

    def info(self, message: str):
        self.progress.report(message)

    def close(self):
        if self.active:
            self.writer.close()
            self.jsonl.close()


def use_compilation_cache(setting: str, workdir: pathlib.Path):
    """Point jax's persistent compilation cache at `config.compilation_cache_dir` (see configs/base.py)."""
    if setting == "none":
        jax.config.update("jax_enable_compilation_cache", False)
        return
    jax.config.update("jax_compilation_cache_dir",
                      setting or jax.config.jax_compilation_cache_dir or str(workdir / "compilation_cache"))


def write_config(workdir: pathlib.Path, config: ml_collections.ConfigDict, step: int, log):
    """<workdir>/config.json: the resolved config. A resumed run whose config differs from the one
    there keeps it (it describes the checkpoints) and writes its own to config_resumed_<step>.json."""
    text = config.to_json_best_effort(indent=2)
    path = workdir / "config.json"
    if step > 0 and path.exists() and path.read_text() != text:
        old, new = cli.flatten(json.loads(path.read_text())), cli.flatten(json.loads(text))
        changed = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))
        path = workdir / f"config_resumed_{step}.json"
        log(f"the config differs from config.json in {', '.join(changed)}; config.json is kept, this run's "
            f"config is written to {path.name}")
    write_text(path, text)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
    """Train for config.num_steps (resuming from workdir if it has a checkpoint); returns the last metrics.

    The config, the dataset and a checkpoint to resume from are checked before anything is written
    (errors.ConfigError / DataError that name the fix)."""
    workdir = pathlib.Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"--workdir {workdir}: exists and is not a folder")
    cli.check_config(config, training=True)
    model, optimizer, mesh = build_model(config.model), build_optimizer(config), make_mesh()
    rng = jax.random.PRNGKey(config.seed)

    def create():
        return create_train_state(config, model, optimizer, rng)

    abstract = jax.eval_shape(create)
    sharding = state_sharding(abstract, mesh, config.fsdp)
    iterator = iter(train_pipeline(config))
    workdir.mkdir(parents=True, exist_ok=True)
    use_compilation_cache(config.compilation_cache_dir, workdir.absolute())
    checkpointer = Checkpointer(workdir, config.checkpoint_every, config.checkpoints_to_keep)
    state = checkpointer.restore(with_shardings(abstract, sharding), iterator)
    reinitialised = []
    if state is None:
        state = init_train_state(create, sharding)
        # The initialising program is not needed again and holds ~170 MB of host memory at R50 or
        # Swin-T size; nothing else of this process has been compiled yet, so every cache can go.
        jax.clear_caches()
        if config.init_from:
            weights, reinitialised = init_weights(config.init_from, state.variables, config.init_reinitialize_mismatched)
            state = state.replace(**weights)
    if jax.process_index() == 0:
        write_config(workdir, config, int(state.step), print)
    logger = Logger(workdir, config.num_steps, config.batch_size, loss_terms(config.loss), int(state.step))
    if int(state.step) > 0:
        logger.info(f"resumed from step {int(state.step)}")
    elif config.init_from:
        logger.info(f"initialised the weights from {config.init_from}"
                    + (f"; initialised afresh (shapes differ): {', '.join(reinitialised)}" if reinitialised else ""))

    stop = {"requested": False}

    def request_stop(signum, frame):
        """SIGTERM or Ctrl-C: save at the end of this step and exit; a second Ctrl-C aborts at once."""
        if stop["requested"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop["requested"] = True
        logger.info("stop requested: saving at the end of this step (Ctrl-C again aborts without saving)")

    handlers = {number: signal.signal(number, request_stop) for number in (signal.SIGTERM, signal.SIGINT)}
    train_step = jit_train_step(config, model, optimizer, mesh, sharding)
    evaluator = Evaluator(config, model) if config.eval_every else None
    step, metrics, pending, compiled, input_wait = int(state.step), {}, None, {}, 0.0
    try:
        with jax.set_mesh(mesh):
            while step < config.num_steps:
                start = time.perf_counter()
                batch = global_batch(next(iterator), mesh)
                input_wait += time.perf_counter() - start
                canvas = batch["image"].shape[1:3]
                if canvas not in compiled:  # one compiled step per canvas (two for the DETR recipe)
                    logger.info(f"compiling the train step for {canvas[0]}x{canvas[1]} batches ...")
                    start = time.perf_counter()
                    compiled[canvas] = train_step.lower(state, batch).compile()
                    logger.info(f"compiled in {time.perf_counter() - start:.1f} s")
                    logger.progress.exclude(time.perf_counter() - start)  # rates leave compilation out
                state, step_metrics = compiled[canvas](state, batch)
                step += 1
                if pending is not None:  # look at the previous step while this one runs
                    in_a_row = int(pending["nonfinite_in_a_row"])
                    if in_a_row >= config.optimizer.max_consecutive_nonfinite:
                        raise FloatingPointError(
                            f"stopping at step {step - 1}: {in_a_row} updates in a row had non-finite gradients "
                            "and were skipped; lower the learning rate or check the data"
                        )
                pending = step_metrics
                logger.progress.advance()
                logger.progress.bar()
                if step % config.log_every == 0 or step == config.num_steps:
                    metrics = {key: float(value) for key, value in jax.device_get(step_metrics).items()}
                    logger.scalars(step, metrics, input_wait=input_wait)
                    input_wait = 0.0
                checkpointer.save(step, state, iterator, force=step == config.num_steps)
                if config.eval_every and (step % config.eval_every == 0 or step == config.num_steps):
                    result = evaluator(state.variables, log=logger.info)
                    logger.scalars(step, {key: result[key] for key in SUMMARY_KEYS if key in result}, prefix="eval")
                if stop["requested"] or checkpointer.reached_preemption(step):
                    checkpointer.save(step, state, iterator, force=True)
                    logger.info(f"stop requested: saved step {step}")
                    break
    finally:
        try:
            checkpointer.close()
        finally:  # grain's worker processes and shared memory go on every exit path
            for number, handler in handlers.items():  # the caller's handlers again (a notebook, a test)
                signal.signal(number, handler)
            logger.close()
            if hasattr(iterator, "close"):
                iterator.close()
    return {"step": step, "state": state, **metrics}


def main(argv):
    if FLAGS.coordinator_address:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    elif FLAGS.distributed:
        jax.distributed.initialize()
    train_and_evaluate(_CONFIG.value, FLAGS.workdir)


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    _CONFIG = cli.define_config_flag(str(DEMO_CONFIG))
    flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and the resolved config.")
    flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with cluster auto-detection.")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for explicit multi-process runs.")
    flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
    flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
    flags.mark_flag_as_required("workdir")
    cli.run(main)
