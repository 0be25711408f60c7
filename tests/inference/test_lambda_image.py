"""The Lambda image's build context holds the handlers' code and none of the tools (no Docker here:
the context is :func:`setup.tools.bench.image.shipped_files`: inference/Dockerfile.dockerignore read
the way BuildKit reads it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from setup.tools.bench.image import shipped_files

REPO_ROOT = Path(__file__).resolve().parents[2]


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_tools_and_training_stay_out_of_the_lambda_image() -> None:
    shipped = shipped_files()
    assert shipped, "nothing would be sent to the build"
    for tool in (
        "setup/tools/bench/__main__.py",
        "setup/tools/run_local.py",
        "setup/cli.py",
        "training/pipeline.py",
    ):
        assert tool in _tracked() and tool not in shipped, tool
    assert not [
        p for p in shipped if p.startswith(("training/", "setup/", "observability/", "inference/tf/"))
    ]
    assert {p.split("/", 1)[0] for p in shipped if p.endswith(".py")} == {"core", "inference"}


def test_every_handler_module_is_listed() -> None:
    from inference import handlers

    found = {p.stem for p in (REPO_ROOT / "inference" / "handlers").glob("*.py") if p.stem != "__init__"}
    assert {m.rsplit(".", 1)[1] for m in handlers.HANDLER_MODULES} == found


def test_the_handlers_import_from_what_the_image_ships(tmp_path) -> None:
    # Copy exactly the shipped files and import every handler from that copy, not the checkout.
    for relative in shipped_files():
        if relative.endswith(".py"):
            dest = tmp_path / relative
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes((REPO_ROOT / relative).read_bytes())
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import importlib, inference.handlers as h, inference.sync_api; "
        "[importlib.import_module(m) for m in h.HANDLER_MODULES]; "
        "import inference; assert inference.__file__.startswith(sys.argv[1]), inference.__file__"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
