"""Adaptive overlap: scenes of 1-16 km² cost at most 1.3x their chip sum; what the narrower seams
of small scenes cost in agreement with a one-pass prediction is measured and bounded."""

from __future__ import annotations

import numpy as np
import pytest

from core.naip import normalize
from inference.predict import MAX_TILING_COST, plan_tiling, predict_array
from tests.inference.helpers_core import border_mask, tiny_predictor
from training.data.synthetic import make_scene


@pytest.mark.parametrize("side", [1000, 1200, 1667, 2000, 3000, 4000])
def test_scenes_of_1_to_16_km2_cost_at_most_1_3x_their_chip_sum(side: int) -> None:
    plan = plan_tiling(side, side)  # default chip 256, overlap 32
    assert plan.cost_ratio <= 1.3, plan
    gaps = np.diff(plan.ys)
    assert (256 - gaps >= 8).all(), "neighbours always share at least one patch"


def test_overlap_narrows_only_when_it_saves_chips() -> None:
    wide = plan_tiling(1000, 1000, max_cost_ratio=None)
    assert wide.n_chips == 25 and wide.overlap == 32  # the old plan: 1.56x
    narrow = plan_tiling(1000, 1000)
    assert narrow.n_chips == 16 and narrow.overlap == 8 and narrow.cost_ratio <= MAX_TILING_COST
    # 2000 and 4000 px already cost <= 1.3x with 32 px overlaps: they keep them.
    assert plan_tiling(2000, 2000).overlap == 32 and plan_tiling(4000, 4000).overlap == 32


def test_narrowed_seams_cost_accuracy_near_borders() -> None:
    # The price of the cheaper plan, measured on the seam tests' context-sensitive tiny model:
    # at one patch of overlap, agreement with a one-pass prediction drops from ~98.6 % (32 px,
    # 25 chips) to ~91 % overall and ~76 % within 8 px of chip borders (16 chips).
    predictor = tiny_predictor()
    image = make_scene(5, 480).image
    chip = 128
    plan = plan_tiling(480, 480, chip, 32)
    assert plan.overlap < 32 and plan.n_chips == plan.baseline_chips  # narrowed to 16 chips
    one_pass = predictor.predict_proba(normalize(image[None]))[0].argmax(0)
    tiled = predict_array(predictor, image, chip_size=chip, overlap=32, batch_size=4)
    near = border_mask((480, 480), plan.ys, plan.xs, chip) & tiled.valid
    at_borders = (tiled.classes == one_pass)[near].mean()
    overall = (tiled.classes == one_pass)[tiled.valid].mean()
    print(f"overlap {plan.overlap}: agreement overall {overall:.4%}, near borders {at_borders:.4%}")
    assert overall >= 0.88 and at_borders >= 0.70
