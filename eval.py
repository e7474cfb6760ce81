"""Evaluate a checkpoint on the configured split.

    python eval.py --config configs/X.py --workdir DIR [--checkpoint PATH] [--config.key=value ...]

Loads the latest checkpoint of DIR (or PATH: a workdir, its checkpoints/ folder or one step's
folder), evaluates on config.eval.split, prints a table and writes the metrics to
DIR/eval_<split>.json. With --config.eval.save_predictions=True the predictions go to
DIR/predictions_<split>/: semantic PNGs, for panoptic a COCO panoptic PNG folder + JSON that
panopticapi's pq_compute reads, for instance the COCO results JSON (instances_results.json).
"""

import pathlib

import jax
from absl import flags

from maskformer_jax import cli
from maskformer_jax.evaluation import SUMMARY_KEYS, Evaluator
from maskformer_jax.models import build_model
from maskformer_jax.files import write_json
from maskformer_jax.training.checkpoint import checkpoint_folder


def table(result: dict, class_names) -> str:
    """The summary and per-class numbers as text."""
    lines = [" ".join(f"{key} {result[key]:.2f}" for key in SUMMARY_KEYS if key in result)]
    if "PQ" in result:
        lines += [f"{'':8}|    PQ    SQ    RQ     N", "-" * 32]
        for name, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
            lines.append(f"{name:8}| {result['PQ' + suffix]:5.1f} {result['SQ' + suffix]:5.1f} "
                         f"{result['RQ' + suffix]:5.1f} {result['n' + suffix]:5d}")
    per_class = [key for key in ("PQ", "AP") if key in result]
    width = max(len(name) for name in class_names)
    lines.append(f"{'class':{width}}    IoU    Acc" + "".join(f" {key:>6}" for key in per_class))
    for k, name in enumerate(class_names):
        row = f"{name:{width}} {result['IoU'][k]:6.2f} {result['ACC'][k]:6.2f}"
        lines.append(row + "".join(f" {result[key + '_per_class'][k]:6.2f}" for key in per_class))
    return "\n".join(lines)


def evaluate_checkpoint(config, workdir, checkpoint=None) -> dict:
    workdir = pathlib.Path(workdir)
    cli.check_config(config, training=False)
    model = build_model(config.model)
    evaluator = Evaluator(config, model)
    folder = checkpoint_folder(checkpoint or workdir)
    variables = evaluator.predictor.load(folder)
    if jax.process_index() == 0:
        print(f"evaluating {folder} on {config.dataset.name} {config.eval.split} ({config.inference.task})", flush=True)
    split = config.eval.split
    result = evaluator(variables, output_dir=workdir / f"predictions_{split}")
    if jax.process_index() == 0:
        print(table(result, evaluator.metadata.class_names), flush=True)
        workdir.mkdir(parents=True, exist_ok=True)
        write_json(workdir / f"eval_{split}.json", {"checkpoint": str(folder), "task": config.inference.task,
                                                    "class_names": list(evaluator.metadata.class_names), **result})
    return result


def main(argv):
    if FLAGS.distributed:
        jax.distributed.initialize()
    evaluate_checkpoint(_CONFIG.value, FLAGS.workdir, FLAGS.checkpoint)


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    _CONFIG = cli.define_config_flag()
    flags.DEFINE_string("workdir", None, "Run folder: its latest checkpoint is evaluated, results are written here.")
    flags.DEFINE_string("checkpoint", None, "Evaluate this checkpoint instead (a workdir, checkpoints/ or step folder).")
    flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with cluster auto-detection.")
    flags.mark_flags_as_required(["config", "workdir"])
    cli.run(main)
