"""The ``landcover`` console script: installed, lists its subcommands, fast, and each subcommand
delegates to its entry point with the arguments it was given."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import REPO_ROOT
from setup import cli

SUBCOMMANDS = (
    "train",
    "pretrain",
    "weights",
    "infer",
    "promote-challenger",
    "report",
    "bench",
    "airflow-ui",
    "mlflow-ui",
)


def test_console_script_is_installed_and_lists_the_subcommands() -> None:
    script = Path(sys.executable).parent / "landcover"
    assert script.exists() or shutil.which("landcover"), "pip install -e . installs [project.scripts]"
    proc = subprocess.run(
        [str(script if script.exists() else "landcover"), "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for name in SUBCOMMANDS:
        assert name in proc.stdout


def test_help_imports_no_heavy_library() -> None:
    code = (
        "import sys; from setup import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'pytorch_lightning', 'airflow', 'mlflow', 'hydra', 'rasterio') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_unknown_subcommand_is_refused(capsys) -> None:
    with pytest.raises(SystemExit) as err:
        cli.main(["nope"])
    assert err.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def _record(monkeypatch, module: str, attr: str) -> list[list[str]]:
    import importlib

    calls: list[list[str]] = []
    monkeypatch.setattr(
        importlib.import_module(module), attr, lambda argv=None: calls.append(list(argv)) or 0
    )
    return calls


def test_train_delegates_to_the_airflow_runner(monkeypatch) -> None:
    calls = _record(monkeypatch, "training.airflow_runner", "main")
    assert cli.main(["train", "training.epochs=3"]) == 0
    assert cli.main(["train", "useful", "training.epochs=3", "--run-id", "r1"]) == 0
    assert calls == [["baseline", "training.epochs=3"], ["useful", "training.epochs=3", "--run-id", "r1"]]


def test_train_without_airflow_delegates_to_the_hydra_entry_point(monkeypatch) -> None:
    from training import train

    seen: list[list[str]] = []
    monkeypatch.setattr(train, "main", lambda: seen.append(list(sys.argv[1:])))
    monkeypatch.setattr(sys, "argv", ["landcover"])
    assert cli.main(["train", "--no-airflow", "useful", "training.epochs=1"]) == 0
    assert seen == [["training=useful", "training.epochs=1"]]


def test_infer_report_bench_delegate(monkeypatch) -> None:
    infer = _record(monkeypatch, "setup.tools.run_local", "main")
    report = _record(monkeypatch, "observability.report", "main")
    bench = _record(monkeypatch, "setup.tools.bench.__main__", "main")
    cli.main(["infer", "--ledger-url", "sqlite:///x.db"])
    cli.main(["infer", "upload", "--scenes", "2"])
    cli.main(["report", "--out", "r.html"])
    cli.main(["bench", "--out", "b.json"])
    assert infer == [["run", "--ledger-url", "sqlite:///x.db"], ["upload", "--scenes", "2"]]
    assert report == [["--out", "r.html"]]
    assert bench == [["--out", "b.json"]]


@pytest.mark.parametrize(
    ("target", "command"),
    [
        ("train_baseline", "landcover train baseline"),
        ("train", "landcover train --no-airflow"),
        ("run_inference", "landcover infer run"),
        ("report", "landcover report"),
        ("promote_challenger", "landcover promote-challenger"),
        ("bench", "landcover bench"),
        ("airflow_ui", "landcover airflow-ui"),
    ],
)
def test_makefile_targets_call_the_cli(target: str, command: str) -> None:
    if not shutil.which("make"):
        pytest.fail("make is not installed")
    # -n: print the commands without running them; the stamp is up to date, so setup_env is a no-op.
    proc = subprocess.run(
        ["make", "-n", "--no-print-directory", target, "STAMP=/dev/null"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert command in proc.stdout, proc.stdout


def test_mlflow_ui_opens_the_projects_store(tmp_path, monkeypatch) -> None:
    from core.config import compose

    monkeypatch.setenv("LANDCOVER_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    command = cli.mlflow_ui_command(5123)
    store = command[command.index("--backend-store-uri") + 1]
    assert store == compose().logging.mlflow.tracking_uri
    assert store.startswith(f"sqlite:///{tmp_path}/")  # never a bare ./mlflow.db
    assert command[-2:] == ["--port", "5123"]
