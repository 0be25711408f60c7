"""``python -m setup.tools.bench --quick`` runs end to end and writes a complete JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from setup.tools.bench.models import analytic_flops
from training.models.head import build_segmenter

REPO = Path(__file__).resolve().parents[2]


def test_analytic_flops_match_flop_counter() -> None:
    """The analytic count equals torch's FlopCounterMode plus SDPA, which the counter skips on CPU."""
    model = build_segmenter("tiny", head_width=64).eval().fold_patch_embedding()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 4, 256, 256))
    flops = analytic_flops("tiny", 256, 64)
    assert abs(counter.get_total_flops() + flops["attention"] - flops["total"]) / flops["total"] < 1e-3


def test_budget_keeps_each_figures_minimum_and_says_what_it_cut() -> None:
    """A loop past its share of the budget stops after its minimum runs, and the cut is recorded;
    with time to spare every run happens."""
    from setup.tools.bench.budget import Budget

    tight = Budget(total_s=0.05)
    ran = []
    for i in tight.repeats("slow chips", 10, 2, share=1.0):
        time.sleep(0.03)
        ran.append(i)
    assert ran == [0, 1]
    assert len(tight.cuts) == 1 and tight.cuts[0]["what"] == "slow chips" and tight.cuts[0]["ran"] == 2
    assert tight.cuts[0]["each_s"] >= 0.03

    roomy = Budget(total_s=60.0)
    with roomy.section("fast chips"):
        assert list(roomy.repeats("fast chips", 5, 1, share=0.1)) == [0, 1, 2, 3, 4]
    assert roomy.cuts == [] and roomy.to_dict()["sections_s"]["fast chips"] >= 0

    # make bench passes its own start: the venv build before the bench counts against the budget.
    late = Budget.since(time.time() - 5.0, total_s=60.0)
    assert 54.0 < late.left() <= 55.0 and late.sections["before the bench"] >= 5.0


