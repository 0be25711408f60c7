"""Compare finished training runs by encoder: random-init against encoder registry versions.

    python -m setup.tools.compare_encoders RUN_URI [RUN_URI ...]

Each argument is a run folder (``<storage.root_uri>/runs/<run_id>``, a path or a URI) whose
evaluate step has finished. Everything is read from the run itself, never recomputed: the
encoder and seed from its stored ``config.yaml`` (``model.encoder_version`` pinned to a concrete
version when the run started, ``seed``), the figures from the metrics file the evaluate step
recorded (``steps/evaluate.json`` -> ``metrics_uri``): the served path's held-out mIoU, the worst
class and its IoU, the road IoU, the worst foreign scene family's pixel accuracy, and the linear
probe's mIoU (``probe_miou``; n/a for runs from before the probe existed).

Prints a Markdown table, one row per run, then the mean per encoder and each encoder's
difference from the random-init mean.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import mean
from typing import Any

from core import storage
from core.classes import CLASS_NAMES
from training.pipeline import load_run

#: The road class (id 5 in core.classes): thin, rare, and the first a weak encoder loses.
ROAD = CLASS_NAMES[5]
#: The label of runs whose encoder was randomly initialised.
RANDOM = "random"
#: Numeric columns, in table order: (key, header).
COLUMNS = (
    ("miou", "served held-out mIoU"),
    ("worst_class_iou", "worst class IoU"),
    ("road_iou", "road IoU"),
    ("foreign_accuracy", "worst foreign family pixel accuracy"),
    ("probe_miou", "probe mIoU"),
)


@dataclass(frozen=True)
class RunFigures:
    """What one finished run reports, as read from its folder."""

    run_id: str
    encoder: str  #: ``random``, ``<encoder_name> <version>``, or another source (catalog name, file)
    seed: int
    values: dict[str, float | None]
    worst_class: str | None


def encoder_label(cfg: Any) -> str:
    """The run's encoder as the table names it, from its stored config."""
    model = cfg.model
    if model.get("encoder_version"):
        return f"{model.get('encoder_name')} {model.encoder_version}"
    if model.get("pretrained"):
        return str(model.pretrained)
    if model.get("pretrained_uri"):
        return str(model.pretrained_uri)
    return RANDOM


def read_run(uri: str) -> RunFigures:
    """The figures of the finished run at ``uri``.

    Raises:
        RuntimeError: the run's evaluate step has not run.
    """
    run = load_run(storage.to_uri(uri))
    metrics = json.loads(storage.read_text(run.result("evaluate")["metrics_uri"]))
    per_class = {k: v for k, v in metrics["per_class_iou"].items() if v is not None}
    worst = min(per_class, key=per_class.__getitem__) if per_class else None
    foreign = metrics.get("foreign_family") or {}
    return RunFigures(
        run_id=run.run_id,
        encoder=encoder_label(run.cfg),
        seed=int(run.cfg.seed),
        values={
            "miou": metrics["miou"],
            "worst_class_iou": per_class.get(worst) if worst else None,
            "road_iou": metrics["per_class_iou"].get(ROAD),
            "foreign_accuracy": foreign.get("pixel_accuracy"),
            "probe_miou": metrics.get("probe_miou"),
        },
        worst_class=worst,
    )


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _means(runs: Sequence[RunFigures]) -> dict[str, float | None]:
    out = {}
    for key, _ in COLUMNS:
        values = [r.values[key] for r in runs if r.values[key] is not None]
        out[key] = mean(values) if values else None
    return out


def render(runs: Sequence[RunFigures]) -> str:
    """The Markdown report: per run, mean per encoder, difference from the random-init mean."""
    headers = [header for _, header in COLUMNS]
    lines = [
        "| run | encoder | seed | "
        + " | ".join(headers[:1])
        + " | worst class | "
        + " | ".join(headers[1:])
        + " |",
        "|---|---|---|" + "---|" * (len(headers) + 1),
    ]
    for r in sorted(runs, key=lambda r: (r.encoder != RANDOM, r.encoder, r.seed)):
        v = r.values
        lines.append(
            f"| {r.run_id} | {r.encoder} | {r.seed} | {_fmt(v['miou'])} | {r.worst_class or 'n/a'} | "
            + " | ".join(_fmt(v[k]) for k, _ in COLUMNS[1:])
            + " |"
        )
    groups: dict[str, list[RunFigures]] = {}
    for r in runs:
        groups.setdefault(r.encoder, []).append(r)
    means = {encoder: _means(members) for encoder, members in groups.items()}
    order = sorted(groups, key=lambda e: (e != RANDOM, e))
    lines += [
        "",
        "| encoder | runs | seeds | " + " | ".join(headers) + " |",
        "|---|---|---|" + "---|" * len(headers),
    ]
    for encoder in order:
        seeds = ", ".join(str(r.seed) for r in sorted(groups[encoder], key=lambda r: r.seed))
        lines.append(
            f"| {encoder} (mean) | {len(groups[encoder])} | {seeds} | "
            + " | ".join(_fmt(means[encoder][k]) for k, _ in COLUMNS)
            + " |"
        )
    if RANDOM in means and len(order) > 1:
        lines += [
            "",
            f"| encoder minus {RANDOM} (means) | " + " | ".join(headers) + " |",
            "|---|" + "---|" * len(headers),
        ]
        base = means[RANDOM]
        for encoder in order[1:]:
            diffs = [
                None if means[encoder][k] is None or base[k] is None else means[encoder][k] - base[k]
                for k, _ in COLUMNS
            ]
            lines.append(f"| {encoder} | " + " | ".join(_fmt(d, signed=True) for d in diffs) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="finished run folders (paths or URIs)")
    args = parser.parse_args(argv)
    sys.stdout.write(render([read_run(uri) for uri in args.runs]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
