"""The Lambda image's build context holds the handlers' code and none of the tools (no Docker here:
the context is computed from inference/Dockerfile.dockerignore the way BuildKit reads it)."""

from __future__ import annotations

import fnmatch
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
IGNORE_FILE = REPO_ROOT / "inference" / "Dockerfile.dockerignore"


def _patterns() -> list[tuple[bool, str]]:
    out = []
    for line in IGNORE_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keep = line.startswith("!")
            out.append((keep, line.lstrip("!").rstrip("/")))
    return out


def in_context(relative: str) -> bool:
    """Whether BuildKit sends ``relative`` (a path under the repo root): the last match decides."""
    included = True
    for keep, pattern in _patterns():
        if fnmatch.fnmatch(relative, pattern) or relative.startswith(pattern + "/"):
            included = keep
    return included


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_tools_and_training_stay_out_of_the_lambda_image() -> None:
    shipped = [p for p in _tracked() if in_context(p)]
    assert shipped, "nothing would be sent to the build"
    for tool in (
        "setup/tools/bench/__main__.py",
        "setup/tools/run_local.py",
        "setup/cli.py",
        "training/pipeline.py",
    ):
        assert tool in _tracked() and not in_context(tool), tool
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
    for relative in _tracked():
        if in_context(relative) and relative.endswith(".py"):
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
