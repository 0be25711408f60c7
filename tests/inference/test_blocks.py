"""Blocks: a scene split into windows of its chip grid, predicted apart and assembled, equals the
one-pass prediction, also at block borders; and the block size follows the measured throughput."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference import block_outputs
from inference.blocks import WHOLE_SCENE, Throughput, block_sizing, measure_throughput
from inference.predict import plan_blocks, plan_tiling, predict_block, predict_scene
from inference.settings import DEFAULTS, ChainDefaults
from tests.inference.helpers_core import LocalPredictor, tiny_predictor
from training.data.synthetic import make_scene, write_naip_tif


@pytest.mark.parametrize(
    ("h", "w", "chip", "side"),
    [(700, 900, 128, 2), (256, 256, 128, 1), (100, 60, 128, 3), (1000, 640, 256, 2)],
)
def test_block_windows_partition_the_scene(h: int, w: int, chip: int, side: int) -> None:
    plan = plan_tiling(h, w, chip, 32)
    blocks = plan_blocks(plan, side)
    cover = np.zeros((h, w), dtype=np.int32)
    for b in blocks:
        y, x, bh, bw = b.window
        cover[y : y + bh, x : x + bw] += 1
        assert b.chips(plan) <= (side + 1) ** 2
    assert (cover == 1).all()
    assert [b.index for b in blocks] == list(range(len(blocks)))
    n_rows, n_cols = -(-len(plan.ys) // side), -(-len(plan.xs) // side)
    assert len(blocks) == n_rows * n_cols


def test_a_scene_no_larger_than_a_block_is_one_block() -> None:
    plan = plan_tiling(500, 500, 128, 32)
    (block,) = plan_blocks(plan, 8)
    assert block.window == (0, 0, 500, 500) and block.chips(plan) == plan.n_chips


def _scene(tmp_path: Path, seed: int, h: int, w: int) -> str:
    scene = make_scene(seed, max(h, w))
    path = tmp_path / f"scene-{seed}.tif"
    write_naip_tif(path, scene.image[:, :h, :w], scene.transform, scene.crs)
    return str(path)


def _assembled(predictor, path: str, side: int, chip: int, overlap: int):
    plan_pred = predict_scene(predictor, path, chip_size=chip, overlap=overlap, batch_size=4)
    h, w = plan_pred.shape
    plan = plan_tiling(h, w, chip, overlap)
    blocks = plan_blocks(plan, side)
    parts = []
    for b in blocks:
        pred = predict_block(
            predictor,
            path,
            b.index,
            block_chips=side,
            chip_size=chip,
            overlap=overlap,
            batch_size=4,
            expected_window=b.window,
        )
        parts.append((b.window, block_outputs.to_bytes(pred)))
    return plan_pred, block_outputs.assemble(path, parts), plan, blocks


def _border_band(shape: tuple[int, int], blocks, band: int = 8) -> np.ndarray:
    near = np.zeros(shape, dtype=bool)
    for b in blocks:
        y, x, _, _ = b.window
        if y:
            near[max(0, y - band) : y + band] = True
        if x:
            near[:, max(0, x - band) : x + band] = True
    return near


def test_blocks_equal_the_one_pass_prediction_exactly_for_a_per_pixel_model(tmp_path: Path) -> None:
    path = _scene(tmp_path, 3, 600, 700)
    one, assembled, _, blocks = _assembled(LocalPredictor(), path, side=2, chip=128, overlap=32)
    assert len(blocks) > 4
    np.testing.assert_array_equal(assembled.classes, one.classes)
    np.testing.assert_array_equal(assembled.confidence, one.confidence)
    np.testing.assert_array_equal(assembled.class_counts, one.class_counts)
    np.testing.assert_array_equal(assembled.band_counts, one.band_counts)
    assert assembled.confidence_sum == pytest.approx(one.confidence_sum, rel=1e-9)
    assert assembled.entropy_sum == pytest.approx(one.entropy_sum, rel=1e-6)
    assert assembled.low_confidence_count == one.low_confidence_count
    assert assembled.transform == one.transform and assembled.crs == one.crs


def test_blocks_are_seam_free_at_block_borders_for_a_context_model(tmp_path: Path) -> None:
    # The seam tests' tiny Clay (global attention, convs padded at chip borders): its output
    # depends on the whole chip, so only the same chips blended the same way agree.
    path = _scene(tmp_path, 5, 640, 720)
    one, assembled, _, blocks = _assembled(tiny_predictor(), path, side=2, chip=128, overlap=32)
    valid = one.valid
    same = assembled.classes == one.classes
    near = _border_band(one.shape, blocks) & valid
    overall, at_borders = same[valid].mean(), same[near].mean()
    print(
        f"{len(blocks)} blocks: agreement overall {overall:.4%}, within 8 px of block borders {at_borders:.4%}"
    )
    assert overall >= 0.995 and at_borders >= 0.995


def test_a_block_refuses_a_window_planned_with_other_settings(tmp_path: Path) -> None:
    path = _scene(tmp_path, 1, 400, 400)
    with pytest.raises(ValueError, match="not the planned"):
        predict_block(
            LocalPredictor(),
            path,
            0,
            block_chips=1,
            chip_size=128,
            overlap=32,
            expected_window=(0, 0, 50, 50),
        )
    with pytest.raises(ValueError, match="not one of"):
        predict_block(LocalPredictor(), path, 99, block_chips=1, chip_size=128, overlap=32)


def test_block_size_follows_the_measured_throughput() -> None:
    settings = ChainDefaults()
    fast = Throughput(seconds_per_chip=0.05, threads=2, chip_size=256)
    slow = Throughput(seconds_per_chip=4.25, threads=2, chip_size=256)  # large preset, AVX2 int8
    a = block_sizing(settings, fast, 1024)
    b = block_sizing(settings, slow, 1024)
    assert a.block_chips > b.block_chips >= 1
    budget = settings.infer_timeout_s * settings.block_time_share
    for sizing in (a, b):
        assert sizing.seconds_per_block <= budget
        assert (
            sizing.lambda_seconds_per_chip * (sizing.block_chips + 2) ** 2 > budget
        )  # the largest that fits
    # More memory, more vCPU: bigger blocks; a configured size wins.
    assert block_sizing(settings, slow, 3538).block_chips > b.block_chips
    assert block_sizing(settings.model_copy(update={"block_chips": 3}), slow, 1024).block_chips == 3
    # A model registered before throughputs were recorded keeps each scene in one block.
    legacy = block_sizing(settings, None, 1024)
    assert legacy.block_chips == WHOLE_SCENE and "no measured throughput" in legacy.reason
    assert len(plan_blocks(plan_tiling(7000, 6000), legacy.block_chips)) == 1
    with pytest.raises(ValueError, match="more memory"):
        block_sizing(settings, Throughput(seconds_per_chip=400.0, threads=2, chip_size=256), 1024)


def test_measured_throughput_is_positive_and_names_the_cpu() -> None:
    t = measure_throughput(LocalPredictor(), 64, chips=4)
    assert t.seconds_per_chip > 0 and t.threads >= 1 and t.chips == 4 and t.cpu
    assert Throughput.from_metrics({"throughput": t.to_dict()}) == t
    assert Throughput.from_metrics({"miou": 0.5}) is None
    assert DEFAULTS.lambda_vcpus(1769) == pytest.approx(1.0)
