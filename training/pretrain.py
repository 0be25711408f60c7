"""Continued pretraining of the Clay encoder with its masked-autoencoder objective, as pipeline steps.

    select_scenes -> pretrain_encoder -> register_encoder

The same :class:`~training.pipeline.Run` folder and idempotent :func:`~training.pipeline.step`
machinery as training: ``landcover pretrain`` (the ``pretrain`` DAG, in-process by default),
``landcover pretrain --no-airflow`` (:func:`run_all`) and ``python -m training.pretrain step
pretrain_encoder --run-uri ...`` (one step on an existing run: what an AWS Batch job runs).

- **select_scenes**: the unlabelled input. ``pretrain.input_uri`` null takes the training split of
  ``data`` with its labels ignored; else every GeoTIFF under that prefix, listed as the inference
  chain lists its input prefix.
- **pretrain_encoder**: chips cut with the feature cache's recipe (``data.chip_size``, nodata filter,
  seeded windows), then :class:`~training.models.mae.MaskedAutoencoder` trained with AdamW and a
  warmup + cosine schedule on the device :mod:`training.device` picks (bf16 autocast where native).
  Model, optimizer and step go to ``<run>/pretrain/checkpoint.pt`` every ``checkpoint_every``
  steps; a re-run (an Airflow retry, a Batch job's next attempt) continues from there. Loss per
  step goes to the tracker, a line every ``log_every`` steps to the log; the encoder, the loss
  curve and the reconstruction figure (masked input | reconstruction | truth) land in the run folder
  and the figure in MLflow.
- **register_encoder**: an encoder version in the registry (:mod:`core.encoder_registry`) with its
  record, card, lineage and figure.

Each batch is drawn from a generator seeded by ``seed`` and the step number, so a resumed run
draws the batches the uninterrupted one would have.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from core import artifacts, encoder_registry, storage
from training.pipeline import (
    Run,
    _build_segmenter,
    _chip_recipes,
    _scenes,
    _tracker,
    new_run_id,
    start_run,
    step,
)

log = logging.getLogger(__name__)

#: Folder of the pretraining artifacts inside the run folder.
PRETRAIN_DIR = "pretrain"
#: Model + optimizer + step, rewritten every ``pretrain.checkpoint_every`` steps.
CHECKPOINT_NAME = "checkpoint.pt"
#: The loss of every step (JSON list).
LOSSES_NAME = "losses.json"
#: The prefix of a run id made by :func:`run_all` / the DAG when none is given.
RUN_PREFIX = "pretrain"
#: What the record and card say about Clay's representation (teacher) term.
TEACHER_TERM = "omitted: teacher weights unavailable"
#: The DAG id of the pretraining DAG (training/dags/pretrain_dag.py).
DAG_ID = "pretrain"


def _pretrain_uri(run: Run, name: str) -> str:
    return storage.join(run.uri, PRETRAIN_DIR, name)


def chip_recipe(cfg: DictConfig):
    """The feature cache's training recipe, with ``pretrain.chips_per_scene`` chips per scene
    when set (null keeps the cache's own count: ``training.chips_per_scene``)."""
    recipe = _chip_recipes(cfg)["train"]
    if cfg.pretrain.chips_per_scene is not None:
        recipe = replace(recipe, random_count=int(cfg.pretrain.chips_per_scene))
    return recipe


def input_scenes(cfg: DictConfig) -> tuple[str, list[dict[str, str]]]:
    """The unlabelled scenes: (what they are, [{scene_id, image_uri}]).

    Raises:
        ValueError: the prefix holds no GeoTIFF.
    """
    from training.data.chesapeake import IMAGE_SUFFIX, LABEL_SUFFIX

    prefix = cfg.pretrain.input_uri
    if prefix is None:
        scenes = [{"scene_id": s.scene_id, "image_uri": s.image_uri} for s in _scenes(cfg)["train"]]
        return f"the training split of {cfg.data.name} data at {cfg.data.root_uri} (labels ignored)", scenes
    from inference.inputs import list_objects

    found = [o.uri for o in list_objects(storage.to_uri(str(prefix))) if not o.uri.endswith(LABEL_SUFFIX)]
    if not found:
        raise ValueError(
            f"pretrain.input_uri={prefix} holds no GeoTIFF (*.tif, *.tiff); point it at a folder or s3:// "
            "prefix of NAIP scenes, or set it to null for the training split"
        )
    scenes = []
    for uri in found:
        name = uri.rsplit("/", 1)[-1]
        stem = name[: -len(IMAGE_SUFFIX)] if name.endswith(IMAGE_SUFFIX) else name.rsplit(".", 1)[0]
        scenes.append({"scene_id": stem, "image_uri": uri})
    return f"GeoTIFFs under {prefix}", scenes


# -- steps ---------------------------------------------------------------------------------


@step
def select_scenes(run: Run) -> dict[str, Any]:
    """Record the unlabelled scenes and the chip recipe the encoder will be pretrained on."""
    cfg = run.cfg
    description, scenes = input_scenes(cfg)
    log.info("[select_scenes] %d scenes: %s", len(scenes), description)
    return {
        "input_uri": cfg.pretrain.input_uri or cfg.data.root_uri,
        "description": description,
        "scenes": scenes,
        "recipe": chip_recipe(cfg).identity(),
    }


def read_unlabelled_chips(scenes: Sequence[dict[str, str]], recipe) -> np.ndarray:
    """uint8 chips (N, 4, S, S) of ``scenes`` cut with ``recipe`` (no labels read).

    Raises:
        ValueError: no scene gave a usable chip.
    """
    from tqdm.auto import tqdm

    from training.data.chips import read_chips

    chips = []
    for index, scene in enumerate(tqdm(scenes, desc="chips", unit="scene", disable=None)):
        batch = read_chips(scene["image_uri"], None, **recipe.read_kwargs(index))
        chips.append(batch.images)
    images = np.concatenate(chips) if chips else np.empty((0, 4, recipe.size, recipe.size), np.uint8)
    if len(images) == 0:
        raise ValueError(f"no usable chips in {len(scenes)} scenes: all were mostly nodata")
    return images


def build_mae(cfg: DictConfig):
    """The start encoder (configured weights or seeded random init) inside a masked autoencoder."""
    from training.models.mae import MaskedAutoencoder

    p = cfg.pretrain
    encoder = _build_segmenter(cfg).encoder  # model.pretrained / pretrained_uri, or seeded random init
    encoder.requires_grad_(True)
    return MaskedAutoencoder(
        encoder,
        decoder_dim=p.decoder_dim,
        decoder_depth=p.decoder_depth,
        decoder_heads=p.decoder_heads,
        decoder_dim_head=p.decoder_dim_head,
        decoder_mlp_ratio=p.decoder_mlp_ratio,
        mask_ratio=p.mask_ratio,
        norm_pix_loss=p.norm_pix_loss,
        loss=p.loss,
    )


def valid_patches(chips, patch_size: int = 8):
    """(B, L) 1.0 where every pixel of the patch holds data (not all bands 0, NAIP's nodata), of
    uint8 chips (B, 4, H, W) as a tensor."""
    import torch

    data = (torch.as_tensor(chips) > 0).any(dim=1).float()  # (B, H, W)
    per_patch = torch.nn.functional.avg_pool2d(data[:, None], patch_size)  # (B, 1, h, w)
    return (per_patch.flatten(1) == 1.0).float()  # (B, L)


def sample_batch(images: np.ndarray, batch_size: int, crop: int | None, seed: int, step_index: int):
    """The batch of one step: normalised chips (B, 4, c, c) and their :func:`valid_patches` (B, L),
    patch-aligned crops and dihedral views drawn from a generator seeded by ``seed`` and
    ``step_index`` (resumable, reproducible)."""
    import torch

    from core.naip import normalize
    from training.features import dihedral

    rng = np.random.default_rng([seed, step_index])
    picks = rng.integers(0, len(images), batch_size)
    size = images.shape[-1]
    crop = min(crop or size, size)
    out = []
    for index in picks:
        r, c = (int(rng.integers(0, (size - crop) // 8 + 1)) * 8 for _ in range(2))
        chip = torch.from_numpy(images[index, :, r : r + crop, c : c + crop].copy())
        out.append(dihedral(chip, int(rng.integers(0, 4)), bool(rng.integers(0, 2))))
    raw = torch.stack(out)  # (B, 4, c, c) uint8
    return torch.from_numpy(normalize(raw.numpy())), valid_patches(raw)


def cpu_threads(setting: int | str | None, load: float | None = None, cpus: int | None = None) -> int:
    """The CPU threads of the pretrain step for ``pretrain.threads`` (see setup/conf/pretrain).

    ``auto``: 1 when the 1-minute load average (``load``, default the system's) already exceeds
    the CPU count (``cpus``), else torch's default; None: torch's default; a number: that many.
    """
    import os

    import torch

    default = torch.get_num_threads()
    if setting is None:
        return default
    if setting != "auto":
        if int(setting) < 1:
            raise ValueError(f"pretrain.threads={setting!r}: use auto, null or a positive number")
        return int(setting)
    load = os.getloadavg()[0] if load is None else load
    cpus = (os.cpu_count() or 1) if cpus is None else cpus
    if load > cpus and default > 1:
        log.info(
            "[pretrain_encoder] load average %.1f on %d CPUs: 1 thread (busy threads would wait on each other)",
            load,
            cpus,
        )
        return 1
    return default


def figure_chip_indices(images: np.ndarray, count: int) -> list[int]:
    """Chips for the figure: spread evenly over the chips that hold data in nearly every patch
    (the first chips of a scene are often its nodata border)."""
    full = (valid_patches(images).mean(dim=1) >= 0.95).nonzero().flatten().tolist()
    pool = full if len(full) >= count else list(range(len(images)))
    return [pool[i] for i in np.linspace(0, len(pool) - 1, min(count, len(pool))).round().astype(int)]


def _save_checkpoint(uri: str, mae, optimizer, step_done: int, losses: list[float]) -> None:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / CHECKPOINT_NAME
        torch.save(
            {
                "model": mae.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step_done,
                "losses": losses,
            },
            path,
        )
        storage.upload(path, uri)


def _load_checkpoint(uri: str, device: str) -> dict[str, Any] | None:
    import torch

    if not storage.exists(uri):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = storage.local_path(uri) or storage.download(uri, Path(tmp) / CHECKPOINT_NAME)
        # weights_only: tensors, numbers and lists only, never arbitrary pickled objects.
        return torch.load(local, map_location=device, weights_only=True)


def render_reconstruction(mae, pixels, seed: int):
    """The figure: one row per chip, columns masked input | reconstruction | truth (RGB)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from core.naip import NAIP_MEANS, NAIP_STDS

    mae.eval()
    masked, recon, truth = mae.reconstruct(pixels, generator=torch.Generator(pixels.device).manual_seed(seed))
    mean = torch.tensor(NAIP_MEANS).reshape(1, 4, 1, 1)
    std = torch.tensor(NAIP_STDS).reshape(1, 4, 1, 1)
    rows = len(pixels)
    figure, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows), squeeze=False)
    for col, (title, images) in enumerate(
        (("masked input", masked), ("reconstruction", recon), ("truth", truth))
    ):
        rgb = ((images.float().cpu() * std + mean)[:, :3] / 255.0).clamp(0, 1)  # red, green, blue
        for row in range(rows):
            ax = axes[row][col]
            ax.imshow(rgb[row].permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title)
    figure.suptitle(f"masked autoencoder, mask ratio {mae.mask_ratio:g} (masked patches at the band means)")
    figure.tight_layout()
    return figure


def _loss_summary(losses: Sequence[float]) -> dict[str, float]:
    tail = max(1, len(losses) // 10)
    return {
        "first_loss": float(losses[0]),
        "final_loss": float(losses[-1]),
        "mean_loss_first_10pct": float(np.mean(losses[:tail])),
        "mean_loss_last_10pct": float(np.mean(losses[-tail:])),
        "mean_loss": float(np.mean(losses)),
    }


@step
def pretrain_encoder(run: Run) -> dict[str, Any]:
    """Train the encoder by masked reconstruction; checkpoint and resume; log loss and figures."""
    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from core.naip import normalize
    from training.device import select_device
    from training.module import warmup_cosine

    cfg, p = run.cfg, run.cfg.pretrain
    selected = run.result("select_scenes")
    images = read_unlabelled_chips(selected["scenes"], chip_recipe(cfg))
    log.info(
        "[pretrain_encoder] %d chips of %d px from %d scenes",
        len(images),
        images.shape[-1],
        len(selected["scenes"]),
    )
    if p.crop_size is not None and int(p.crop_size) % 8:
        raise ValueError(f"pretrain.crop_size={p.crop_size} must be a multiple of the patch size 8")

    torch.set_num_threads(cpu_threads(p.get("threads", "auto")))
    device = select_device(str(p.precision), str(p.device))
    log.info("[pretrain_encoder] %d CPU threads", torch.get_num_threads())
    mae = build_mae(cfg).to(device.device)
    optimizer = torch.optim.AdamW(
        mae.parameters(),
        fused=True,  # one kernel over all parameters: the per-tensor loop costs more than the math here
        lr=float(p.lr),
        weight_decay=float(p.weight_decay),
        betas=tuple(float(b) for b in p.betas),
    )
    total = int(p.steps)
    checkpoint_uri = _pretrain_uri(run, CHECKPOINT_NAME)
    losses: list[float] = []
    start = 0
    if (saved := _load_checkpoint(checkpoint_uri, device.device)) is not None:
        mae.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        start, losses = int(saved["step"]), [float(v) for v in saved["losses"]]
        log.info("[pretrain_encoder] resuming at step %d of %d from %s", start, total, checkpoint_uri)

    tracker = _tracker(run)
    tracker.log_params(
        {
            "pretrain.chips": len(images),
            "pretrain.device": device.device,
            "pretrain.precision": device.precision,
        }
    )
    mae.train()
    started = time.perf_counter()
    bar = tqdm(range(start, total), desc="pretrain", unit="step", initial=start, total=total, disable=None)
    for index in bar:
        batch, valid = sample_batch(images, int(p.batch_size), p.crop_size, int(cfg.seed), index)
        batch, valid = batch.to(device.device), valid.to(device.device)
        generator = torch.Generator(device.device).manual_seed(int(cfg.seed) * 1_000_003 + index)
        lr = float(p.lr) * warmup_cosine(index, int(p.warmup), total, float(p.min_lr_ratio))
        for group in optimizer.param_groups:  # a pure function of the step: nothing to restore on resume
            group["lr"] = lr
        with device.autocast():
            out = mae(batch, generator=generator, valid=valid)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if p.grad_clip:
            torch.nn.utils.clip_grad_norm_(mae.parameters(), float(p.grad_clip))
        optimizer.step()
        loss = float(out.loss.detach())
        if not math.isfinite(loss):
            raise FloatingPointError(f"pretraining loss is {loss} at step {index + 1}; lower pretrain.lr")
        losses.append(loss)
        tracker.log_metrics({"pretrain_loss": loss, "pretrain_lr": lr}, step=index + 1)
        bar.set_postfix(loss=f"{loss:.4f}")
        done = index + 1
        if done % int(p.log_every) == 0 or done == total:
            rate = (time.perf_counter() - started) / (done - start)
            log.info(
                "[pretrain_encoder] step %d/%d loss %.4f (mean of last %d: %.4f) lr %.2e, %.2f s/step, ~%.0f s left",
                done, total, loss, int(p.log_every), float(np.mean(losses[-int(p.log_every):])), lr, rate, rate * (total - done),
            )  # fmt: skip
        if done % int(p.checkpoint_every) == 0 and done < total:
            _save_checkpoint(checkpoint_uri, mae, optimizer, done, losses)
    if start < total or not storage.exists(checkpoint_uri):
        _save_checkpoint(checkpoint_uri, mae, optimizer, total, losses)

    encoder_uri = _pretrain_uri(run, artifacts.ENCODER_WEIGHTS_NAME)
    figure_uri = _pretrain_uri(run, encoder_registry.RECONSTRUCTION_FIGURE)
    with tempfile.TemporaryDirectory() as tmp:
        # The ClayEncoder state dict as model.pretrained_uri loads it: fp32, dynamic embedding, on the CPU.
        state = {k: v.detach().float().cpu().contiguous() for k, v in mae.encoder.state_dict().items()}
        save_file(state, str(Path(tmp) / artifacts.ENCODER_WEIGHTS_NAME))
        storage.upload(Path(tmp) / artifacts.ENCODER_WEIGHTS_NAME, encoder_uri)
        picks = figure_chip_indices(images, max(1, int(p.figure_chips)))
        shown = torch.from_numpy(normalize(images[picks])).to(device.device)
        with device.autocast():
            figure = render_reconstruction(mae, shown, int(cfg.seed))
        figure_path = Path(tmp) / encoder_registry.RECONSTRUCTION_FIGURE
        figure.savefig(figure_path, dpi=90, bbox_inches="tight")
        storage.upload(figure_path, figure_uri)
        tracker.log_figure(figure, encoder_registry.RECONSTRUCTION_FIGURE)
    storage.write_text(_pretrain_uri(run, LOSSES_NAME), json.dumps(losses))
    summary = _loss_summary(losses)
    tracker.log_metrics({f"pretrain_{k}": v for k, v in summary.items()})
    log.info(
        "[pretrain_encoder] loss %.4f -> %.4f (mean of the first / last 10%%: %.4f -> %.4f) over %d steps",
        summary["first_loss"], summary["final_loss"], summary["mean_loss_first_10pct"], summary["mean_loss_last_10pct"], total,
    )  # fmt: skip
    return {
        "encoder_uri": encoder_uri,
        "figure_uri": figure_uri,
        "losses_uri": _pretrain_uri(run, LOSSES_NAME),
        "checkpoint_uri": checkpoint_uri,
        "steps": total,
        "chips": len(images),
        "chip_size": int(images.shape[-1]),
        **summary,
        "device": device.to_dict(),
        "tracking": tracker.ids(),
    }


def _objective(cfg: DictConfig, trained: dict[str, Any]) -> dict[str, Any]:
    p = cfg.pretrain
    return {
        "name": "mae",
        "mask_ratio": float(p.mask_ratio),
        "loss": str(p.loss),
        "norm_pix_loss": bool(p.norm_pix_loss),
        "decoder": {
            "dim": int(p.decoder_dim),
            "depth": int(p.decoder_depth),
            "heads": int(p.decoder_heads),
            "dim_head": int(p.decoder_dim_head),
            "mlp_ratio": float(p.decoder_mlp_ratio),
        },
        "steps": int(p.steps),
        "batch_size": int(p.batch_size),
        "crop_size": p.crop_size,
        "lr": float(p.lr),
        "weight_decay": float(p.weight_decay),
        "warmup": int(p.warmup),
        "final_loss": trained["final_loss"],
        "mean_loss": trained["mean_loss"],
        "first_loss": trained["first_loss"],
        "mean_loss_first_10pct": trained["mean_loss_first_10pct"],
        "mean_loss_last_10pct": trained["mean_loss_last_10pct"],
        "teacher_term": TEACHER_TERM,
    }


def encoder_card(record: dict[str, Any]) -> str:
    """The card of an encoder version (Markdown), from its record."""
    o, lineage, start = record["objective"], record["lineage"], record["start"]
    return "\n".join(
        [
            f"# Encoder {record['encoder_name']} (Clay {record['preset']}, continued pretraining)",
            "",
            "## What it is",
            f"A Clay {record['preset']} encoder trained further with Clay's masked-autoencoder objective: "
            f"{o['mask_ratio']:.0%} of each chip's 8 px patches masked at random, the encoder on the visible "
            f"patches only, a light decoder (width {o['decoder']['dim']}, {o['decoder']['depth']} blocks) "
            f"reconstructing the masked patches' Clay-normalised pixels{' (per-patch normalised)' if o['norm_pix_loss'] else ''}, "
            f"{o['loss'].upper()} loss on the masked patches only.",
            f"Clay's teacher (representation) term: {o['teacher_term']}; the loss is the reconstruction term alone.",
            "",
            "## Trained on",
            f"- {lineage['description']}",
            f"- {lineage['scene_count']} scenes ({', '.join(lineage['scene_ids'][:12])}{' ...' if lineage['scene_count'] > 12 else ''}), "
            f"{lineage['chips']} chips of {lineage['chip_size']} px (recipe {json.dumps(lineage['chip_recipe'], sort_keys=True)})",
            f"- run {lineage['run_uri']}",
            "",
            "## Training",
            f"- {o['steps']} steps of {o['batch_size']} chips ("
            + (f"random {o['crop_size']} px crops" if o["crop_size"] else "whole chips")
            + ", random flips and quarter turns), "
            f"AdamW lr {o['lr']:g} (warmup {o['warmup']} steps, cosine), weight decay {o['weight_decay']:g}",
            f"- loss {o['first_loss']:.4f} at the first step, {o['final_loss']:.4f} at the last; mean of the first 10% "
            f"{o['mean_loss_first_10pct']:.4f}, of the last 10% {o['mean_loss_last_10pct']:.4f}",
            f"- device {record['device']['device']} ({record['device']['precision']}): {record['device']['reason']}",
            "",
            "## Start weights",
            f"- {start.get('source')}"
            + (f" ({start.get('uri')})" if start.get("uri") else " (seeded random init)"),
            "",
            "## Use",
            "Train a head on it with `model.encoder_version=<this folder's version id>` (or `latest` while it is "
            "the newest version of its name). "
            "The reconstruction figure (masked input | reconstruction | truth) is `reconstruction.png` beside this card.",
            "",
            "## Limitations",
            "A short CPU pretraining run on the configured imagery: the features are tuned to that imagery and "
            "say nothing about other sensors or regions. Without the teacher term the CLS token is not trained "
            "towards any image-level semantics.",
            "",
        ]
    )


@step
def register_encoder(run: Run) -> dict[str, Any]:
    """Register the pretrained encoder as a version in the registry, with its card and figure."""
    from training.models.clay import resolve_config
    from training.models.weights import encoder_weights_record

    cfg = run.cfg
    root, name = str(cfg.storage.registry_uri), str(cfg.pretrain.encoder_name)
    # A retry after a crash between registering and recording finds its own version.
    for version in reversed(encoder_registry.list_encoder_versions(root, name)):
        found = encoder_registry.resolve_encoder_version(root, name, version)
        if found.get("lineage", {}).get("run_uri") == run.uri:
            return {"encoder_name": name, "version": version, "uri": found["uri"]}
    selected, trained = run.result("select_scenes"), run.result("pretrain_encoder")
    record = {
        "preset": str(cfg.model.preset),
        "encoder": resolve_config(str(cfg.model.preset)).to_dict(),
        "objective": _objective(cfg, trained),
        "start": encoder_weights_record(cfg),
        "lineage": {
            "input_uri": selected["input_uri"],
            "description": selected["description"],
            "scene_count": len(selected["scenes"]),
            "scene_ids": [s["scene_id"] for s in selected["scenes"]],
            "chip_recipe": selected["recipe"],
            "chips": trained["chips"],
            "chip_size": trained["chip_size"],
            "run_id": run.run_id,
            "run_uri": run.uri,
            "tracking": trained["tracking"],
        },
        "device": trained["device"],
        "losses_uri": trained["losses_uri"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        weights = storage.download(trained["encoder_uri"], Path(tmp) / artifacts.ENCODER_WEIGHTS_NAME)
        figure = storage.download(trained["figure_uri"], Path(tmp) / encoder_registry.RECONSTRUCTION_FIGURE)
        record_for_card = {**record, "encoder_name": name}
        version = encoder_registry.register_encoder_version(
            root,
            name,
            weights,
            record,
            encoder_card(record_for_card),
            {encoder_registry.RECONSTRUCTION_FIGURE: figure},
        )
    resolved = encoder_registry.resolve_encoder_version(root, name, version)
    tracker = _tracker(run)
    tracker.set_tags({"encoder_name": name, "encoder_version": version})
    tracker.close()
    log.info("[register_encoder] %s version %s: %s", name, version, resolved["uri"])
    return {
        "encoder_name": name,
        "version": version,
        "uri": resolved["uri"],
        "version_uri": resolved["version_uri"],
    }


#: The pretraining steps in order (the DAG and :func:`run_all` follow it).
STEPS = {
    "select_scenes": select_scenes,
    "pretrain_encoder": pretrain_encoder,
    "register_encoder": register_encoder,
}


def summary(run: Run) -> str:
    """A human summary of a finished pretraining run."""
    trained, registered = run.result("pretrain_encoder"), run.result("register_encoder")
    return "\n".join(
        [
            "",
            f"Pretraining run {run.run_id}  ({run.uri})",
            f"  chips                 {trained['chips']} of {trained['chip_size']} px from "
            f"{len(run.result('select_scenes')['scenes'])} scenes",
            f"  loss                  {trained['first_loss']:.4f} -> {trained['final_loss']:.4f} over {trained['steps']} steps "
            f"(mean of the first / last 10%: {trained['mean_loss_first_10pct']:.4f} -> {trained['mean_loss_last_10pct']:.4f})",
            f"  device                {trained['device']['device']} {trained['device']['precision']}",
            f"  training time         {trained['seconds']:.0f} s",
            f"  encoder version       {registered['encoder_name']} {registered['version']}",
            f"  weights               {registered['uri']}",
            f"  reconstruction        {trained['figure_uri']}",
            f"  use it                model.encoder_version={registered['version']}",
        ]
    )


def start(cfg: DictConfig, run_id: str | None = None) -> Run:
    """Start (or resume) a pretraining run."""
    return start_run(cfg, run_id or new_run_id(RUN_PREFIX))


def run_all(cfg: DictConfig, run_id: str | None = None) -> Run:
    """Every pretraining step in order, in this process (``landcover pretrain --no-airflow``)."""
    run = start(cfg, run_id)
    for step_fn in STEPS.values():
        step_fn(run)
    log.info("%s", summary(run))
    return run


def cli(overrides: Sequence[str], run_id: str | None = None, airflow: bool = True) -> int:
    """``landcover pretrain``: the pretrain DAG (in-process, or on AIRFLOW_URL / a running
    ``make airflow_ui``), or with ``airflow=False`` the same steps in this process."""
    import os

    from core.config import compose
    from training.pipeline import load_run, run_uri_for

    started = time.perf_counter()
    run_id = run_id or new_run_id(RUN_PREFIX)
    if not airflow:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        run_all(compose(list(overrides)), run_id)
    else:
        from training.airflow_runner import run_embedded, run_remote, running_ui

        url = os.environ.get("AIRFLOW_URL") or running_ui()
        if url:
            run_remote(url, DAG_ID, overrides, run_id, result_task=None)
        else:
            run_embedded(DAG_ID, list(overrides), run_id)  # the last task logs the summary
    run = load_run(run_uri_for(compose(list(overrides)), run_id))
    if airflow:
        print(summary(run), flush=True)
    print(f"  wall time             {time.perf_counter() - started:.0f} s", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.pretrain run [OVERRIDES...] [--run-id ID]`` or ``step NAME --run-uri URI``."""
    from core.config import compose
    from training.pipeline import load_run

    parser = argparse.ArgumentParser(prog="python -m training.pretrain", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    run_parser = sub.add_parser("run", help="every step in this process")
    run_parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. pretrain.steps=50")
    run_parser.add_argument(
        "--run-id", default=None, help="name (or resume) a run; default pretrain-<UTC time>"
    )
    step_parser = sub.add_parser("step", help="one step on an existing run (an AWS Batch job)")
    step_parser.add_argument("step", choices=list(STEPS))
    step_parser.add_argument("--run-uri", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.action == "run":
        run_all(compose(args.overrides), args.run_id)
    else:
        result = STEPS[args.step](load_run(args.run_uri))
        print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
