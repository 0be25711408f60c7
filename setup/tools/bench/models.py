"""Benchmark models: random-weight exports per preset, every runtime artifact, and analytic FLOPs.

Each model folder is laid out as a registry version folder: the export plus what
``training.models.onnx_export.write_runtime_artifacts`` writes at registration, so the
dispatcher chooses from the same files. The bench builds only the artifacts it runs on this CPU
(:func:`setup.tools.bench.chips.artifacts_needed`): the static int8 graph's calibration alone takes
a large share of the bench's budget, and on an AVX2-only CPU no path uses it.

Random weights stand in for trained ones (same shapes, same cost); pixel agreement on random
weights is pessimistic, because their logits sit close together (see the closing note).

The exports are cached under ``<cache>/models/<preset>-<key>/`` where ``key`` hashes the
preset, the seed, every source that shapes the export and its runtime artifacts
(:data:`_SOURCES`) and the versions of the packages that build them (:data:`_PACKAGES`), so a
later run skips the build; the build seconds are reported either way (``cached: true`` says
they are from the run that built). The default cache is ``$XDG_CACHE_HOME/landcover/bench``
(:func:`default_cache_dir`): a random-weight model is a pure function of that key, so a fresh
clone of the same code on the same environment may honestly reuse what an earlier clone built
(the newest :data:`CACHE_KEEP_PER_PRESET` folders of each preset are kept).
The registry's artifacts are not reused: they hold trained weights, of the champion's preset.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from core.config import REPO_ROOT

__all__ = [
    "HEAD_WIDTH",
    "BenchModel",
    "analytic_flops",
    "default_cache_dir",
    "export_key",
    "prepare_model",
    "prepare_variant",
    "prune_cache",
]

#: Head widths of the model configs (setup/conf/model/clay_*.yaml).
HEAD_WIDTH = {"tiny": 64, "small": 256, "base": 512, "large": 512}

#: Every file that shapes a bench model's export or its runtime artifacts: the model configs
#: (heads), the model and export code, the artifact names and metadata, and what the static int8
#: graph's calibration reads (normalisation and the synthetic scenes).
_SOURCES = (
    "setup/conf/model/clay_tiny.yaml",
    "setup/conf/model/clay_small.yaml",
    "setup/conf/model/clay_base.yaml",
    "setup/conf/model/clay_large.yaml",
    "setup/tools/bench/models.py",
    "training/models/clay.py",
    "training/models/head.py",
    "training/models/checkpoint.py",
    "training/models/export.py",
    "training/models/onnx_export.py",
    "training/data/synthetic.py",
    "training/data/chips.py",
    "core/artifacts.py",
    "core/naip.py",
    "core/classes.py",
)
#: Cached folders kept per preset (newest first): a large preset's folder holds gigabytes, and
#: every change to a source or a package makes a new key.
CACHE_KEEP_PER_PRESET = 2
#: The packages whose versions change what an export or a quantised graph contains.
_PACKAGES = ("torch", "numpy", "onnx", "onnxruntime", "onnxscript", "safetensors")


@dataclass
class BenchModel:
    """Paths and build costs of one preset's bench model."""

    preset: str
    export_path: str
    onnx_path: str
    artifacts: dict[str, str]
    export_bytes: int
    onnx_bytes: int
    build_seconds: float
    convert_seconds: float
    cached: bool
    head_width: int
    head: str = "seed"
    flops_counted: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def export_key(preset: str, seed: int, root: Path = REPO_ROOT) -> str:
    """Content hash of everything a bench model is made from: preset, seed, :data:`_SOURCES`
    and the :data:`_PACKAGES` versions."""
    digest = hashlib.sha256(f"{preset}:{seed}".encode())
    for rel in _SOURCES:
        # A missing source is a moved file: fail rather than key the cache on nothing.
        digest.update(rel.encode() + b"\0" + (root / rel).read_bytes())
    for package in _PACKAGES:
        digest.update(f"{package}=={_version(package)}".encode())
    return digest.hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/landcover/bench`` (``~/.cache`` without it): outside the checkout, so a
    fresh clone finds the exports an earlier clone built under the same :func:`export_key`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "landcover" / "bench"


def prune_cache(models_dir: Path, preset: str, keep: int = CACHE_KEEP_PER_PRESET) -> list[Path]:
    """Remove all but the ``keep`` newest complete folders of ``preset`` under ``models_dir``
    (by their ``build.json``'s time; folders without one are builds in progress, left alone).
    Returns the removed folders."""
    import shutil

    done = [f for f in models_dir.glob(f"{preset}-*") if (f / "build.json").exists()]
    done.sort(key=lambda f: (f / "build.json").stat().st_mtime, reverse=True)
    for folder in done[keep:]:
        shutil.rmtree(folder, ignore_errors=True)
    return done[keep:]


def recipe_key() -> str:
    """Digest of the sources that decide how exports and runtime artifacts are made: a folder of
    artifacts cached under it is rebuilt when the recipe changes."""
    return export_key("recipe", 0, REPO_ROOT)


