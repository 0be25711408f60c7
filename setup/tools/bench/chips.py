"""Per-chip latency of the eager fp32 path and the optimised (ONNX Runtime int8) path.

Both paths are timed through the real predictors (``TorchPredictor`` fp32 and
``OnnxPredictor``): one 256x256 chip per call (batch 1, the handler's micro-batch), softmax
included, after one untimed warm-up call. Each timed call gets a different chip cut from a
synthetic NAIP scene, and the argmax of both paths over all those chips gives the pixel
agreement. The eager runs come first and the optimised runs after, never interleaved, so
neither runtime's idle worker threads steal cycles from the other.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from setup.tools.bench.budget import Budget

__all__ = [
    "Candidate",
    "artifacts_needed",
    "bench_chips",
    "candidates",
    "experiments",
    "run_candidates",
    "sample_chips",
]


def sample_chips(n: int, chip: int = 256, seed: int = 7) -> np.ndarray:
    """``n`` normalised float32 chips (n, 4, chip, chip) cut from synthetic NAIP scenes."""
    from core.naip import normalize
    from training.data.synthetic import generate_scene

    side = chip * max(2, int(np.ceil(np.sqrt(n))))
    image, _ = generate_scene(seed, side)
    per_row = side // chip
    out = np.empty((n, 4, chip, chip), dtype=np.float32)
    for i in range(n):
        y, x = divmod(i % (per_row * per_row), per_row)
        out[i] = normalize(image[:, y * chip : (y + 1) * chip, x * chip : (x + 1) * chip])
    return out


def _timed(
    predictor: Any, chips: np.ndarray, warmup: int = 1, repeats: Iterable[int] | None = None
) -> tuple[list[float], np.ndarray]:
    """Seconds and argmax classes per chip, after ``warmup`` untimed calls; ``repeats`` (a
    :meth:`Budget.repeats`) may stop before the last chip on a slow CPU."""
    for i in range(warmup):
        predictor.predict_proba(chips[i % len(chips)][None])
    seconds, classes = [], []
    for i in range(len(chips)) if repeats is None else repeats:
        chip = chips[i]
        t0 = time.perf_counter()
        probs = predictor.predict_proba(chip[None])
        seconds.append(time.perf_counter() - t0)
        classes.append(probs.argmax(axis=1)[0].astype(np.uint8))
    return seconds, np.stack(classes)


def _summary(seconds: list[float], flops: float, peak_gflops: float, peak_name: str) -> dict[str, Any]:
    med = statistics.median(seconds)
    gflops = flops / med / 1e9
    return {
        "runs": len(seconds),
        "seconds": seconds,
        "ms_per_chip": med * 1e3,
        "chips_per_s": 1.0 / med,
        "gflops": gflops,
        "peak_name": peak_name,
        "peak_gflops": peak_gflops,
        "share_of_peak": gflops / peak_gflops if peak_gflops else None,
    }


def bench_chips(
    export_path: str,
    served_path: str,
    flops: float,
    peaks: dict[str, Any],
    eager_runs: int,
    opt_runs: int,
    chip: int = 256,
    served_backend: str = "onnx",
    served_kwargs: dict[str, Any] | None = None,
    served_precision: str = "int8",
    *,
    budget: Budget,
    preset: str = "",
) -> dict[str, Any]:
    """Eager fp32 vs the served path: latency, throughput, GFLOP/s, share of peak and agreement.

    The served path is what the dispatcher chose for this CPU (``served_backend`` on
    ``served_path``); its share of peak is against the measured peak of ``served_precision``.
    ``eager_classes`` (argmax per chip) is returned for further agreement checks. On a slow CPU
    ``budget`` may stop eager after 2 chips and the served path after 3.
    """
    from inference.runtime import load_predictor
    from training.models.predictor import TorchPredictor

    chips = sample_chips(max(eager_runs, opt_runs), chip)
    eager = TorchPredictor(export_path, dtype="float32")
    eager_s, eager_cls = _timed(
        eager, chips[:eager_runs], repeats=budget.repeats(f"{preset} eager chips", eager_runs, 2, 0.1)
    )
    del eager
    gc.collect()
    time.sleep(0.5)  # let torch's OpenMP workers stop spinning before the next runtime starts
    t0 = time.perf_counter()
    opt = load_predictor(served_path, backend=served_backend, **(served_kwargs or {}))
    opt_load_s = time.perf_counter() - t0
    opt_s, opt_cls = _timed(
        opt, chips[:opt_runs], repeats=budget.repeats(f"{preset} served chips", opt_runs, 3, 0.1)
    )
    del opt
    gc.collect()
    n = min(len(eager_cls), len(opt_cls))
    agreement = float((eager_cls[:n] == opt_cls[:n]).mean())
    eager_sum = _summary(eager_s, flops, peaks["fp32"]["gflops"], "fp32")
    opt_sum = _summary(opt_s, flops, peaks[served_precision]["gflops"], served_precision)
    opt_sum["share_of_fp32_peak"] = opt_sum["gflops"] / peaks["fp32"]["gflops"]
    opt_sum["load_s"] = opt_load_s
    return {
        "chip": chip,
        "batch": 1,
        "eager_fp32": eager_sum,
        "optimized": opt_sum,
        "speedup": eager_sum["ms_per_chip"] / opt_sum["ms_per_chip"],
        "pixel_agreement": agreement,
        "agreement_chips": n,
        # Classes eager fp32 predicts on these chips: a random-weight model that predicts one
        # class everywhere agrees with any path, so its agreement says nothing.
        "reference_classes": int(np.unique(eager_cls[:n]).size),
        "chips": chips,
        "eager_classes": eager_cls,
        "served_classes": opt_cls,
    }


@dataclass(frozen=True)
class Candidate:
    """One way to run the model in the side-by-side table."""

    name: str
    backend: str
    artifact: str  # key of BenchModel.artifacts, or "variant:<name>"
    precision: str  # the precision whose measured peak it is compared with
    kwargs: dict[str, Any] = field(default_factory=dict)
    needs_any: frozenset[str] = frozenset()  # CPU flags that make it the intended path
    # Run even when the CPU lacks needs_any (code path exercised): always (True), never (False),
    # or only on CPUs with one of these flags (where its kernels still run natively).
    runs_without: bool | frozenset[str] = True
    note: str = ""

    @classmethod
    def served(cls, name: str, note: str, runs_without: bool | frozenset[str] = True) -> Candidate:
        """The dispatcher's path ``name`` (inference.runtime_cpu.PATHS), exactly as it is served."""
        from inference.runtime_cpu import PATHS

        path = next(p for p in PATHS if p.name == name)
        return cls(
            name,
            path.backend,
            path.artifact,
            path.precision,
            dict(path.options),
            path.needs_any,
            runs_without,
            note,
        )

    def runs_on(self, cpu: Any) -> bool:
        """Whether the bench measures this candidate on ``cpu``."""
        if not self.needs_any or cpu.flags & self.needs_any:
            return True
        if isinstance(self.runs_without, frozenset):
            return bool(cpu.flags & self.runs_without)
        return self.runs_without


