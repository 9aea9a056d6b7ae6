"""The `kiln` command line.

Each sub-command imports its implementation lazily: `kiln validate` must work with
only the base install, and the trainer and operator never import each other.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

DEFAULT_STORAGE_VARIABLE = "KILN_DEFAULT_CHECKPOINT_STORAGE"


def _default_storage(args: argparse.Namespace) -> str | None:
    """The operator's default checkpoint storage to judge jobs by: the flag, else the operator's variable."""
    return args.default_checkpoint_storage or os.environ.get(DEFAULT_STORAGE_VARIABLE) or None


def _cmd_validate(args: argparse.Namespace) -> int:
    from kiln_api.validate_cli import validate_files

    return validate_files(args.files, out=sys.stdout, default_storage=_default_storage(args))


def _cmd_crd(args: argparse.Namespace) -> int:
    from kiln_api.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from kiln_trainer.local import run_local_cli

    return run_local_cli(args.file, output=args.output, workers=args.workers, use_ray=args.ray)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from kiln_trainer.inspect_run import inspect_cli

    return inspect_cli(args.file, args.output, sample_rows=args.sample_rows, sample_images=args.sample_images,
                       text_column=args.text_column, vocab_size=args.vocab_size)


def _cmd_predict(args: argparse.Namespace) -> int:
    from kiln_trainer.predict import predict_cli

    return predict_cli(args.model, args.data, output=args.output, device=args.device, batch_size=args.batch_size)


def _cmd_export(args: argparse.Namespace) -> int:
    from kiln_trainer.export import export_cli

    return export_cli(args.model, args.format, args.output)


def _cmd_render(args: argparse.Namespace) -> int:
    from kiln_operator.render import render_cli

    environ = dict(os.environ)
    if args.default_checkpoint_storage:
        environ[DEFAULT_STORAGE_VARIABLE] = args.default_checkpoint_storage
    return render_cli(args.file, out=sys.stdout, environ=environ)


def _cmd_operator(args: argparse.Namespace) -> int:
    from kiln_operator.main import run_operator

    return run_operator(args.operator_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiln", description="Distributed PyTorch training on Ray, on Kubernetes or locally.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train a TrainingJob manifest on this machine (its CPUs and GPUs)")
    run.add_argument("file", help="TrainingJob manifest (YAML)")
    run.add_argument("--output", default="kiln-runs", help="directory for results (default: kiln-runs)")
    run.add_argument("--workers", type=int, default=None,
                     help="override spec.workers.replicas (default: the manifest's, or as many as this machine holds)")
    run.add_argument("--ray", action="store_true",
                     help="train through a local Ray cluster even with one training worker (which otherwise trains in this process)")
    run.set_defaults(func=_cmd_run)

    inspect = sub.add_parser("inspect", help="analyse a TrainingJob's data before training (columns, classes, splits, warnings)")
    inspect.add_argument("file", help="TrainingJob manifest (YAML)")
    inspect.add_argument("--output", metavar="DIR", help="also write DIR/inspect.json and DIR/inspect.png (histograms)")
    inspect.add_argument("--sample-rows", type=int, default=None,
                         help="analyse distributions on a uniform sample of this many rows of larger tables (default: 100000)")
    inspect.add_argument("--sample-images", type=int, default=None,
                         help="decode at most this many images for sizes and channel means (default: 500)")
    inspect.add_argument("--text-column", metavar="COLUMN",
                         help="analyse this column as text (default: spec.data.text.column of a format text job)")
    inspect.add_argument("--vocab-size", type=int, default=None,
                         help="vocabulary size for text coverage (default: spec.data.text.vocabSize, else 10000)")
    inspect.set_defaults(func=_cmd_inspect)

    predict = sub.add_parser("predict", help="predict with a trained model.pt on new data (CSV, parquet, images)")
    predict.add_argument("model", help="the model.pt a run wrote (a path, pvc://, or s3:// with kiln[s3])")
    predict.add_argument("data", help="a CSV/parquet file (table, sequence and text models) or an image file or folder "
                         "(a path, pvc://, or s3:// with kiln[s3])")
    predict.add_argument("--output", metavar="FILE", help="write the predictions here (.csv, or .parquet); default: CSV on stdout")
    predict.add_argument("--device", default="cpu", help="torch device to run on (default: cpu; e.g. cuda, cuda:1)")
    predict.add_argument("--batch-size", type=int, default=1024, help="rows per forward pass (default: 1024)")
    predict.set_defaults(func=_cmd_predict)

    export = sub.add_parser("export", help="export a trained model.pt's network to ONNX or TorchScript")
    export.add_argument("model", help="the model.pt a run wrote")
    export.add_argument("--format", required=True, choices=["onnx", "torchscript"], help="the export format")
    export.add_argument("--output", metavar="FILE",
                        help="default: beside MODEL (model.onnx, model.torchscript.pt); the preprocessing goes to FILE.kiln.json")
    export.set_defaults(func=_cmd_export)

    validate = sub.add_parser("validate", help="validate manifests as the API server and the operator would")
    validate.add_argument("files", nargs="+", help="TrainingJob manifests (YAML, multi-document allowed)")
    validate.add_argument("--default-checkpoint-storage", metavar="URL",
                          help=f"the operator's default storage for jobs without one (default: ${DEFAULT_STORAGE_VARIABLE})")
    validate.set_defaults(func=_cmd_validate)

    crd = sub.add_parser("crd", help="print the TrainingJob CustomResourceDefinition")
    crd.set_defaults(func=_cmd_crd)

    render = sub.add_parser("render", help="print every Kubernetes object the operator would create for a manifest")
    render.add_argument("file", help="TrainingJob manifest (YAML)")
    render.add_argument("--default-checkpoint-storage", metavar="URL",
                        help=f"the operator's default storage for jobs without one (default: ${DEFAULT_STORAGE_VARIABLE})")
    render.set_defaults(func=_cmd_render)

    operator = sub.add_parser("operator", help="run the operator (kopf) against the current kubeconfig", add_help=False)
    operator.add_argument("operator_args", nargs=argparse.REMAINDER)
    operator.set_defaults(func=_cmd_operator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["operator"]:
        # argparse's REMAINDER does not capture a first argument that starts with "-", so
        # `kiln operator --peering kiln` would be refused: pass everything on as-is.
        argv = ["operator", "--", *argv[1:]] if len(argv) > 1 else argv
    args = build_parser().parse_args(argv)
    if getattr(args, "operator_args", None) and args.operator_args[0] == "--":
        args.operator_args = args.operator_args[1:]
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
