"""Dispatch by CPU (inference.runtime_cpu), every runtime artifact at registration, the OpenVINO
predictor, ONNX Runtime's cached optimised graph and the torch-free export-metadata reader."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.artifacts import (
    EXPORT_NAME,
    ONNX_FP32_NAME,
    ONNX_INT8_NAME,
    ONNX_INT8_QDQ_NAME,
    ONNX_INT8_VNNI_NAME,
    RUNTIME_ARTIFACT_NAMES,
)
from inference.runtime import read_safetensors_metadata
from inference.runtime_cpu import PATHS, CpuInfo, choose_path, detect_cpu, load_chosen
from inference.runtime_onnx import OnnxPredictor
from training.models.export import read_export_metadata, save_export
from training.models.head import build_segmenter
from training.models.onnx_export import read_onnx_metadata, register_onnx

REPO = Path(__file__).resolve().parents[2]
CHIP = 64

AMX = "model name : Intel(R) Xeon(R) Platinum 8488C\nflags : fpu avx2 fma avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8\n"
VNNI = "model name : Intel(R) Xeon(R) 8275CL\nflags : fpu avx2 fma avx512f avx512_vnni\n"
ZEN4 = "model name : AMD EPYC 9R14\nflags : fpu avx2 fma avx512f avx512_vnni avx512_bf16\n"
AVX_VNNI = "model name : 12th Gen Intel(R) Core(TM) i7-12700\nflags : fpu avx2 fma avx_vnni\n"
AVX2 = "model name : AMD EPYC 7R32\nflags : fpu avx2 fma f16c\n"
GRAVITON = "CPU implementer : 0x41\nFeatures : fp asimd asimddp i8mm bf16\n"
NEON_ONLY = "CPU implementer : 0x41\nFeatures : fp asimd evtstrm crc32\n"  # Graviton 1 class
OLD = "model name : Old\nflags : fpu sse4_2\n"


def _everything(name: str) -> bool:
    return True


def _installed(module: str) -> bool:
    return True


@pytest.mark.parametrize(
    ("cpuinfo", "path", "cls"),
    [
        (AMX, "openvino-int8", "amx"),
        (VNNI, "openvino-int8", "vnni"),
        (ZEN4, "openvino-int8", "avx512_bf16"),  # bf16 without AMX: int8 measured faster
        (AVX_VNNI, "openvino-int8", "vnni"),
        (AVX2, "ort-int8-avx2", "avx2"),
        (GRAVITON, "ort-int8-vnni", "aarch64"),  # dot product; the arm64 image ships no OpenVINO
        (NEON_ONLY, "ort-int8-avx2", "aarch64"),  # no dot product: the 7-bit weights
        (OLD, "torch-fp32", "baseline"),
    ],
)
def test_the_fastest_path_the_cpu_has(cpuinfo: str, path: str, cls: str) -> None:
    cpu = detect_cpu(cpuinfo)
    assert cpu.cpu_class == cls
    choice = choose_path(cpu, _everything, has_runtime=_installed)
    assert choice.path.name == path
    for qualifies in (_everything, lambda n: n != ONNX_INT8_QDQ_NAME):  # never an emulated bf16
        picked = choose_path(cpu, qualifies, has_runtime=_installed).path
        assert picked.precision != "bf16" or cpu.native_bf16, picked.name
    record = choice.to_dict()
    assert record["cpu"]["flags"] == sorted(cpu.flags) and record["reason"]
    better = [p.name for p in PATHS[: [p.name for p in PATHS].index(path)]]
    assert [s["path"] for s in record["skipped"]] == better  # every better path says why not
    assert path in choice.log_line() and cls in choice.log_line()


def test_missing_runtime_or_artifact_falls_through_with_reasons() -> None:
    cpu = detect_cpu(AMX)
    no_openvino = choose_path(cpu, _everything, has_runtime=lambda m: m != "openvino")
    assert no_openvino.path.name == "ort-int8-vnni"
    assert "openvino not installed" in no_openvino.skipped[0][1]
    no_qdq = choose_path(cpu, lambda n: n != ONNX_INT8_QDQ_NAME, has_runtime=_installed)
    assert no_qdq.path.name == "openvino-bf16"  # a champion registered before the QDQ graph
    assert f"no {ONNX_INT8_QDQ_NAME}" in no_qdq.skipped[0][1]
    old_champion = choose_path(cpu, lambda n: n in (EXPORT_NAME, ONNX_INT8_NAME), has_runtime=_installed)
    assert old_champion.path.name == "ort-int8-avx2"  # only the AVX2 artifact: still runs on AMX
    assert any(f"no {ONNX_INT8_VNNI_NAME}" in why for _, why in old_champion.skipped)
    onnx_only = choose_path(cpu, _everything, has_runtime=_installed, backends={"onnx"})
    assert onnx_only.path.name == "ort-int8-vnni"
    with pytest.raises(RuntimeError, match="no inference path"):
        choose_path(detect_cpu(OLD), _everything, has_runtime=lambda m: m != "torch")


def test_forcing_a_path_ignores_the_cpu_but_not_the_files(caplog: pytest.LogCaptureFixture) -> None:
    cpu = detect_cpu(AVX2)
    with caplog.at_level(logging.WARNING, logger="inference.runtime_cpu"):
        forced = choose_path(cpu, _everything, has_runtime=_installed, force="openvino-bf16")
    assert forced.path.name == "openvino-bf16" and "forced" in forced.reason
    assert "CPU lacks amx_bf16" in forced.reason and "emulated or slow" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="inference.runtime_cpu"):
        fit = choose_path(detect_cpu(AMX), _everything, has_runtime=_installed, force="openvino-bf16")
    assert "lacks" not in fit.reason and not caplog.text
    with pytest.raises(RuntimeError):
        choose_path(cpu, lambda n: n != ONNX_FP32_NAME, has_runtime=_installed, force="openvino-bf16")


def test_this_machine_is_detected_not_assumed() -> None:
    cpu = detect_cpu()
    assert isinstance(cpu, CpuInfo) and cpu.arch
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    for flag in cpu.flags:
        assert f" {flag}" in text


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A version folder with a tiny export and every runtime artifact, as registration writes it."""
    folder = tmp_path_factory.mktemp("version")
    torch.manual_seed(0)
    model = build_segmenter("tiny", head_width=32).eval()
    save_export(
        model, str(folder / EXPORT_NAME), reference_stats={"class_counts": [1, 2]}, extra={"run": "t"}
    )
    from training.models.onnx_export import write_runtime_artifacts

    uris = write_runtime_artifacts(str(folder / EXPORT_NAME), str(folder), chip_size=CHIP)
    assert set(uris) == set(RUNTIME_ARTIFACT_NAMES)
    return folder