def prepare_model(
    preset: str,
    cache_dir: Path,
    seed: int = 0,
    rebuild: bool = False,
    names: tuple[str, ...] | None = None,
) -> BenchModel:
    """Build (or reuse, from ``cache_dir/models``) the export and the runtime artifacts ``names``
    (default: every one) of a random ``preset`` model; artifacts missing from a cached folder
    are added to it. A folder is complete once its ``build.json`` exists (written last).

    The fp32 model is built, written as the compact (fp16) export and dropped before the
    ONNX conversion reloads the export, so at most one torch copy of the weights is alive.
    """
    import torch

    from core.artifacts import EXPORT_NAME, ONNX_INT8_NAME, RUNTIME_ARTIFACT_NAMES
    from training.models.export import save_export
    from training.models.head import build_segmenter
    from training.models.onnx_export import write_runtime_artifacts

    root = REPO_ROOT
    folder = cache_dir / "models" / f"{preset}-{export_key(preset, seed, root)}"
    export_path = folder / EXPORT_NAME
    names = RUNTIME_ARTIFACT_NAMES if names is None else names
    paths = {name: str(folder / name) for name in names}
    info_path = folder / "build.json"
    width = HEAD_WIDTH.get(preset, 512)
    if not rebuild and info_path.exists() and export_path.exists():
        info = json.loads(info_path.read_text())
        missing = tuple(n for n in names if not Path(paths[n]).exists())
        if missing:  # another CPU's bench built this folder: add what this one runs
            t0 = time.perf_counter()
            write_runtime_artifacts(str(export_path), str(folder), names=missing)
            info["convert_seconds"] += time.perf_counter() - t0
            info_path.write_text(json.dumps(info, indent=2))
        info["artifacts"] = {EXPORT_NAME: str(export_path), **paths}
        return BenchModel(**{**info, "cached": not missing})
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    spec = model_head(preset)
    model = build_segmenter(preset, head_width=width, **spec).eval()
    counted = counted_flops(model)
    save_export(model, str(export_path), extra={"bench": True, "seed": seed})
    del model
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_runtime_artifacts(str(export_path), str(folder), names=names, overwrite=rebuild)
    convert_s = time.perf_counter() - t0
    result = BenchModel(
        preset=preset,
        export_path=str(export_path),
        onnx_path=paths[ONNX_INT8_NAME],
        artifacts={EXPORT_NAME: str(export_path), **paths},
        export_bytes=export_path.stat().st_size,
        onnx_bytes=Path(paths[ONNX_INT8_NAME]).stat().st_size,
        build_seconds=build_s,
        convert_seconds=convert_s,
        cached=False,
        head_width=width,
        head=spec["head"],
        flops_counted=counted,
    )
    info_path.write_text(json.dumps(result.to_dict(), indent=2))
    prune_cache(cache_dir / "models", preset)
    return result


def model_head(preset: str) -> dict[str, Any]:
    """The head the model config of ``preset`` builds by default (``setup/conf/model/clay_<preset>.yaml``)."""
    import yaml

    from training.models.head import head_spec

    path = REPO_ROOT / "setup" / "conf" / "model" / f"clay_{preset}.yaml"
    return head_spec(yaml.safe_load(path.read_text()) if path.exists() else {})


def counted_flops(model: Any, chip: int = 256) -> dict[str, Any]:
    """FLOPs of one chip through ``model``: torch's FlopCounterMode (matmuls and convs) plus the
    attention products, which the counter skips for CPU SDPA (added analytically)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    enc = model.encoder
    n = 1 + (chip // enc.patch_size) ** 2
    inner = enc.config.heads * enc.config.dim_head if hasattr(enc, "config") else None
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 4, chip, chip))
    by_module = counter.get_flop_counts()
    total = counter.get_total_flops()
    head = (
        sum(by_module.get("ClaySegmenter.head", {}).values()) if "ClaySegmenter.head" in by_module else None
    )
    attention = enc.config.depth * 2 * 2 * n * n * inner if inner else 0
    return {
        "total": total + attention,
        "counted": total,
        "attention": attention,
        "head": head,
        "method": "torch FlopCounterMode (matmuls/convs) + analytic attention products",
    }


def prepare_variant(model: BenchModel, variant: str) -> str:
    """The ONNX file of an experimental quantisation ``variant`` of ``model`` (cached beside it)."""
    from core.artifacts import ONNX_FP32_NAME

    return variant_file(model.artifacts[ONNX_FP32_NAME], variant)


def variant_file(fp32_path: str | Path, variant: str) -> str:
    """The ONNX file of quantisation ``variant`` made from the fp32 graph at ``fp32_path``,
    cached beside it as ``variant-<name>.onnx``."""
    from training.models.onnx_export import VARIANTS, make_variant, read_onnx_metadata

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {sorted(VARIANTS)}")
    path = Path(fp32_path).parent / f"variant-{variant}.onnx"
    if not path.exists():
        make_variant(fp32_path, path, variant, read_onnx_metadata(fp32_path))
    return str(path)


def analytic_flops(preset: str, chip: int = 256, head_width: int | None = None, num_classes: int = 7) -> dict:
    """FLOPs of one chip, counted analytically (2 per multiply-add; matmuls and convs only).

    Returns ``total`` and its parts: ``linear`` (qkv, attention output, MLP: what the int8
    path quantises), ``attention`` (QK^T and AV products), ``patch_embed`` and ``head`` (convs).
    LayerNorm, softmax, GELU and adds are not counted (< 1 % of the total).
    """
    from training.models.clay import PRESETS

    c = PRESETS[preset]
    p = c.patch_size
    h = w = chip // p
    n = 1 + h * w  # tokens incl. CLS
    inner = c.heads * c.dim_head
    width = head_width or HEAD_WIDTH.get(preset, 512)
    up = 64
    linear = c.depth * 2 * n * (c.dim * 3 * inner + inner * c.dim + 2 * c.dim * c.mlp_dim)
    attention = c.depth * 2 * 2 * n * n * inner
    patch = 2 * h * w * c.dim * 4 * p * p
    head = (
        2 * h * w * 9 * (c.dim * width + width * width + width * up * p * p)
        + 2 * chip * chip * 9 * up * num_classes
    )
    total = linear + attention + patch + head
    return {
        "total": total,
        "linear": linear,
        "attention": attention,
        "patch_embed": patch,
        "head": head,
        "method": "analytic per-layer formulas (2 FLOPs per multiply-add; matmuls and convs)",
    }
