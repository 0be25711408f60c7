"""``landcover``: one command for the platform's everyday tasks.

    landcover train [VARIANT] [OVERRIDES...]     # Airflow DAG in-process (or AIRFLOW_URL / make airflow_ui)
    landcover train --no-airflow [OVERRIDES...]  # the same pipeline steps without Airflow
    landcover pretrain [OVERRIDES...]            # continued pretraining (the pretrain DAG in-process)
    landcover pretrain --no-airflow [OVERRIDES...]  # the same pretraining steps without Airflow
    landcover infer [run|upload] [ARGS...]       # the inference state machine, locally
    landcover promote-challenger [OVERRIDES...]  # promotion gate for the challenger, with shadow evidence
    landcover report [ARGS...]                   # the static HTML report from the ledger
    landcover bench [ARGS...]                    # the CPU inference benchmark
    landcover airflow-ui [--port N]              # Airflow standalone with its UI on 127.0.0.1
    landcover mlflow-ui [--port N]               # MLflow's UI on the project's tracking store
    landcover weights fetch [NAME] [--cache DIR] # download + verify pretrained weights (clay-v1.5)

Each subcommand is a thin shell over an existing entry point (``training.airflow_runner``,
``training.train``, ``training.pretrain``, ``setup.tools.run_local``, ``training.challenger``, ``observability.report``, ``setup.tools.bench``,
``training.airflow_ui``, ``training.models.weights``), imported only when that subcommand runs:
``landcover --help`` is instant, and an image with the inference extras alone can run ``infer``, ``report`` and ``bench``.
``landcover <subcommand> --help`` shows that entry point's own options.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

DEFAULT_VARIANT = "baseline"
INFER_ACTIONS = ("run", "upload")


def _train(argv: list[str]) -> int:
    """Train a variant: through Airflow (default) or, with ``--no-airflow``, in this process."""
    direct = "--no-airflow" in argv
    argv = [a for a in argv if a != "--no-airflow"]
    if argv and argv[0] in ("-h", "--help"):
        print(
            "usage: landcover train [VARIANT] [HYDRA_OVERRIDES...] [--run-id ID]\n"
            "       landcover train --no-airflow [HYDRA_OVERRIDES...]\n\n"
            "VARIANT is a recipe of setup/conf/training (baseline, useful, class_weighted; default "
            f"{DEFAULT_VARIANT}).\nWith Airflow (the default) the run is a DAG run: in-process, or on "
            "AIRFLOW_URL / a running `landcover airflow-ui`.\n--no-airflow runs the same steps in this "
            "process (python -m training.train)."
        )
        return 0
    variant = argv.pop(0) if argv and "=" not in argv[0] and not argv[0].startswith("-") else None
    if direct:
        from training import train

        overrides = ([f"training={variant}"] if variant else []) + argv
        sys.argv = ["landcover train --no-airflow", *overrides]  # Hydra reads its overrides from argv
        train.main()
        return 0
    from training import airflow_runner

    return airflow_runner.main([variant or DEFAULT_VARIANT, *argv])


def _pretrain(argv: list[str]) -> int:
    """Continued pretraining: the ``pretrain`` DAG in-process (default) or, with ``--no-airflow``,
    the same steps in this process."""
    direct = "--no-airflow" in argv
    argv = [a for a in argv if a != "--no-airflow"]
    if argv and argv[0] in ("-h", "--help"):
        print(
            "usage: landcover pretrain [HYDRA_OVERRIDES...] [--run-id ID] [--no-airflow]\n\n"
            "Continue pretraining the encoder with Clay's masked-autoencoder objective on unlabelled scenes\n"
            "(pretrain.input_uri, default the training split with labels ignored) and register it as an\n"
            "encoder version under <storage.registry_uri>/encoders/<pretrain.encoder_name>/.\n"
            "Settings: setup/conf/pretrain/default.yaml, e.g. pretrain.steps=100 pretrain.lr=5e-4.\n"
            "With Airflow (the default) the run is a run of the `pretrain` DAG in-process (airflow dags test);\n"
            "--no-airflow runs the same steps in this process (python -m training.pretrain run)."
        )
        return 0
    run_id = None
    if "--run-id" in argv:
        at = argv.index("--run-id")
        run_id = argv[at + 1]
        del argv[at : at + 2]
    from training import pretrain

    return pretrain.cli(argv, run_id, airflow=not direct)


def _infer(argv: list[str]) -> int:
    from setup.tools import run_local

    if not argv or argv[0] not in (*INFER_ACTIONS, "-h", "--help"):
        argv = ["run", *argv]
    return run_local.main(argv) or 0


def _promote_challenger(argv: list[str]) -> int:
    from training import challenger

    return challenger.main(argv)


def _report(argv: list[str]) -> int:
    from observability import report

    return report.main(argv) or 0


def _bench(argv: list[str]) -> int:
    from setup.tools.bench.__main__ import main

    return main(argv) or 0


def _airflow_ui(argv: list[str]) -> int:
    from training import airflow_ui

    return airflow_ui.main(argv)


def mlflow_ui_command(port: int, overrides: Sequence[str] = ()) -> list[str]:
    """``mlflow ui`` on the project's tracking store (``logging.mlflow.tracking_uri``). Started
    bare in the repo, ``mlflow ui`` would open (and create) an empty ``./mlflow.db`` instead."""
    from pathlib import Path

    from core.config import compose

    uri = str(compose(list(overrides)).logging.mlflow.tracking_uri)
    mlflow = str(Path(sys.executable).parent / "mlflow")
    return [mlflow, "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]


def _mlflow_ui(argv: list[str]) -> int:
    import os

    p = argparse.ArgumentParser(prog="landcover mlflow-ui", description=mlflow_ui_command.__doc__)
    p.add_argument("--port", type=int, default=int(os.environ.get("MLFLOW_PORT") or 5000))
    p.add_argument("--print", action="store_true", help="print the command instead of running it")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. logging.mlflow.tracking_uri=...")
    args = p.parse_args(argv)
    command = mlflow_ui_command(args.port, args.overrides)
    print(" ".join(command), flush=True)
    if not args.print:
        os.execv(command[0], command)
    return 0


def _weights(argv: list[str]) -> int:
    """``landcover weights fetch``: download a catalog weight into the cache and verify it."""
    import logging

    p = argparse.ArgumentParser(
        prog="landcover weights",
        description="Pretrained encoder weights by name (the catalog in setup/conf/weights).",
    )
    sub = p.add_subparsers(dest="action", metavar="<action>", required=True)
    f = sub.add_parser(
        "fetch",
        help="download (resumable) and verify a weight into the cache",
        description="Download a catalog weight into the cache (resuming a .part file) and check its sha256. "
        "Then train with e.g. `landcover train --no-airflow model=clay_large model.pretrained=clay-v1.5`.",
    )
    f.add_argument("name", nargs="?", default=None, help="catalog name (default: weights.default, clay-v1.5)")
    f.add_argument(
        "--cache", default=None, help="cache folder (default: weights.cache_dir, <repo>/.cache/weights)"
    )
    f.add_argument("--url", default=None, help="download from here instead (a mirror, or a file:// copy)")
    f.add_argument("--sha256", default=None, help="expected sha256 (default: the catalog's pinned one)")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    from dataclasses import replace

    from core.config import compose
    from training.data.download import DownloadError
    from training.models.weights import WeightsConfigError, fetch_weights, is_sha256_hex, weight_spec

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    cfg = compose()
    try:
        spec = weight_spec(cfg.weights, args.name)
        if args.url:
            spec = replace(spec, url=args.url)
        if args.sha256:
            if not is_sha256_hex(args.sha256):
                raise WeightsConfigError(f"--sha256 {args.sha256!r} is not a 64-digit hex digest")
            spec = replace(spec, sha256=args.sha256.lower())
        path = fetch_weights(spec, args.cache or cfg.weights.cache_dir, progress=not args.no_progress)
    except (DownloadError, WeightsConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "train": (_train, "train a variant (Airflow DAG in-process, on AIRFLOW_URL, or --no-airflow)"),
    "pretrain": (
        _pretrain,
        "continued pretraining of the encoder (masked autoencoder) -> an encoder version",
    ),
    "infer": (_infer, "run the inference state machine locally (run | upload new scenes)"),
    "promote-challenger": (
        _promote_challenger,
        "run the promotion gate for the registry's challenger, with its shadow evidence from the ledger",
    ),
    "report": (_report, "write the static HTML report (the Grafana panels' SQL on the ledger)"),
    "bench": (_bench, "CPU inference benchmark (eager fp32 vs ONNX int8, memory, cold start, cost)"),
    "airflow-ui": (_airflow_ui, "Airflow standalone with its UI on 127.0.0.1 (shares train's runs)"),
    "mlflow-ui": (_mlflow_ui, "MLflow's UI on the project's tracking store (not a stray ./mlflow.db)"),
    "weights": (_weights, "fetch and verify pretrained encoder weights (the official Clay v1.5 checkpoint)"),
}


def parser() -> argparse.ArgumentParser:
    """The top-level parser: the subcommand, then everything else for that subcommand."""
    p = argparse.ArgumentParser(
        prog="landcover",
        description="Land-cover MLOps platform: train, infer, report, bench.",
        epilog="`landcover <command> --help` shows the command's own options.",
    )
    sub = p.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser().parse_args(argv)  # prints the help or the "invalid choice" error and exits
        return 2
    handler, _ = COMMANDS[argv[0]]
    return int(handler(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