def _chips(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 4, CHIP // 8, CHIP // 8)).astype(np.float32)
    chips = np.repeat(np.repeat(base, 8, axis=2), 8, axis=3)
    return (chips + 0.1 * rng.normal(size=chips.shape)).astype(np.float32)


def test_registration_writes_every_runtime_artifact(registered: Path) -> None:
    for name in RUNTIME_ARTIFACT_NAMES:
        assert (registered / name).stat().st_size > 0, name
    avx2, vnni = (
        read_onnx_metadata(registered / ONNX_INT8_NAME),
        read_onnx_metadata(registered / ONNX_INT8_VNNI_NAME),
    )
    assert avx2["quantization"]["reduce_range"] is True and vnni["quantization"]["reduce_range"] is False
    assert read_onnx_metadata(registered / ONNX_FP32_NAME)["quantization"] is None
    qdq = read_onnx_metadata(registered / ONNX_INT8_QDQ_NAME)["quantization"]
    assert qdq["method"].endswith("quantize_static") and qdq["activation_type"] == "qint8 symmetric"
    import onnx

    graph = onnx.load(str(registered / ONNX_INT8_QDQ_NAME)).graph
    constants = {i.name for i in graph.initializer}
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    # Every MatMul reads int8 on both sides: the weight MatMuls (int8 constants) and the
    # attention products (two activations, both quantised).
    assert matmuls and all(n.input[0] in dequantized and n.input[1] in dequantized for n in matmuls)
    assert all(n.input[1] not in constants for n in matmuls)
    quantised_constants = {
        n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in constants
    }
    weight_matmuls = [n for n in matmuls if n.input[1] in quantised_constants]
    assert weight_matmuls and len(weight_matmuls) < len(matmuls)
    assert qdq["attention_matmuls"] is True
    before = {n: (registered / n).stat().st_mtime_ns for n in RUNTIME_ARTIFACT_NAMES}
    register_onnx(str(registered))  # a retried registration keeps what is there
    assert before == {n: (registered / n).stat().st_mtime_ns for n in RUNTIME_ARTIFACT_NAMES}


def test_static_int8_calibrates_on_the_training_scenes(registered: Path, tmp_path: Path) -> None:
    """The QDQ graph's activation ranges come from the run's own training imagery, and say so."""
    import onnx

    from core.naip import normalize
    from tests.data.builders import naip_array, write_naip
    from training.models.onnx_export import calibration_chips, make_variant

    images = [naip_array(2 * CHIP, seed=s) for s in (1, 2)]
    scenes = [str(write_naip(tmp_path / f"train_{i}.tif", image=im)) for i, im in enumerate(images)]
    chips = calibration_chips(4, CHIP, scenes=scenes)
    assert chips.shape == (4, 4, CHIP, CHIP) and chips.dtype == np.float32
    # Round-robin over the scenes, each chip a window of its scene, normalised as served.
    for i, chip in enumerate(chips):
        scene = normalize(images[i % 2])
        found = any(
            np.array_equal(chip, scene[:, r : r + CHIP, c : c + CHIP])
            for r in range(CHIP + 1)
            for c in range(CHIP + 1)
        )
        assert found, f"chip {i} is not a window of scene {i % 2}"
    assert not np.array_equal(chips, calibration_chips(4, CHIP))  # not the synthetic default

    meta = read_onnx_metadata(registered / ONNX_FP32_NAME)
    out = make_variant(
        registered / ONNX_FP32_NAME,
        tmp_path / "q.onnx",
        "int8-qdq",
        meta,
        chip_size=CHIP,
        calibration_scenes=scenes,
    )
    quant = read_onnx_metadata(out)["quantization"]
    assert quant["calibration_source"] == {"training_scenes": scenes} and quant["calibration_chips"] == 8

    def input_scale(path: Path) -> float:
        graph = onnx.load(str(path)).graph
        q = next(n for n in graph.node if n.op_type == "QuantizeLinear")
        init = {i.name: i for i in graph.initializer}
        return float(onnx.numpy_helper.to_array(init[q.input[1]]))

    assert input_scale(out) != input_scale(registered / ONNX_INT8_QDQ_NAME)  # other data, other ranges
    assert read_onnx_metadata(registered / ONNX_INT8_QDQ_NAME)["quantization"]["calibration_source"] == (
        "synthetic training split (generator seeds)"
    )
    small = str(write_naip(tmp_path / "small.tif", size=CHIP // 2))
    with pytest.raises(ValueError, match="no 64x64 calibration chip"):
        calibration_chips(2, CHIP, scenes=[small])


def test_every_path_agrees_with_torch_fp32(registered: Path) -> None:
    from training.models.predictor import TorchPredictor

    chips = _chips(3)
    ref = TorchPredictor(str(registered / EXPORT_NAME)).predict_proba(chips).argmax(1)
    cpu = detect_cpu()
    for name in ("ort-int8-avx2", "ort-int8-vnni", "openvino-int8", "openvino-bf16"):
        choice = choose_path(cpu, lambda n: (registered / n).exists(), force=name)
        predictor = load_chosen(choice, str(registered / choice.artifact))
        probs = predictor.predict_proba(chips)
        assert probs.shape == (3, 7, CHIP, CHIP)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-3)
        agreement = (probs.argmax(1) == ref).mean()
        # The 8-bit-weight model on a CPU without VNNI saturates (that is why AVX2 gets 7 bits).
        full_range = name in ("ort-int8-vnni", "openvino-int8")
        floor = 0.9 if full_range and cpu.cpu_class == "avx2" else 0.98
        assert agreement >= floor, (name, agreement)
        assert predictor.runtime["path"] == name and predictor.num_classes == 7


def test_openvino_reports_the_precision_it_runs(registered: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The effective precision is what the compiled model reports (CPUs without native bf16
    differ: some fall back to fp32, Intel AVX-512 without bf16 emulates it); emulated bf16 warns."""
    from inference.runtime_openvino import OpenVinoPredictor, compiled_precision

    fp32 = OpenVinoPredictor(registered / ONNX_FP32_NAME, precision="fp32")
    assert fp32.effective_precision == "fp32" and not fp32.emulated_bf16
    with caplog.at_level(logging.WARNING, logger="inference.runtime_openvino"):
        predictor = OpenVinoPredictor(registered / ONNX_FP32_NAME, precision="bf16")
    assert predictor.effective_precision == compiled_precision(predictor.compiled)
    assert predictor.effective_precision in ("bf16", "fp32")
    emulated = predictor.effective_precision == "bf16" and not detect_cpu().native_bf16
    assert predictor.emulated_bf16 is emulated
    assert ("emulated, slower than fp32" in caplog.text) is emulated
    print(f"OpenVINO asked for bf16 runs {predictor.effective_precision} (emulated: {emulated})")
    assert predictor.metadata["reference_stats"] == {"class_counts": [1, 2]}
    assert predictor.chip_size == CHIP
    with pytest.raises(ValueError, match="exported for"):
        predictor.predict_proba(np.zeros((1, 4, 2 * CHIP, 2 * CHIP), np.float32))


def test_onnx_metadata_is_read_without_the_onnx_package(registered: Path, tmp_path: Path) -> None:
    from inference.runtime import read_onnx_metadata_props

    for name in (ONNX_INT8_NAME, ONNX_INT8_QDQ_NAME, ONNX_FP32_NAME):
        assert read_onnx_metadata_props(registered / name) == read_onnx_metadata(registered / name), name
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x0f" * 8)  # wire type 7 does not exist
    with pytest.raises(ValueError, match="not an ONNX model"):
        read_onnx_metadata_props(bad)


def test_openvino_reuses_its_compiled_model_cache(registered: Path, tmp_path: Path) -> None:
    from inference.runtime_openvino import OpenVinoPredictor

    chips = _chips(2, seed=4)
    first = OpenVinoPredictor(registered / ONNX_INT8_QDQ_NAME, precision="bf16", cache_dir=tmp_path)
    assert not first.cached_graph and list(tmp_path.glob("*.blob"))
    second = OpenVinoPredictor(registered / ONNX_INT8_QDQ_NAME, precision="bf16", cache_dir=tmp_path)
    assert second.cached_graph and second.metadata == first.metadata
    np.testing.assert_allclose(second.predict_proba(chips), first.predict_proba(chips), atol=1e-5)
    assert not OpenVinoPredictor(registered / ONNX_INT8_QDQ_NAME, precision="bf16").cached_graph


def test_onnx_session_reuses_the_cached_optimised_graph(registered: Path, tmp_path: Path) -> None:
    chips = _chips(2, seed=3)
    plain = OnnxPredictor(registered / ONNX_INT8_NAME)
    first = OnnxPredictor(registered / ONNX_INT8_NAME, cache_dir=tmp_path)
    # The first session builds the cache (in a session of its own) and runs from it.
    assert first.graph_cache_built and first.cached_graph == str(next(tmp_path.glob("*.ort")))
    np.testing.assert_allclose(first.predict_proba(chips), plain.predict_proba(chips), atol=1e-5)
    second = OnnxPredictor(registered / ONNX_INT8_NAME, cache_dir=tmp_path)
    assert second.cached_graph == first.cached_graph and not second.graph_cache_built
    assert second.metadata == first.metadata
    np.testing.assert_allclose(second.predict_proba(chips), first.predict_proba(chips), atol=1e-5)
    next(tmp_path.glob("*.ort")).write_bytes(b"truncated")  # a broken cache is rebuilt, not fatal
    third = OnnxPredictor(registered / ONNX_INT8_NAME, cache_dir=tmp_path)
    assert third.cached_graph is None and third.predict_proba(chips).shape == (2, 7, CHIP, CHIP)
    assert not list(tmp_path.glob("*.ort"))  # dropped: the next session builds it again
    assert OnnxPredictor(registered / ONNX_INT8_NAME, cache_dir=tmp_path).graph_cache_built


def test_export_metadata_without_torch(registered: Path) -> None:
    export = registered / EXPORT_NAME
    assert read_safetensors_metadata(str(export)) == read_export_metadata(str(export))
    code = (
        "import sys, json\n"
        "from inference.runtime import read_safetensors_metadata\n"
        f"m = read_safetensors_metadata({str(export)!r})\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'stats': m['reference_stats']}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
        "torch": False,
        "stats": {"class_counts": [1, 2]},
    }
    with pytest.raises(ValueError, match="not a safetensors"):
        bad = registered / "bad.safetensors"
        bad.write_bytes(b"\xff" * 16)
        read_safetensors_metadata(str(bad))


def test_chain_picks_the_artifact_of_the_dispatched_path(registered: Path) -> None:
    from types import SimpleNamespace

    from core import storage
    from inference import errors, model_cache

    pointer = {
        "version": "v1",
        "version_uri": storage.to_uri(str(registered)),
        "export_uri": storage.to_uri(str(registered / EXPORT_NAME)),
    }
    expected = choose_path(detect_cpu(), lambda n: (registered / n).exists())
    backend, uri, choice = model_cache.model_artifact(SimpleNamespace(backend="auto"), pointer)
    assert choice.path.name == expected.path.name and backend == expected.backend
    assert uri.endswith(expected.artifact)
    backend, uri, choice = model_cache.model_artifact(SimpleNamespace(backend="onnx"), pointer)
    assert backend == "onnx" and choice.path.name in ("ort-int8-avx2", "ort-int8-vnni")
    backend, uri, _ = model_cache.model_artifact(SimpleNamespace(backend="torch"), pointer)
    assert (backend, uri) == ("torch", pointer["export_uri"])
    bare = {**pointer, "version_uri": storage.to_uri(str(registered / "missing"))}
    with pytest.raises(errors.ChainError, match="cannot run here"):
        model_cache.model_artifact(SimpleNamespace(backend="onnx"), bare)