def candidates() -> list[Candidate]:
    """Every path the bench compares (names follow inference.runtime_cpu where they are served)."""
    from core.artifacts import EXPORT_NAME, ONNX_FP32_NAME
    from inference.runtime_cpu import BF16_FLAGS, INT8_DOT_FLAGS

    return [
        Candidate(
            "torch-bf16",
            "torch",
            EXPORT_NAME,
            "bf16",
            {"dtype": "bfloat16"},
            BF16_FLAGS,
            False,
            "torch bf16 (AMX / AVX512-BF16 oneDNN kernels)",
        ),
        Candidate(
            "ort-fp32", "onnx", ONNX_FP32_NAME, "fp32", {}, frozenset(), True, "ONNX Runtime fp32 graph"
        ),
        Candidate.served("ort-int8-avx2", "ONNX Runtime int8, 7-bit weights"),
        # Without an int8 dot product MLAS runs the AVX2 kernel on either artifact (both time the
        # same), so on such CPUs the VNNI recipe is not built or run.
        Candidate.served("ort-int8-vnni", "ONNX Runtime int8, 8-bit weights", INT8_DOT_FLAGS),
        Candidate(
            "openvino-fp32",
            "openvino",
            ONNX_FP32_NAME,
            "fp32",
            {"precision": "fp32"},
            frozenset(),
            True,
            "OpenVINO CPU plugin fp32",
        ),
        # Measured on AVX512-BF16 without AMX too (the dispatcher serves it on AMX only).
        Candidate(
            "openvino-bf16",
            "openvino",
            ONNX_FP32_NAME,
            "bf16",
            {"precision": "bf16"},
            BF16_FLAGS,
            False,
            "OpenVINO CPU plugin bf16",
        ),
        # OpenVINO's int8 kernels need VNNI or AMX: on AVX2 alone it runs the QDQ graph in fp32,
        # no faster than eager, and its calibration costs a large share of the bench's budget.
        Candidate.served(
            "openvino-int8",
            "OpenVINO static int8 QDQ (int8 weight MatMuls, the rest fp32)",
            INT8_DOT_FLAGS,
        ),
    ]


