"""Continued pretraining steps on a tiny synthetic home: inputs, resume from a checkpoint, the registered encoder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from core import encoder_registry, storage
from core.config import compose
from tests.training.pipeline_fixtures import TINY_OVERRIDES, make_tiny_home
from training import pretrain
from training.pipeline import load_run

#: A few seconds of pretraining on the tiny home's one 256 px training scene.
TINY = [
    *TINY_OVERRIDES,
    "pretrain.steps=4",
    "pretrain.batch_size=2",
    "pretrain.crop_size=32",
    "pretrain.checkpoint_every=2",
    "pretrain.log_every=2",
    "pretrain.figure_chips=1",
    "pretrain.decoder_depth=1",
    "pretrain.precision=32-true",  # bit-identical resumes on any CPU
]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LANDCOVER_HOME", str(make_tiny_home(tmp_path)))
    return tmp_path


@pytest.fixture(autouse=True)
def _no_tracking(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the steps; the tracker (MLflow) is covered by the DAG test."""

    class Quiet:
        def log_params(self, *_a, **_k) -> None: ...
        def log_metrics(self, *_a, **_k) -> None: ...
        def log_figure(self, figure, *_a, **_k) -> None:
            import matplotlib.pyplot as plt

            plt.close(figure)

        def set_tags(self, *_a, **_k) -> None: ...
        def close(self, *_a, **_k) -> None: ...
        def ids(self) -> dict:
            return {}

    monkeypatch.setattr(pretrain, "_tracker", lambda run: Quiet())


def test_input_prefix_lists_images_and_skips_labels(home: Path) -> None:
    source = home / "data" / "synthetic" / "train"
    prefix = home / "unlabelled"
    shutil.copytree(source, prefix)  # images with their *_lc.tif labels beside them
    cfg = compose([*TINY, f"pretrain.input_uri={prefix}"])
    description, scenes = pretrain.input_scenes(cfg)
    assert [s["scene_id"] for s in scenes] == ["synth-train-000"]
    assert scenes[0]["image_uri"].endswith("synth-train-000_naip-new.tif")
    assert str(prefix) in description
    empty = home / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no GeoTIFF"):
        pretrain.input_scenes(compose([*TINY, f"pretrain.input_uri={empty}"]))


def test_default_input_is_the_training_split_with_the_cache_recipe(home: Path) -> None:
    cfg = compose(TINY)
    description, scenes = pretrain.input_scenes(cfg)
    assert "training split" in description and len(scenes) == 1
    recipe = pretrain.chip_recipe(cfg)
    assert recipe.size == cfg.data.chip_size and recipe.random_count == cfg.training.chips_per_scene
    assert pretrain.chip_recipe(compose([*TINY, "pretrain.chips_per_scene=3"])).random_count == 3


def test_batches_are_a_function_of_seed_and_step() -> None:
    images = np.random.default_rng(0).integers(1, 255, (5, 4, 64, 64), dtype=np.uint8)
    a, valid = pretrain.sample_batch(images, 3, 32, seed=1, step_index=7)
    assert a.shape == (3, 4, 32, 32) and a.dtype == torch.float32
    assert valid.shape == (3, 16) and valid.eq(1).all()
    assert torch.equal(a, pretrain.sample_batch(images, 3, 32, seed=1, step_index=7)[0])
    assert not torch.equal(a, pretrain.sample_batch(images, 3, 32, seed=1, step_index=8)[0])


def test_figure_chips_avoid_nodata_borders() -> None:
    chips = np.full((6, 4, 16, 16), 100, dtype=np.uint8)
    chips[:3, :, :8] = 0  # the first three chips: half nodata
    assert pretrain.figure_chip_indices(chips, 2) == [3, 5]
    assert pretrain.figure_chip_indices(chips[:3], 2) == [0, 2]  # none is full: any


def test_nodata_patches_are_not_valid() -> None:
    chips = np.full((1, 4, 16, 16), 100, dtype=np.uint8)
    chips[0, :, :8, :8] = 0  # patch 0: nodata
    chips[0, :, 8, 8] = 0  # one nodata pixel in patch 3
    chips[0, 0, 0, 8] = 0  # one band at 0 is still data (patch 1)
    assert pretrain.valid_patches(chips).tolist() == [[0.0, 1.0, 1.0, 0.0]]


