"""The model a warm container holds: the champion pointer, the artifact this CPU runs best,
and one loaded predictor kept behind a lock across calls.

One model is held at a time: the shadow pass runs after the champion's blocks, so a warm
container swaps once per execution instead of holding two models in its memory.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import artifacts, registry, storage
from inference import retry
from inference.errors import ChainError, NoChampionError
from inference.settings import ChainSettings, onnx_available

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A registered version's predictor and its export metadata (``metadata["runtime"]``: the
    path chosen for this CPU)."""

    version: str
    predictor: Any
    metadata: dict[str, Any]


_model_lock = threading.Lock()
_loaded: LoadedModel | None = None


def loaded_model() -> LoadedModel | None:
    """The model this container holds now, if any."""
    return _loaded


def champion(settings: ChainSettings) -> dict[str, Any]:
    """The champion pointer (one small GET); raises :class:`NoChampionError` when there is none."""
    pointer = registry.champion(settings.registry_uri, settings.model_name)
    if pointer is None:
        raise NoChampionError(
            f"no champion model {settings.model_name!r} in the registry at {settings.registry_uri}; "
            "train and promote one first (`make train_baseline`)"
        )
    return pointer


def model_artifact(settings: ChainSettings, pointer: dict[str, Any]) -> tuple[str, str, Any]:
    """``(backend, uri, choice)`` of what to load for the champion on this CPU, following ``BACKEND``.

    :func:`inference.runtime_cpu.choose_path` picks the fastest path this CPU, this image and
    the champion's artifacts allow (the order and the reasons are in
    :data:`~inference.runtime_cpu.PATHS`). ``BACKEND=onnx``/``torch`` restricts the
    choice to that backend; ``auto`` allows all. ``choice`` is the
    :class:`~inference.runtime_cpu.DispatchChoice` (path, reason, CPU flags, skipped paths).
    """
    from inference.runtime_cpu import choose_path, runtime_available

    version_uri = str(pointer["version_uri"])
    uris = {artifacts.EXPORT_NAME: str(pointer["export_uri"])}

    def uri_of(name: str) -> str:
        return uris.get(name) or artifacts.in_version(version_uri, name)

    def has_runtime(module: str) -> bool:
        return onnx_available() if module == "onnxruntime" else runtime_available(module)

    backends = None if settings.backend == "auto" else {settings.backend}
    try:
        choice = choose_path(
            has_artifact=lambda name: name == artifacts.EXPORT_NAME or storage.exists(uri_of(name)),
            has_runtime=has_runtime,
            backends=backends,
        )
    except RuntimeError as exc:
        raise ChainError(
            f"BACKEND={settings.backend}: champion {pointer['version']} cannot run here ({exc}); "
            f"ONNX runs need {artifacts.ONNX_INT8_NAME} (export it with "
            "training.models.onnx_export.register_onnx), torch needs an image with torch"
        ) from exc
    return choice.backend, uri_of(choice.artifact), choice


def load_champion(settings: ChainSettings) -> LoadedModel:
    """The champion's predictor: re-reads the pointer, reuses the loaded model while it is unchanged.

    See :func:`load_version` for the cache.
    """
    return _load(settings, champion(settings))


def load_version(settings: ChainSettings, version: str) -> LoadedModel:
    """The predictor of registered ``version`` (the run's champion or the shadow challenger)."""
    loaded = _loaded
    if loaded is not None and loaded.version == version:  # versions are immutable
        return loaded
    manifest = retry.call(
        lambda: registry.get_version(settings.registry_uri, settings.model_name, version),
        f"read version {version}",
    )
    return _load(
        settings, {"version": version, "version_uri": manifest["uri"], "export_uri": manifest["export_uri"]}
    )


def _load(settings: ChainSettings, pointer: dict[str, Any]) -> LoadedModel:
    """Load the model ``pointer`` names (``version``, ``version_uri``, ``export_uri``), or reuse it.

    Remote artifacts are copied once into ``MODEL_CACHE_DIR/<model>/<version>/`` (``/tmp`` on
    Lambda), so a warm container that sees a new champion downloads only the new model. The
    CPU-specific optimised graph / compiled model is cached under ``MODEL_CACHE_DIR/compiled``.
    The chosen path, its reason and the CPU flags are logged and kept as ``metadata["runtime"]``.
    """
    global _loaded
    version = str(pointer["version"])
    with _model_lock:
        if _loaded is not None and _loaded.version == version:
            return _loaded
        from inference.runtime_cpu import load_chosen

        _backend, uri, choice = model_artifact(settings, pointer)
        local = storage.local_path(uri)
        if local is None:
            local = (
                Path(settings.model_cache_dir)
                / settings.model_name
                / artifacts.safe_name(version)
                / choice.artifact
            )
            if not local.exists():
                storage.download(uri, local)
        cache = Path(settings.model_cache_dir) / "compiled"
        predictor = load_chosen(choice, str(local), cache_dir=str(cache))
        _loaded = LoadedModel(version, predictor, {**predictor.metadata, "runtime": predictor.runtime})
        log.info("loaded %s %s (%s: %s)", settings.model_name, version, choice.path.name, choice.reason)
        return _loaded
