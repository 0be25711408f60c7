"""Benchmarks for the Clay model code: load memory and CPU latency. Prints figures; not a test.

``rss``: writes a random large-preset encoder (fp32, ~1.25 GB) as ``.safetensors`` and ``.pt``,
plus a Lightning checkpoint in the official full layout (encoder + decoder + teacher + proj +
optimizer state), then loads each in a fresh subprocess through
:func:`~training.models.checkpoint.load_encoder_state_dict` into a meta-built encoder, touches
every weight, and reports the child's peak RSS (``ru_maxrss``) against the file size.

``latency``: eager fp32 milliseconds per 256x256 chip (batch 1, ``torch.inference_mode``,
median of a few runs) for each preset, with the dynamic and with the folded patch embedding.

Usage::

    python -m setup.tools.bench.load rss --dir /tmp/clay-measure
    python -m setup.tools.bench.load latency --runs 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from training.models.clay import PRESETS, build_encoder
from training.models.head import build_segmenter

_CHILD = """
import json, resource, sys, time
import torch
from training.models.checkpoint import load_encoder, load_encoder_state_dict
from training.models.clay import build_encoder
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
encoder = load_encoder(build_encoder("large", device="meta"), load_encoder_state_dict(sys.argv[1]))
total = sum(float(p.detach().double().sum()) * 0 + p.numel() for p in encoder.parameters())  # reads every page
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"peak_rss_bytes": peak * 1024, "baseline_rss_bytes": base * 1024, "vm_hwm_bytes": hwm * 1024,
                  "params": int(total), "seconds": seconds}))
"""


def write_files(folder: Path) -> dict[str, Path]:
    """Random large-encoder files in three layouts under ``folder``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "encoder.safetensors": folder / "clay-large-encoder.safetensors",
        "encoder.pt": folder / "clay-large-encoder.pt",
        "full-layout.ckpt": folder / "clay-large-full-layout.ckpt",
    }
    if all(p.exists() for p in paths.values()):
        return paths
    state = {k: v.contiguous() for k, v in build_encoder("large").state_dict().items()}
    save_file(state, str(paths["encoder.safetensors"]))
    torch.save(state, paths["encoder.pt"])
    full = {f"model.encoder.{k}": v for k, v in state.items()}
    # Decoder/teacher/proj and Adam moments of the encoder stand in for the rest of the 5 GB file.
    full["model.decoder.transformer.blob"] = torch.randn(60_000_000)
    full["model.teacher.blocks.blob"] = torch.randn(80_000_000)
    full["model.proj.weight"] = torch.randn(1024, 1024)
    moments = {
        i: {"exp_avg": torch.zeros_like(v), "exp_avg_sq": torch.zeros_like(v)}
        for i, v in enumerate(state.values())
    }
    torch.save(
        {"state_dict": full, "optimizer_states": [{"state": moments, "param_groups": []}], "epoch": 0},
        paths["full-layout.ckpt"],
    )
    return paths


def measure_rss(folder: Path) -> list[dict]:
    # Write the files in a child process: ru_maxrss survives fork + exec on Linux, so the
    # measuring children must come from a parent that never held the 4 GB of tensors.
    subprocess.run(
        [sys.executable, "-m", "setup.tools.bench.load", "write", "--dir", str(folder)], check=True
    )
    results = []
    for name, path in write_files(folder).items():
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, check=True
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        size = path.stat().st_size
        encoder_bytes = 4 * row["params"]
        row.update(
            file=name,
            file_bytes=size,
            encoder_bytes=encoder_bytes,
            peak_over_file=row["peak_rss_bytes"] / size,
            peak_over_encoder=row["peak_rss_bytes"] / encoder_bytes,
        )
        results.append(row)
        print(
            f"{name:20s} file {size / 1e9:6.2f} GB  encoder {encoder_bytes / 1e9:5.2f} GB  "
            f"peak RSS {row['peak_rss_bytes'] / 1e9:5.2f} GB (VmHWM {row['vm_hwm_bytes'] / 1e9:4.2f}, "
            f"after imports {row['baseline_rss_bytes'] / 1e9:4.2f})  "
            f"peak/file {row['peak_over_file']:.2f}  peak/encoder {row['peak_over_encoder']:.2f}  "
            f"{row['seconds']:.1f} s"
        )
    return results


def measure_latency(runs: int = 5, size: int = 256, presets: list[str] | None = None) -> dict[str, dict]:
    torch.manual_seed(0)
    x = torch.randn(1, 4, size, size)
    results = {}
    for preset in presets or list(PRESETS):
        model = build_segmenter(preset).eval()
        row = {}
        for mode in ("dynamic", "folded"):
            if mode == "folded":
                model.fold_patch_embedding()
            times = []
            with torch.inference_mode():
                model(x)  # warm-up
                for _ in range(runs):
                    t0 = time.perf_counter()
                    logits = model(x)
                    times.append((time.perf_counter() - t0) * 1e3)
            if logits.shape != (1, 7, size, size):
                raise RuntimeError(f"{preset}: unexpected output shape {tuple(logits.shape)}")
            row[f"{mode}_ms"] = statistics.median(times)
        results[preset] = row
        print(
            f"{preset:6s} {size}x{size}: dynamic {row['dynamic_ms']:8.1f} ms/chip   folded {row['folded_ms']:8.1f} ms/chip"
        )
        del model
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Clay model benchmarks (figures, not tests)")
    sub = parser.add_subparsers(dest="command", required=True)
    rss = sub.add_parser("rss", help="peak RSS of loading a large encoder vs its file size")
    rss.add_argument("--dir", type=Path, default=Path("/tmp/clay-measure"))
    write = sub.add_parser("write", help="only write the files that rss measures")
    write.add_argument("--dir", type=Path, default=Path("/tmp/clay-measure"))
    lat = sub.add_parser("latency", help="eager fp32 ms per chip for each preset")
    lat.add_argument("--runs", type=int, default=5)
    lat.add_argument("--size", type=int, default=256)
    lat.add_argument("--presets", nargs="*", default=None)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.command == "write":
        write_files(args.dir)
    elif args.command == "rss":
        measure_rss(args.dir)
    else:
        measure_latency(args.runs, args.size, args.presets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
