"""The ``MODEL_CARD.md`` written next to every registry version.

Pure text rendering (no I/O, no torch): :func:`render_model_card` turns what the registry
knows about a version — its lineage, held-out metrics, the majority-class baseline and the
caller's caveats — into Markdown that a reviewer can read before promoting it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from core import artifacts

DEFAULT_INTENDED_USE = (
    "Per-pixel land-cover segmentation of NAIP 4-band imagery (red, green, blue, nir; uint8; about "
    "1 m GSD) into the 7 Chesapeake classes (0 water, 1 tree canopy, 2 low vegetation, 3 barren, "
    "4 impervious (other), 5 impervious (road), 6 no data) with the Clay v1.5 encoder and the "
    "Chesapeake segmentation head. Outputs carry model class ids 0..6 and an explicit class table."
)

DEFAULT_LIMITATIONS: tuple[str, ...] = (
    "Scores are for the held-out split named under Data only; expect lower accuracy on other "
    "regions, seasons, sensors or resolutions.",
    "Rare classes (barren, roads) have few pixels: read the per-class IoU, not only the mean or "
    "the support-weighted IoU, before relying on them.",
    "Inputs must follow the NAIP band order and the Clay normalisation the model was trained with; "
    "other sensors or band orders give silently wrong maps.",
    "Not validated for decisions about individual parcels or for change detection without review.",
)

#: ``encoder_weights["source"]`` of a randomly initialised encoder (training.models.weights records it).
RANDOM_INIT = "random-init"
#: ``encoder_weights["source"]`` of an encoder version from the encoder registry (core.encoder_registry).
ENCODER_REGISTRY = "encoder-registry"
RANDOM_ENCODER_LIMITATION = (
    "The Clay encoder was randomly initialised, not pretrained: its features carry no pretraining, so "
    "expect far lower accuracy than with the official Clay v1.5 weights (model.pretrained=clay-v1.5)."
)

# Keys shown first in the metrics table, in this order; any other scalar follows sorted.
_HEADLINE_METRICS = ("miou", "weighted_iou", "pixel_accuracy", "accuracy", "loss")
_PER_CLASS_KEYS = ("per_class_iou", "iou_per_class", "class_iou")


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def per_class_iou(metrics: Mapping[str, Any], class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The per-class IoU in ``metrics`` as ``{class name: IoU}`` (empty when absent).

    Accepts a mapping under ``per_class_iou`` (or ``iou_per_class`` / ``class_iou``), or a list
    in class order, named by ``class_names`` or by index.
    """
    for key in _PER_CLASS_KEYS:
        value = metrics.get(key)
        if isinstance(value, Mapping):
            return {str(k): v for k, v in value.items()}
        if isinstance(value, Sequence) and not isinstance(value, str):
            names = list(class_names or [])
            return {(names[i] if i < len(names) else str(i)): v for i, v in enumerate(value)}
    return {}


def _scalars(metrics: Mapping[str, Any]) -> dict[str, Any]:
    found = {
        k: v
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k not in _PER_CLASS_KEYS
    }
    head = [k for k in _HEADLINE_METRICS if k in found]
    return {k: found[k] for k in [*head, *sorted(set(found) - set(head))]}


def _encoder_weights_text(weights: Mapping[str, Any]) -> str:
    """One line for the Summary table: where the encoder's weights came from and their digest."""
    source = weights.get("source") or "unknown"
    if source == RANDOM_INIT:
        return "random-init (not pretrained)"
    if source == ENCODER_REGISTRY:
        parts = [f"encoder registry: {weights.get('encoder_name')} version {weights.get('version')}"]
        if weights.get("objective"):
            parts.append(f"objective {weights['objective']}")
        if weights.get("input_uri"):
            parts.append(f"pretrained on {weights['input_uri']}")
        if weights.get("sha256"):
            parts.append(f"sha256 {weights['sha256']}")
        if weights.get("uri"):
            parts.append(f"from {weights['uri']}")
        return ", ".join(parts)
    parts = [str(source)]
    if weights.get("uri") and weights.get("uri") != source:
        parts.append(f"from {weights['uri']}")
    if weights.get("sha256"):
        pinned = (
            "verified against the pinned digest" if weights.get("verified") else "not verified against a pin"
        )
        parts.append(f"sha256 {weights['sha256']} ({pinned})")
    return ", ".join(parts)


def _metrics_section(
    metrics: Mapping[str, Any], baseline: Mapping[str, Any] | None, class_names: Sequence[str] | None
) -> list[str]:
    lines = ["## Held-out metrics", ""]
    scalars = _scalars(metrics)
    base_scalars = _scalars(baseline) if baseline else {}
    if baseline:
        lines += ["| metric | this model | majority-class baseline |", "|---|---|---|"]
        lines += [f"| {_cell(k)} | {_fmt(v)} | {_fmt(base_scalars.get(k))} |" for k, v in scalars.items()]
    else:
        lines += ["| metric | this model |", "|---|---|"]
        lines += [f"| {_cell(k)} | {_fmt(v)} |" for k, v in scalars.items()]
    lines.append("")

    classes = per_class_iou(metrics, class_names)
    if classes:
        base_classes = per_class_iou(baseline, class_names) if baseline else {}
        lines += ["### Per-class IoU", ""]
        if baseline:
            lines += ["| class | IoU | majority-class baseline IoU |", "|---|---|---|"]
            lines += [
                f"| {_cell(name)} | {_fmt(iou)} | {_fmt(base_classes.get(name))} |"
                for name, iou in classes.items()
            ]
        else:
            lines += ["| class | IoU |", "|---|---|"]
            lines += [f"| {_cell(name)} | {_fmt(iou)} |" for name, iou in classes.items()]
        lines += ["", "n/a: the class has no pixels in the held-out set (its IoU is undefined).", ""]
    if baseline:
        label = baseline.get("class") or baseline.get("majority_class")
        if label is not None:
            lines += [f"The baseline predicts the majority class ({_cell(label)}) everywhere.", ""]
    return lines + _foreign_section(metrics.get("foreign_family"))


