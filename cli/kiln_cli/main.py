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
