"""Experiment tracking behind one small interface: MLflow, W&B, or both (``logging.style``).

A pipeline run spans several processes (one per Airflow task), so a tracker is *resumed*
from the ids stored in ``<run_uri>/tracking.json`` rather than kept open. MLflow defaults
to a sqlite store with local artifacts; W&B defaults to offline mode (no network needed).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers.logger import Logger

from core import artifacts, storage

log = logging.getLogger(__name__)

STYLES = ("mlflow", "wandb", "both")


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: tracking backends want flat params."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def use_mlflow_store(tracking_uri: str) -> None:
    """Make ``tracking_uri`` MLflow's default for this process and its children (tracking and
    registry). MLflow 3 otherwise falls back to ``sqlite:///mlflow.db`` in the working directory:
    any call that does not name a URI (a library's, a notebook's, ``mlflow ui`` started from an
    Airflow task) would create a stray, empty ``mlflow.db`` there."""
    import mlflow

    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)  # also exported as MLFLOW_TRACKING_URI, for children
    mlflow.set_registry_uri(tracking_uri)


class MlflowTracker:
    """An MLflow run, created on first use and resumed by id afterwards."""

    def __init__(
        self, tracking_uri: str, experiment: str, artifact_uri: str, run_name: str, run_id: str | None
    ):
        import mlflow

        self._mlflow = mlflow
        use_mlflow_store(tracking_uri)
        self.tracking_uri = tracking_uri
        client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = (
            found.experiment_id
            if found
            else client.create_experiment(
                experiment, artifact_location=f"{artifact_uri.rstrip('/')}/{experiment}"
            )
        )
        if run_id is None:
            run_id = client.create_run(experiment_id, run_name=run_name).info.run_id
        self.run_id = run_id
        self.experiment_id = experiment_id
        self._client = client

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self._client.get_run(self.run_id).data.params
        fresh = [Param(k, str(v)[:6000]) for k, v in flatten(params).items() if k not in existing]
        for start in range(0, len(fresh), 100):  # MLflow caps a batch at 100 params
            self._client.log_batch(self.run_id, params=fresh[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self._client.log_metric(self.run_id, key, float(value), step=step or 0)

    def log_file(self, path: str | os.PathLike[str], folder: str = "") -> None:
        self._client.log_artifact(self.run_id, str(path), artifact_path=folder or None)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self._client.set_tag(self.run_id, key, str(value))

    def close(self, status: str = "FINISHED") -> None:
        self._client.set_terminated(self.run_id, status=status)

    @property
    def url(self) -> str:
        return f"{self.tracking_uri} experiment {self.experiment_id} run {self.run_id}"


class WandbTracker:
    """A W&B run (offline by default), resumed by id across pipeline steps."""

    def __init__(
        self, project: str, entity: str | None, mode: str, directory: str, run_name: str, run_id: str | None
    ):
        import wandb

        Path(directory).mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=project,
            entity=entity,
            mode=mode,
            dir=directory,
            name=run_name,
            id=run_id,
            resume="allow",
            reinit="finish_previous",
        )
        self._wandb = wandb
        self.run_id = self._run.id

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._run.config.update(flatten(params), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        payload = {k: float(v) for k, v in metrics.items()}
        if step is not None:
            payload["epoch"] = step
        self._run.log(payload)

    def log_file(self, path: str | os.PathLike[str], folder: str = "") -> None:
        path = Path(path)
        if path.suffix.lower() == ".png":
            self._run.log({f"{folder}/{path.stem}" if folder else path.stem: self._wandb.Image(str(path))})
        self._run.save(str(path), base_path=str(path.parent), policy="now")

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._run.summary.update({f"tag.{k}": str(v) for k, v in tags.items()})

    def close(self, status: str = "FINISHED") -> None:
        self._run.finish(exit_code=0 if status == "FINISHED" else 1)

    @property
    def url(self) -> str:
        return self._run.url or f"offline run {self.run_id} in {self._run.dir}"


class Tracker:
    """Fans every call out to the configured backends."""

    def __init__(self, backends: dict[str, Any]):
        self.backends = backends

    @property
    def mlflow_run_id(self) -> str | None:
        backend = self.backends.get("mlflow")
        return backend.run_id if backend else None

    def ids(self) -> dict[str, str]:
        return {name: backend.run_id for name, backend in self.backends.items()}

    def log_params(self, params: Mapping[str, Any]) -> None:
        for backend in self.backends.values():
            backend.log_params(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        # Backends accept only a few characters in names ("iou/Impervious (other)" is refused).
        clean = {re.sub(r"[^0-9A-Za-z_./-]+", "_", k).strip("_"): float(v) for k, v in metrics.items()}
        for backend in self.backends.values():
            backend.log_metrics(clean, step)

    def log_file(self, path: str | os.PathLike[str], folder: str = "") -> None:
        for backend in self.backends.values():
            backend.log_file(path, folder)

    def log_text(self, text: str, name: str, folder: str = "") -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(text)
            self.log_file(path, folder)

    def log_dict(self, data: Mapping[str, Any], name: str, folder: str = "") -> None:
        self.log_text(json.dumps(data, indent=2, default=float), name, folder)

    def log_figure(self, figure: Any, name: str, folder: str = "") -> None:
        """Log a matplotlib figure as a PNG, then close it."""
        import matplotlib.pyplot as plt

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            figure.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(figure)
            self.log_file(path, folder)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for backend in self.backends.values():
            backend.set_tags(tags)

    def urls(self) -> dict[str, str]:
        return {name: backend.url for name, backend in self.backends.items()}

    def close(self, status: str = "FINISHED") -> None:
        for backend in self.backends.values():
            backend.close(status)


def wandb_mode(configured: str) -> str:
    """Offline by default, the cloud when an API key is set (unless WANDB_MODE says otherwise)."""
    if configured == "offline" and os.environ.get("WANDB_API_KEY") and "WANDB_MODE" not in os.environ:
        return "online"
    return configured


def open_tracker(cfg: DictConfig, run_uri: str, run_name: str) -> Tracker:
    """Open (or resume) the run's trackers; the ids are kept in ``<run_uri>/tracking.json``."""
    style = cfg.logging.style
    if style not in STYLES:
        raise ValueError(f"logging.style={style!r} is not one of {', '.join(STYLES)}")
    ids_uri = storage.join(run_uri, artifacts.TRACKING_IDS_NAME)
    ids = json.loads(storage.read_text(ids_uri)) if storage.exists(ids_uri) else {}
    backends: dict[str, Any] = {}
    if style in ("mlflow", "both"):
        m = cfg.logging.mlflow
        backends["mlflow"] = MlflowTracker(
            m.tracking_uri, cfg.logging.experiment, m.artifact_uri, run_name, ids.get("mlflow")
        )
    if style in ("wandb", "both"):
        w = cfg.logging.wandb
        backends["wandb"] = WandbTracker(
            cfg.logging.experiment, w.entity, wandb_mode(w.mode), w.dir, run_name, ids.get("wandb")
        )
    tracker = Tracker(backends)
    if tracker.ids() != ids:
        storage.write_text(ids_uri, json.dumps(tracker.ids()))
        tracker.log_params(OmegaConf.to_container(cfg, resolve=True))
        tracker.log_text(OmegaConf.to_yaml(cfg, resolve=True), artifacts.RUN_CONFIG_NAME)
    return tracker


class TrackerLogger(Logger):
    """Lightning logger that forwards epoch-level metrics to a :class:`Tracker`, one step per
    epoch, and logs a progress line for each."""

    def __init__(self, tracker: Any):
        super().__init__()
        self.tracker = tracker

    @property
    def name(self) -> str:
        return "tracker"

    @property
    def version(self) -> str:
        return ",".join(self.tracker.ids().values())

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the composed config is logged when the tracker opens

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        epoch = int(metrics.get("epoch", step or 0)) + 1  # Lightning counts from 0; humans and steps from 1
        scalars = {
            k.replace("/", "_"): v for k, v in metrics.items() if k != "epoch" and not k.endswith("_step")
        }
        if not scalars:
            return
        self.tracker.log_metrics(scalars, step=epoch)
        shown = ", ".join(
            f"{k}={scalars[k]:.4f}"
            for k in ("train_loss_epoch", "train_miou", "val_loss", "val_miou")
            if k in scalars
        )
        log.info("[train_head] epoch %d: %s", epoch, shown)
