"""``python -m inference.bench --quick`` runs end to end and writes a complete JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from inference.bench.models import analytic_flops
from training.models.head import build_segmenter

REPO = Path(__file__).resolve().parents[2]


def test_analytic_flops_match_flop_counter() -> None:
    """The analytic count equals torch's FlopCounterMode plus SDPA, which the counter skips on CPU."""
    model = build_segmenter("tiny", head_width=64).eval().fold_patch_embedding()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 4, 256, 256))
    flops = analytic_flops("tiny", 256, 64)
    assert abs(counter.get_total_flops() + flops["attention"] - flops["total"]) / flops["total"] < 1e-3


def test_bench_quick_writes_all_sections(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "inference.bench", "--quick", "--no-champion"]
    cmd += ["--out", str(out), "--workdir", str(tmp_path / "work")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for heading in (
        "## 1. GEMM peak",
        "## 2. Per chip",
        "## 3. Whole scenes",
        "## 4. Lambda cost",
        "## Targets",
    ):
        assert heading in proc.stdout
    report = json.loads(out.read_text())
    assert {"peaks", "presets", "scenes", "lambda_cost", "targets", "machine", "models"} <= set(report)
    assert {"fp32", "bf16", "int8"} <= set(report["peaks"])
    assert all(report["peaks"][k]["gflops"] > 0 for k in ("fp32", "bf16", "int8"))
    tiny = report["presets"]["tiny"]
    for path in ("eager_fp32", "optimized"):
        x = tiny[path]
        assert x["ms_per_chip"] > 0 and x["gflops"] > 0 and x["share_of_peak"] > 0
        assert x["cold"]["peak_rss_bytes"] > 0 and x["cold"]["cold_start_s"] > 0
    assert tiny["optimized"]["cold"]["torch_imported"] is False
    assert 0.0 <= tiny["pixel_agreement"] <= 1.0
    rows = report["scenes"]["scaling"]["scenes"]
    assert len(rows) >= 2 and all(
        r["median_s"] > 0 and r["chips_run"] >= r["chips_nonoverlapping"] for r in rows
    )
    assert report["lambda_cost"]["optimized"]["usd_per_km2"] > 0
    assert set(report["targets"]) >= {"a_throughput", "b_efficiency", "c_memory", "d_cold_start", "e_scene"}
