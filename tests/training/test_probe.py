"""The linear probe on frozen features: it learns what the features separate, and only that."""

from __future__ import annotations

import torch

from training.probe import ProbeOptions, linear_probe

NAMES = ["a", "b", "c", "nodata"]


def _toy(n: int, seed: int, informative: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature grids (n, 6, 8, 8) whose cell class (0..2) is which of channels 0..2 is raised,
    plus noise channels; classes come in patches of 2x2 cells (land cover is spatially coherent)
    and labels (n, 32, 32) are the cell classes at 4 px per cell. With ``informative`` False the
    labels are drawn independently of the features."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.randint(0, 3, (n, 4, 4), generator=g).repeat_interleave(2, 1).repeat_interleave(2, 2)
    features = torch.randn(n, 6, 8, 8, generator=g) * 0.3
    features[:, :3] += 2.0 * torch.nn.functional.one_hot(cells, 3).permute(0, 3, 1, 2).float()
    if not informative:
        cells = torch.randint(0, 3, (n, 4, 4), generator=g).repeat_interleave(2, 1).repeat_interleave(2, 2)
    labels = cells.repeat_interleave(4, 1).repeat_interleave(4, 2).to(torch.uint8)
    labels[:, :2, :] = 3  # a strip of No Data (ignored)
    return features.half(), labels


def test_probe_learns_a_separable_problem_and_is_deterministic() -> None:
    train, test = _toy(48, 0), _toy(16, 1)
    options = ProbeOptions(epochs=8, lr=5e-2, batch_size=16)
    first = linear_probe(*train, *test, NAMES, ignore_index=3, options=options, seed=5)
    assert first["miou"] > 0.9, first
    assert set(first["per_class_iou"]) == set(NAMES) and first["per_class_iou"]["nodata"] is None
    assert first["train_chips"] == 48 and first["test_chips"] == 16 and first["channels"] == 6
    again = linear_probe(*train, *test, NAMES, ignore_index=3, options=options, seed=5)
    assert again["miou"] == first["miou"] and again["confusion_matrix"] == first["confusion_matrix"]


def test_probe_cannot_learn_labels_the_features_do_not_carry() -> None:
    # Features unrelated to the labels: the probe has nothing to read (chance is about 1/3 IoU per class).
    train, test = _toy(48, 0, informative=False), _toy(16, 1, informative=False)
    result = linear_probe(
        *train, *test, NAMES, ignore_index=3, options=ProbeOptions(epochs=8, lr=5e-2), seed=5
    )
    assert result["miou"] < 0.4, result


def test_probe_reads_view_zero_of_a_cache_of_views() -> None:
    train, test = _toy(32, 0), _toy(8, 1)
    views = torch.stack([train[0], torch.randn_like(train[0].float()).half()], dim=1)  # (N, 2, C, h, w)
    options = ProbeOptions(epochs=6, lr=5e-2, batch_size=16)
    plain = linear_probe(*train, *test, NAMES, ignore_index=3, options=options, seed=1)
    viewed = linear_probe(views, train[1], *test, NAMES, ignore_index=3, options=options, seed=1)
    assert viewed["miou"] == plain["miou"]