def experiments() -> list[Candidate]:
    """Quantisation experiments (ONNX Runtime), built from the fp32 graph by the bench."""
    from core.artifacts import ONNX_INT8_NAME

    return [
        Candidate("ort-int8-avx2", "onnx", ONNX_INT8_NAME, "int8", note="served AVX2 recipe (reference)"),
        Candidate("ort-int8-attn", "onnx", "variant:int8-attn", "int8", note="+ attention score MatMuls"),
        Candidate("ort-int8-conv", "onnx", "variant:int8-conv", "int8", note="+ head convs (ConvInteger)"),
        Candidate(
            "ort-int8-vnni-attn",
            "onnx",
            "variant:int8-vnni-attn",
            "int8",
            note="served VNNI recipe + attention score MatMuls",
        ),
        Candidate(
            "ort-int8-static",
            "onnx",
            "variant:int8-static",
            "int8",
            note="static QDQ, calibrated on 8 training-split chips",
        ),
    ]


def artifacts_needed(cpu: Any) -> tuple[str, ...]:
    """The runtime artifacts the bench uses on ``cpu``: the dispatcher's choice, every candidate
    and experiment that runs here, and the fp32 graph the experiments are made from."""
    from core.artifacts import ONNX_FP32_NAME, RUNTIME_ARTIFACT_NAMES
    from inference.runtime_cpu import choose_path

    served = choose_path(cpu, lambda name: True, backends={"onnx", "openvino"}).artifact
    used = {c.artifact for c in candidates() + experiments() if c.runs_on(cpu)}
    return tuple(n for n in RUNTIME_ARTIFACT_NAMES if n in used | {served, ONNX_FP32_NAME})


def run_candidates(
    model: Any,
    cands: list[Candidate],
    chips: np.ndarray,
    reference: np.ndarray,
    reference_s: float,
    flops: float,
    peaks: dict[str, Any],
    cpu: Any,
    budget: Budget,
    served: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Time each candidate on ``chips`` (after a warm-up); agreement with ``reference`` classes.

    On a slow CPU ``budget`` may time a candidate on its first chip alone. ``served`` (section
    2's run of the served path on the same chips: its ``backend``, ``artifact``, ``kwargs``,
    ``summary`` and ``classes``) stands
    for the candidate that is that very path (same backend, artifact and options) instead of
    timing it again with fewer chips.

    A candidate whose CPU feature is missing and that would only run emulated or on a fallback
    kernel (:meth:`Candidate.runs_on` is false) is reported "not available on this CPU" and not
    run; the others run and say when this CPU is not the one they are meant for.
    """
    from inference.runtime import load_predictor
    from setup.tools.bench.models import prepare_variant

    rows = []
    for c in cands:
        row: dict[str, Any] = {"name": c.name, "backend": c.backend, "precision": c.precision, "note": c.note}
        has = not c.needs_any or bool(cpu.flags & c.needs_any)
        row["cpu_has_feature"] = has
        if not has:
            row["cpu_note"] = f"not available on this CPU (lacks {' / '.join(sorted(c.needs_any))})"
        if not c.runs_on(cpu):
            row["status"] = "not run: " + row["cpu_note"]
            rows.append(row)
            continue
        if served is not None and (served["backend"], served["artifact"], served["kwargs"]) == (
            c.backend,
            c.artifact,
            c.kwargs,
        ):
            n = min(len(served["classes"]), len(reference))
            row.update({k: v for k, v in served["summary"].items() if k != "cold"})
            row["speedup"] = reference_s / row["ms_per_chip"] * 1e3
            row["pixel_agreement"] = float((served["classes"][:n] == reference[:n]).mean())
            row["agreement_chips"] = n
            row["status"] = "ran (the served path: section 2's chips)" + (
                "" if has else f" ({row['cpu_note']}: measured anyway)"
            )
            rows.append(row)
            continue
        try:
            path = (
                prepare_variant(model, c.artifact.split(":", 1)[1])
                if c.artifact.startswith("variant:")
                else model.artifacts[c.artifact]
            )
            t0 = time.perf_counter()
            predictor = load_predictor(path, backend=c.backend, **c.kwargs)
            row["load_s"] = time.perf_counter() - t0
            seconds, classes = _timed(
                predictor, chips, repeats=budget.repeats(f"candidate {c.name}", len(chips), 1, 0.1)
            )
            effective = getattr(predictor, "effective_precision", None)
            del predictor
            gc.collect()
        except Exception as exc:  # one failing runtime must not hide the others
            row["status"] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
            rows.append(row)
            continue
        peak_key = c.precision if peaks.get(c.precision, {}).get("gflops") else "fp32"
        summary = _summary(seconds, flops, peaks[peak_key]["gflops"], peak_key)
        n = min(len(classes), len(reference))
        row.update(summary)
        row["speedup"] = reference_s / summary["ms_per_chip"] * 1e3
        row["pixel_agreement"] = float((classes[:n] == reference[:n]).mean())
        row["agreement_chips"] = n
        if effective is not None:
            row["effective_precision"] = effective
        row["status"] = "ran" + ("" if has else f" ({row['cpu_note']}: measured anyway)")
        rows.append(row)
        time.sleep(0.3)
    return rows
