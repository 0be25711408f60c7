"""Cold start and peak RSS of the infer handler's model path, each in a fresh child process.

The parent writes a sample chip (and a small uint8 scene) to disk, notes the wall clock and
starts ``python -m setup.tools.bench.coldstart``. The child does what the infer Lambda does on a
cold start: import the infer handler module (Lambda's init: settings, chain, ledger, raster
packages), pick and load the model the way ``inference.model_cache.load_champion`` does (``--backend auto``:
:func:`inference.runtime_cpu.choose_path` over the artifacts in the model folder, then
``load_chosen`` with the compiled-graph cache in ``<folder>/compiled``; ``--backend torch``: the
eager export), and predict one chip; it reports

- ``cold_start_s``: parent's clock before spawning -> first prediction returned (interpreter
  start, imports, model load and one chip included);
- ``import_s``, ``load_s``, ``first_predict_s``: the parts (``handler_import_s``: the handler
  module alone); ``path``/``cached_graph``: the chosen path and whether the CPU-specific
  optimised graph came from the cache (the first child on a machine builds it);
- ``rss_after_first_bytes``: the child's peak RSS (``VmHWM``) after the first prediction;
- with ``--scene``: then predicts that uint8 image with ``predict_array`` (the handler's
  sliding window, default batch size 8) and reports ``peak_rss_bytes``, the child's own
  ``VmHWM`` at exit: the infer handler's peak RSS. Every measurement uses its own child, so no
  figure is polluted by another (``RUSAGE_CHILDREN`` would be).
- ``torch_imported``: whether torch ended up in ``sys.modules`` (must be False for onnx).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from core.config import REPO_ROOT

__all__ = ["measure", "vm_hwm_bytes"]


def vm_hwm_bytes() -> int:
    """This process's peak resident set size (``VmHWM``) in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # pragma: no cover


def _child(args: argparse.Namespace) -> dict[str, Any]:
    t_import = time.time()
    import numpy as np

    if args.handler:
        import inference.handlers.infer  # noqa: F401 - what Lambda's init imports
    t_handler = time.time()
    chip = np.load(args.chip)
    t_load = time.time()
    info: dict[str, Any] = {}
    if args.backend == "auto":
        from inference.runtime_cpu import choose_path, load_chosen

        folder = Path(args.path)
        choice = choose_path(has_artifact=lambda name: (folder / name).exists(), force=args.force)
        predictor = load_chosen(choice, str(folder / choice.artifact), cache_dir=str(folder / "compiled"))
        info = {
            "path": choice.path.name,
            "reason": choice.reason,
            # From a cache an earlier process wrote (the first child on a machine writes it).
            "cached_graph": bool(getattr(predictor, "cached_graph", None))
            and not getattr(predictor, "graph_cache_built", False),
        }
    else:
        from inference.runtime import load_predictor

        predictor = load_predictor(args.path, backend=args.backend)
    t_pred = time.time()
    predictor.predict_proba(chip[None])
    t_done = time.time()
    out: dict[str, Any] = {
        "cold_start_s": t_done - args.t0,
        "process_start_s": t_import - args.t0,
        "import_s": t_load - t_import,
        "handler_import_s": t_handler - t_import,
        **info,
        "load_s": t_pred - t_load,
        "first_predict_s": t_done - t_pred,
        "rss_after_first_bytes": vm_hwm_bytes(),
    }
    if args.scene:
        from inference.predict import predict_array

        image = np.load(args.scene)
        t0 = time.time()
        pred = predict_array(predictor, image, batch_size=args.batch_size)
        out["scene_s"] = time.time() - t0
        out["scene_shape"] = list(image.shape)
        out["scene_classes"] = int(pred.classes.max()) + 1
        out["batch_size"] = args.batch_size
    out["peak_rss_bytes"] = vm_hwm_bytes()
    out["torch_imported"] = "torch" in sys.modules
    return out


def measure(
    backend: str,
    path: str,
    chip_npy: str,
    scene_npy: str | None = None,
    batch_size: int = 8,
    timeout: float = 300,
    force: str | None = None,
    handler: bool = True,
) -> dict[str, Any]:
    """Run one cold-start child and return its report (raises on failure)."""
    root = REPO_ROOT
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "setup.tools.bench.coldstart", "--backend", backend, "--path", path]
    cmd += ["--chip", chip_npy, "--batch-size", str(batch_size)]
    if scene_npy:
        cmd += ["--scene", scene_npy]
    if force:
        cmd += ["--force", force]
    if not handler:
        cmd += ["--no-handler"]
    t0 = time.time()
    proc = subprocess.run(
        [*cmd, "--t0", repr(t0)], capture_output=True, text=True, cwd=root, env=env, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"cold-start child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="cold-start child (see module docstring)")
    parser.add_argument("--backend", required=True, help="auto (the dispatcher), torch, onnx or openvino")
    parser.add_argument("--path", required=True, help="model file, or with auto the artifacts' folder")
    parser.add_argument("--chip", required=True, help=".npy normalised float32 (4, S, S)")
    parser.add_argument("--scene", default=None, help=".npy uint8 (4, H, W) to predict afterwards")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--force", default=None, help="with --backend auto: take this runtime path")
    parser.add_argument("--no-handler", dest="handler", action="store_false", help="skip the handler import")
    parser.add_argument("--t0", type=float, required=True, help="parent's time.time() before spawning")
    print(json.dumps(_child(parser.parse_args(argv))))


if __name__ == "__main__":
    main()