def test_bench_quick_writes_all_sections(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    # --no-image: building the Lambda env needs the network (tests/inference/test_lambda_env.py, opt-in).
    cmd = [sys.executable, "-m", "setup.tools.bench", "--quick", "--no-champion", "--no-image"]
    cmd += ["--out", str(out), "--workdir", str(tmp_path / "work"), "--export-cache", str(tmp_path / "cache")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for heading in (
        "## 0. CPU and the dispatcher's choice",
        "## 1. GEMM peak",
        "## 2b. Candidate paths side by side",
        "## 2c. Quantisation experiments",
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
    # The served chip's operator profile covers the chip, and the bounds follow from the peaks.
    prof = tiny["profile"]
    assert set(prof["groups"]) == {"weight matmuls", "attention", "convolutions", "other"}
    assert 0.3 * prof["wall_s"] < prof["operators_s"] < 2 * prof["wall_s"]
    assert prof["groups"]["weight matmuls"]["seconds"] > 0 and prof["groups"]["attention"]["seconds"] > 0
    assert 0 < tiny["ideal_chip_s"] < tiny["optimized"]["ms_per_chip"] / 1e3
    targets = report["targets"]
    chip = targets["chip"]
    assert chip["ceiling_vs_eager"] > chip["speedup_vs_eager"]
    assert chip["floor_s"] == tiny["ideal_chip_s"] and chip["ratio_to_floor"] > 1
    assert chip["met"] == (chip["ratio_to_floor"] <= chip["target_ratio"])
    cold = targets["cold_start"]
    assert 0 < cold["floor_s"] < cold["seconds"] and cold["target_s"] == pytest.approx(cold["floor_s"] + 0.5)
    assert "served chip profile" in proc.stdout and "x the floor" in proc.stdout
    # Attention's share of peak is printed for the class the dispatcher detected (amx, vnni, ...).
    attention = chip["attention"]
    assert attention["cpu_class"] == report["machine"]["cpu_detected"]["cpu_class"]
    assert attention["seconds"] == pytest.approx(chip["seconds"] * attention["share_of_time"])
    assert f"attention ({attention['cpu_class']}): " in proc.stdout
    assert 0.0 <= tiny["pixel_agreement"] <= 1.0
    assert 1 <= tiny["reference_classes"] <= 7
    assert targets["agreement"]["random_weights_classes"] == tiny["reference_classes"]
    rows = report["scenes"]["scaling"]["scenes"]
    assert len(rows) >= 2 and all(
        r["median_s"] > 0 and r["chips_run"] >= r["chips_nonoverlapping"] for r in rows
    )
    # The time outside the model's calls is timed, not inferred: positive, and part of the scene.
    assert all(0 < r["overhead_s"] < r["median_s"] for r in rows)
    assert report["lambda_cost"]["optimized"]["usd_per_km2"] > 0
    # The wall time is accounted for by section, inside the budget (quick has nothing to cut).
    budget = report["budget"]
    assert {"exports", "GEMM peaks", "tiny chips", "candidates", "scenes"} <= set(budget["sections_s"])
    assert sum(budget["sections_s"].values()) <= budget["elapsed_s"] < budget["total_s"]
    assert budget["cuts"] == [] and "bench wall time" in proc.stdout
    assert set(report["targets"]) >= {
        "chip",
        "agreement",
        "efficiency",
        "memory",
        "cold_start",
        "scene",
        "image",
    }
    assert report["export_cache"] == str(tmp_path / "cache") and report["models"]["tiny"]["cached"] is False
    # The CPU is detected, and the dispatcher's choice is the served path, with its reason.
    from inference.runtime_cpu import detect_cpu

    assert report["machine"]["cpu_detected"]["flags"] == sorted(detect_cpu().flags)
    choice = report["dispatch"]["tiny"]
    assert choice["reason"] and tiny["served_path"] == choice["path"] == tiny["optimized"]["cold"]["path"]
    assert report["targets"]["cpu_class"] in ("avx2", "accelerated")
    rows = {r["name"]: r for r in report["candidates"]["rows"]}
    assert set(rows) >= {
        "torch-bf16",
        "ort-fp32",
        "ort-int8-avx2",
        "ort-int8-vnni",
        "openvino-fp32",
        "openvino-bf16",
        "openvino-int8",
    }
    for name, row in rows.items():
        assert row["status"].startswith(("ran", "not run: not available on this CPU")), (name, row["status"])
        if row["status"].startswith("ran"):
            assert row["ms_per_chip"] > 0 and 0.0 <= row["pixel_agreement"] <= 1.0
    # The served path's row is section 2's run of it, not a second, shorter one.
    served_row = rows[tiny["served_path"]]
    assert served_row["status"].startswith("ran (the served path")
    assert served_row["ms_per_chip"] == tiny["optimized"]["ms_per_chip"] and served_row["load_s"] > 0
    assert sum(r["status"] == "ran" for r in rows.values()) >= 1  # the others are timed here
    experiments = {r["name"]: r for r in report["experiments"]["rows"]}
    assert {"ort-int8-attn", "ort-int8-conv", "ort-int8-static"} <= set(experiments)
    assert all(r["status"].startswith("ran") for r in experiments.values()), experiments


def _synthetic_report(chip_s: float, floor_s: float, cold_s: float) -> dict:
    """The parts of a bench report :func:`_targets` reads: one large preset whose served chip
    takes ``chip_s`` against an ideal chip of ``floor_s``, profiled with attention the slowest
    group, and a served cold start of ``cold_s``."""
    cold = {
        "cold_start_s": cold_s,
        "uncached_cold_start_s": cold_s + 1.0,
        "import_s": 0.4,
        "load_s": 0.3,
        "first_predict_s": cold_s - 0.8,
        "peak_rss_bytes": 600 * 2**20,
    }
    # Shares of the operators' time; attention's GFLOP at 10 % of its peak, matmuls at 80 %.
    groups = {
        "weight matmuls": {"share_of_time": 0.4, "gflop": 32.0, "gflops": 800.0, "share_of_peak": 0.8},
        "attention": {"share_of_time": 0.45, "gflop": 9.0, "gflops": 100.0, "share_of_peak": 0.1},
        "convolutions": {"share_of_time": 0.1, "gflop": 1.0, "gflops": 50.0, "share_of_peak": 0.5},
        "other": {"share_of_time": 0.05, "gflop": 0.0, "gflops": None, "share_of_peak": None},
    }
    for g in groups.values():
        g["peak_name"] = "int8" if g["share_of_peak"] else None
    scene = [{"km2": 1.0, "cost_ratio": 1.1}, {"km2": 4.0, "cost_ratio": 1.05}]
    return {
        "machine": {"cpu_detected": {"cpu_class": "vnni"}},
        "presets": {
            "large": {
                "served_path": "ort-int8-vnni",
                "speedup": 4.0,
                "pixel_agreement": 0.995,
                "reference_classes": 5,
                "ideal_chip_s": floor_s,
                "eager_fp32": {"ms_per_chip": chip_s * 4.0e3},
                "optimized": {
                    "ms_per_chip": chip_s * 1e3,
                    "share_of_peak": 0.3,
                    "peak_name": "int8",
                    "cold": cold,
                },
                "profile": {"groups": groups},
            }
        },
        "scenes": {"scaling": {"scenes": scene}, "estimate": {"by_km2": scene}},
        "image": {"installed_mb": 500.0, "installed_bytes": 500 * 10**6, "torch_installed": False},
    }


def test_targets_are_judged_against_this_cpus_floors() -> None:
    """A chip at 2x its floor misses the 1.6x target and names attention as the largest part of
    the gap; at 1.5x it is met. The cold start is judged against floor + 0.5 s. Both CPU classes
    share the relative targets."""
    from setup.tools.bench.__main__ import TARGETS, TARGETS_BY_CLASS, _targets
    from setup.tools.bench.text_report import _render_targets

    assert TARGETS_BY_CLASS["avx2"] == TARGETS_BY_CLASS["accelerated"] == TARGETS
    slow = _synthetic_report(chip_s=2.0, floor_s=1.0, cold_s=2.0)
    t = _targets(slow, TARGETS, "accelerated")
    chip = t["chip"]
    assert chip["seconds"] == 2.0 and chip["floor_s"] == 1.0 and chip["ratio_to_floor"] == 2.0
    assert chip["target_ratio"] == 1.6 and chip["met"] is False
    assert chip["speedup_vs_eager"] == 4.0 and chip["ceiling_vs_eager"] == 8.0
    top = chip["gap_by_group"][0]
    # Attention: 0.9 s of the chip against 0.09 s at its peak.
    assert top["group"] == "attention" and top["excess_s"] == pytest.approx(0.9 - 0.009)
    assert chip["attention"] == {
        "cpu_class": "vnni",
        "share_of_time": 0.45,
        "seconds": pytest.approx(0.9),
        "gflops": 100.0,
        "share_of_peak": 0.1,
        "peak": "int8",
    }
    # Cold floor = imports 0.4 + load 0.3 + ideal chip 1.0; 2.0 s is over floor + 0.5 s.
    cold = t["cold_start"]
    assert cold["floor_s"] == pytest.approx(1.7) and cold["target_s"] == pytest.approx(2.2)
    assert cold["met"] is True
    text = "\n".join(_render_targets({"targets": t}))
    assert "2.00x the floor 1.000 s -> MISSED" in text and "largest part of the 1.00 s gap: attention" in text
    assert "attention (vnni): 45% of the chip (0.900 s), 100 GFLOP/s = 10% of the int8 peak" in text
    assert "says nothing" not in text  # eager predicts 5 classes: the agreement is informative

    fast = _targets(_synthetic_report(chip_s=1.5, floor_s=1.0, cold_s=2.3), TARGETS, "avx2")
    assert fast["chip"]["met"] is True and fast["cold_start"]["met"] is False
    text = "\n".join(_render_targets({"targets": fast}))
    assert "1.50x the floor 1.000 s -> MET" in text and "gap" not in text.split("\n")[1]
    assert "0.60 s over the floor" in text
    assert all(fast[k]["met"] for k in ("agreement", "memory", "scene", "image"))
    # A random-weight model that predicts one class agrees with anything: the report says so.
    one_class = _synthetic_report(chip_s=1.5, floor_s=1.0, cold_s=2.3)
    one_class["presets"]["large"]["reference_classes"] = 1
    del one_class["machine"]  # no detected class recorded: the target class names the line
    t = _targets(one_class, TARGETS, "avx2")
    assert t["agreement"]["random_weights_classes"] == 1 and t["chip"]["attention"]["cpu_class"] is None
    text = "\n".join(_render_targets({"targets": t}))
    assert "predicts one class on every chip: its agreement says nothing" in text
    assert "attention (avx2): 45% of the chip" in text


def test_export_key_follows_the_recipe_and_the_runtime_versions(tmp_path: Path, monkeypatch) -> None:
    """The content hash changes with a shaping source or a package version, not otherwise; the
    cache defaults to $XDG_CACHE_HOME/landcover/bench."""
    import shutil

    from setup.tools.bench import models

    for rel in models._SOURCES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, tmp_path / rel)
    key = models.export_key("large", 0, tmp_path)
    assert key == models.export_key("large", 0, tmp_path) != models.export_key("tiny", 0, tmp_path)
    (tmp_path / "training/models/onnx_export.py").write_text("# changed\n")
    changed = models.export_key("large", 0, tmp_path)
    assert changed != key
    monkeypatch.setattr(models, "_version", lambda package: "0.0-test")
    assert models.export_key("large", 0, tmp_path) != changed
    (tmp_path / "core/naip.py").unlink()
    with pytest.raises(FileNotFoundError):
        models.export_key("large", 0, tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.default_cache_dir() == tmp_path / "xdg" / "landcover" / "bench"


def test_prune_cache_keeps_the_newest_complete_folders(tmp_path: Path) -> None:
    import os

    from setup.tools.bench.models import prune_cache

    for i, name in enumerate(("large-a", "large-b", "large-c", "tiny-a")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "build.json").write_text("{}")
        os.utime(tmp_path / name / "build.json", (1000 + i, 1000 + i))
    (tmp_path / "large-building").mkdir()  # no build.json: a build in progress
    assert prune_cache(tmp_path, "large", keep=2) == [tmp_path / "large-a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["large-b", "large-building", "large-c", "tiny-a"]


def test_bench_builds_and_runs_only_what_this_cpu_can_use() -> None:
    """On AVX2 alone neither int8-dot-product candidate runs, so their artifacts are not built;
    a VNNI CPU measures both; an AMX CPU needs every runtime artifact."""
    from core.artifacts import (
        ONNX_FP32_NAME,
        ONNX_INT8_NAME,
        ONNX_INT8_QDQ_NAME,
        ONNX_INT8_VNNI_NAME,
        RUNTIME_ARTIFACT_NAMES,
    )
    from inference.runtime_cpu import CpuInfo
    from setup.tools.bench.chips import artifacts_needed, candidates

    avx2 = CpuInfo("test", "x86_64", frozenset({"avx2", "fma"}))
    vnni = CpuInfo("test", "x86_64", frozenset({"avx2", "avx512f", "avx512_vnni"}))
    amx = CpuInfo("test", "x86_64", frozenset({"avx2", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"}))
    assert set(artifacts_needed(avx2)) == {ONNX_INT8_NAME, ONNX_FP32_NAME}
    assert set(artifacts_needed(vnni)) == {
        ONNX_INT8_NAME,
        ONNX_FP32_NAME,
        ONNX_INT8_VNNI_NAME,
        ONNX_INT8_QDQ_NAME,
    }
    assert set(artifacts_needed(amx)) == set(RUNTIME_ARTIFACT_NAMES)
    runs = {cpu.cpu_class: {c.name for c in candidates() if c.runs_on(cpu)} for cpu in (avx2, vnni, amx)}
    assert runs["avx2"] == {"ort-fp32", "ort-int8-avx2", "openvino-fp32"}
    assert {"ort-int8-vnni", "openvino-int8"} <= runs["vnni"] and "torch-bf16" not in runs["vnni"]
    assert runs["amx"] == {c.name for c in candidates()}


def test_operators_are_grouped_by_the_onnx_nodes_they_run() -> None:
    from setup.tools.bench.profile import operator_group

    block = "/model/layers.3/layers.3.0"
    assert (
        operator_group("FullyConnected", [f"{block}/to_qkv/MatMul/DequantizationMultiply"])
        == "weight matmuls"
    )
    assert operator_group("DynamicQuantizeMatMul", ["/model/layers.3/layers.3.1/net/net.3/MatMul_quant"]) == (
        "weight matmuls"
    )
    # OpenVINO's fused attention, and ONNX Runtime's separate products and softmax.
    assert (
        operator_group("Subgraph", [f"{block}/MatMul", f"{block}/Softmax", f"{block}/MatMul_1"])
        == "attention"
    )
    assert operator_group("MatMul", [f"{block}/MatMul_1"]) == "attention"
    assert operator_group("Softmax", [f"{block}/Softmax"]) == "attention"
    assert operator_group("Conv", ["/model/head/stem/stem.0/stem.0.0/Conv"]) == "convolutions"
    # An elementwise op of a linear module's output is not a matmul.
    assert operator_group("Add", ["/model/layers.3/layers.3.1/net/net.1/Add"]) == "other"
    assert operator_group("MVN", [f"{block}/norm/LayerNormalization"]) == "other"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):
    from core.artifacts import ONNX_INT8_NAME, ONNX_INT8_QDQ_NAME
    from setup.tools.bench.models import prepare_model

    return prepare_model("tiny", tmp_path_factory.mktemp("bench"), names=(ONNX_INT8_NAME, ONNX_INT8_QDQ_NAME))


@pytest.mark.parametrize("path", ["ort-int8-avx2", "openvino-int8"])
def test_served_chip_profile_adds_up(path: str, tiny_model) -> None:
    """Each runtime's own operator counters, grouped: every group that has FLOPs ran, the parts
    sum to the operators' total, and that total lies within the profiled call's wall time."""
    from inference.runtime_cpu import PATHS, detect_cpu
    from setup.tools.bench.chips import sample_chips
    from setup.tools.bench.models import analytic_flops
    from setup.tools.bench.profile import profile_chip

    spec = next(p for p in PATHS if p.name == path)
    if path == "openvino-int8" and not detect_cpu().flags & spec.needs_any:
        pytest.skip("OpenVINO int8 needs VNNI or AMX (on AVX2 alone the bench does not build it)")
    model = tiny_model
    flops = analytic_flops("tiny", 256, model.head_width)
    prof = profile_chip(
        model.artifacts[spec.artifact],
        spec.backend,
        dict(spec.options),
        sample_chips(1)[0],
        flops,
        dict.fromkeys(("weight matmuls", "attention", "convolutions"), ("fp32", 1000.0)),
    )
    groups = prof["groups"]
    assert sum(g["seconds"] for g in groups.values()) == pytest.approx(prof["operators_s"])
    # Per-operator timers carry their own overhead (OpenVINO's summed to 1.08x the call here).
    assert 0.3 * prof["wall_s"] < prof["operators_s"] < 2 * prof["wall_s"]
    for name in ("weight matmuls", "attention", "convolutions"):
        assert groups[name]["seconds"] > 0 and groups[name]["gflops"] > 0, name
        assert groups[name]["share_of_peak"] == pytest.approx(groups[name]["gflops"] / 1000.0)
    assert groups["other"]["gflops"] is None  # no FLOPs are counted there