def _foreign_section(foreign: Any) -> list[str]:
    """The foreign scene families' table, worst first (a model is as robust as its worst family)."""
    if not isinstance(foreign, Mapping) or not foreign.get("families"):
        return []
    rows = sorted(foreign["families"].items(), key=lambda item: item[1].get("pixel_accuracy") or 0.0)
    lines = [
        "### Foreign scene families",
        "",
        "Scenes the training generator does not make (square patches of plain class spectra), one "
        "change per family; measured on the served path, never tuned to.",
        "",
        "| family | what changes | pixel accuracy | within-patch majority |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {_cell(name)} | {_cell(r.get('family', ''))} | {_fmt(r.get('pixel_accuracy'))} "
        f"| {_fmt(r.get('patch_majority_share'))} |"
        for name, r in rows
    ]
    return [*lines, ""]


def render_model_card(
    *,
    model_name: str,
    version: str,
    created_at: str,
    version_uri: str,
    metrics: Mapping[str, Any],
    run_id: str | None = None,
    source: Mapping[str, Any] | None = None,
    data_description: str = "",
    baseline: Mapping[str, Any] | None = None,
    caveat: str | None = None,
    intended_use: str | None = None,
    limitations: Sequence[str] = DEFAULT_LIMITATIONS,
    class_names: Sequence[str] | None = None,
    export_sha256: str | None = None,
    export_bytes: int | None = None,
    encoder_weights: Mapping[str, Any] | None = None,
) -> str:
    """Render the Markdown model card of one registry version.

    Args:
        model_name: Registry model name.
        version: Registry version id.
        created_at: ISO-8601 UTC time the version was registered.
        version_uri: URI of the version folder.
        metrics: Held-out metrics; ``miou`` plus optional per-class IoU and other scalars.
        run_id: Tracking run that produced the version (lineage), if any.
        source: Where the weights came from, e.g. ``{"kind": "seed-import", "checkpoint": ...}``.
        data_description: What the model was trained and evaluated on.
        baseline: Majority-class baseline metrics on the same held-out set, if measured.
        caveat: A caller-provided warning shown first under Limitations.
        intended_use: Replaces :data:`DEFAULT_INTENDED_USE`.
        limitations: General limitations listed after the caveat.
        class_names: Names for a per-class IoU given as a list in class order.
        export_sha256: sha256 of the compact export file.
        export_bytes: Size of the compact export file.
        encoder_weights: The encoder's weights, ``{"source": "random-init" | <name or uri>,
            "uri": ..., "sha256": ..., "verified": bool}``; default ``source["encoder_weights"]``.
    """
    if encoder_weights is None and source:
        encoder_weights = source.get("encoder_weights")
    lines = [f"# Model card: {model_name} {version}", ""]
    if caveat:
        lines += [f"> **Caveat:** {caveat}", ""]
    lines += [
        "## Summary",
        "",
        "| field | value |",
        "|---|---|",
        f"| model | {_cell(model_name)} |",
        f"| version | {_cell(version)} |",
        f"| created (UTC) | {_cell(created_at)} |",
        f"| held-out mIoU | {_fmt(metrics.get('miou'))} |",
    ]
    if metrics.get("probe_miou") is not None:
        # What the frozen encoder's features alone separate (training.probe), beside the served figure.
        lines.append(f"| linear probe mIoU (frozen encoder features only) | {_fmt(metrics['probe_miou'])} |")
    lines += [
        f"| location | {_cell(version_uri)} |",
        f"| source run id | {_cell(run_id or 'none')} |",
    ]
    if encoder_weights:
        lines.append(f"| encoder weights | {_cell(_encoder_weights_text(encoder_weights))} |")
    if export_sha256:
        lines.append(f"| export sha256 | {export_sha256} |")
    if export_bytes is not None:
        lines.append(f"| export size | {export_bytes / 1e6:.1f} MB ({export_bytes} bytes) |")
    lines.append("")

    lines += ["## Lineage", ""]
    lines.append(f"- Source run: {run_id or 'none recorded'}")
    if source:
        lines.append("- Source: `" + json.dumps(dict(source), sort_keys=True, default=str) + "`")
    lines += [
        f"- Files: `{artifacts.EXPORT_NAME}` (compact export), `{artifacts.CONFIG_NAME}` (composed config), "
        f"`{artifacts.METRICS_NAME}` (held-out metrics), `{artifacts.VERSION_MANIFEST_NAME}` (manifest).",
        "",
        "## Data",
        "",
        data_description.strip() or "Not described by the registering run.",
        "",
    ]
    lines += _metrics_section(metrics, baseline, class_names)
    lines += ["## Intended use", "", (intended_use or DEFAULT_INTENDED_USE).strip(), ""]
    lines += ["## Limitations", ""]
    if caveat:
        lines.append(f"- {caveat}")
    if encoder_weights and encoder_weights.get("source") == RANDOM_INIT:
        lines.append(f"- {RANDOM_ENCODER_LIMITATION}")
    lines += [f"- {item}" for item in limitations]
    lines.append("")
    return "\n".join(lines)