@pytest.mark.slow
def test_resume_from_checkpoint_continues_the_same_run(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash after the step-2 checkpoint, then a re-run: it resumes at step 2 and ends where an
    uninterrupted run ends."""
    straight = pretrain.start(compose(TINY), "straight")
    pretrain.select_scenes(straight)
    pretrain.pretrain_encoder(straight)
    expected = json.loads(storage.read_text(straight.result("pretrain_encoder")["losses_uri"]))
    assert len(expected) == 4

    crashed = pretrain.start(compose(TINY), "crashed")
    pretrain.select_scenes(crashed)
    real = pretrain.sample_batch

    def crash_at_step_3(images, batch_size, crop, seed, step_index):
        if step_index == 2:
            raise KeyboardInterrupt("simulated crash")
        return real(images, batch_size, crop, seed, step_index)

    monkeypatch.setattr(pretrain, "sample_batch", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        pretrain.pretrain_encoder(crashed)
    checkpoint = torch.load(
        storage.local_path(storage.join(crashed.uri, "pretrain", "checkpoint.pt")), weights_only=True
    )
    assert checkpoint["step"] == 2 and len(checkpoint["losses"]) == 2

    resumed_steps = []

    def record(images, batch_size, crop, seed, step_index):
        resumed_steps.append(step_index)
        return real(images, batch_size, crop, seed, step_index)

    monkeypatch.setattr(pretrain, "sample_batch", record)
    result = pretrain.pretrain_encoder(load_run(crashed.uri))
    assert resumed_steps == [2, 3]  # steps 1-2 came from the checkpoint
    got = json.loads(storage.read_text(result["losses_uri"]))
    assert got == pytest.approx(expected, rel=1e-5)


def test_registered_encoder_trains_a_segmenter_through_pretrained_uri(home: Path) -> None:
    cfg = compose(TINY)
    run = pretrain.run_all(cfg, "pt")
    registered = run.result("register_encoder")
    record = encoder_registry.resolve_encoder_version(cfg.storage.registry_uri, cfg.pretrain.encoder_name)
    assert record["version"] == registered["version"]
    assert record["objective"]["name"] == "mae" and record["objective"]["mask_ratio"] == 0.75
    assert record["objective"]["teacher_term"] == pretrain.TEACHER_TERM
    assert record["start"]["source"] == "random-init"
    assert record["lineage"]["scene_ids"] == ["synth-train-000"] and record["lineage"]["chips"] == 16
    card = storage.read_text(storage.join(record["version_uri"], encoder_registry.ENCODER_CARD_NAME))
    assert "omitted: teacher weights unavailable" in card and "synth-train-000" in card
    png = storage.read_bytes(record["figures"][encoder_registry.RECONSTRUCTION_FIGURE])
    assert png.startswith(b"\x89PNG")

    # The encoder moved away from its start, and loads strictly where model.pretrained_uri loads it.
    from training.pipeline import _build_segmenter

    start = _build_segmenter(cfg).encoder.state_dict()
    loaded = _build_segmenter(compose([*TINY, f"model.pretrained_uri={record['uri']}"])).encoder.state_dict()
    assert not torch.equal(
        start["transformer.layers.0.0.to_qkv.weight"], loaded["transformer.layers.0.0.to_qkv.weight"]
    )

    # A rerun of the finished run registers nothing new.
    pretrain.run_all(cfg, "pt")
    assert encoder_registry.list_encoder_versions(cfg.storage.registry_uri, cfg.pretrain.encoder_name) == [
        registered["version"]
    ]


def test_cpu_threads_back_off_on_a_busy_machine() -> None:
    default = torch.get_num_threads()
    assert pretrain.cpu_threads(3) == 3
    assert pretrain.cpu_threads(None) == default
    assert pretrain.cpu_threads("auto", load=0.5, cpus=2) == default
    assert pretrain.cpu_threads("auto", load=7.0, cpus=2) == (1 if default > 1 else default)
    with pytest.raises(ValueError, match="threads"):
        pretrain.cpu_threads(0)


def test_cli_pretrain_delegates(monkeypatch: pytest.MonkeyPatch) -> None:
    from setup import cli

    calls = []
    monkeypatch.setattr(
        pretrain, "cli", lambda argv, run_id=None, airflow=True: calls.append((argv, run_id, airflow))
    )
    assert cli.main(["pretrain", "pretrain.steps=3", "--run-id", "p1"]) == 0
    assert cli.main(["pretrain", "--no-airflow", "pretrain.lr=1e-4"]) == 0
    assert calls == [(["pretrain.steps=3"], "p1", True), (["pretrain.lr=1e-4"], None, False)]


def test_make_pretrain_calls_the_cli() -> None:
    import subprocess

    from core.config import REPO_ROOT

    proc = subprocess.run(
        ["make", "-n", "--no-print-directory", "pretrain", "STAMP=/dev/null"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "landcover pretrain" in proc.stdout
