"""A dry run of the chain: what the process step would run, and what it would take on Lambda.

:func:`dry_run` lists the input prefix with the process step's own listing
(:func:`inference.inputs.list_objects`), validates each image with its validation
(:func:`core.naip.validate_naip`, the same ``max_pixels``, the same outside-the-prefix check),
plans each valid scene's blocks as the process step does (:mod:`inference.planning`: the block
side from the champion's measured throughput, then each scene's blocks), and estimates
each scene's Lambda time and cost from a *measured* speed:

1. the ledger's recorded block durations (predicted blocks of the champion version), when the
   ledger exists and has some: seconds per chip as the infer calls took them where they ran
   (on Lambda in the cloud; on this machine for a local ledger), or else
2. ``make bench``'s report (``outputs/bench/bench.json``): a preset's served-path seconds per
   chip, scaled to the infer Lambda's vCPUs (:meth:`inference.blocks.Throughput.lambda_seconds_per_chip`),
   or else
3. no estimate at all ("no measurement yet: run make bench"), never a made-up figure.

When the ledger exists, each valid scene is marked new, known or already predicted by the
champion, found as the process step finds it (key and ETag, else the sha256 of its bytes); the
totals count only the scenes a real run would predict, not those it skips as already predicted.

Costs use :meth:`inference.settings.ChainDefaults.lambda_cost_usd` at the infer memory. Nothing
is written: no ledger row (the ledger is only read, and not created or migrated when absent),
no object, no manifest.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.naip import NaipValidationError, describe_raster, validate_naip
from inference.blocks import WHOLE_SCENE, BlockSizing, Throughput, block_sizing, throughput_from_bench
from inference.errors import NoChampionError
from inference.inputs import ListedObject, list_objects
from inference.planning import (
    OUTSIDE_INPUT_ROOT,
    block_chip_counts,
    outside_input_root,
    raster_metadata,
    run_block_sizing,
    scene_identity,
)
from inference.settings import ChainSettings
from inference.storage_endpoint import configure_storage

if TYPE_CHECKING:
    import sqlalchemy as sa

log = logging.getLogger(__name__)

#: What the report says when nothing measured the model's speed yet.
NO_MEASUREMENT = "no measurement yet: run make bench"

#: A valid scene's standing in the ledger (``SceneRow.ledger``; None when there is no ledger):
#: not in it, in it without the champion's prediction (both predicted by a real run), or
#: already predicted by the champion (a real run skips it, so the totals leave it out).
NEW, KNOWN, PREDICTED = "new", "known", "predicted"


@dataclass(frozen=True)
class Measurement:
    """Seconds one chip takes on the infer Lambda, and where that figure comes from."""

    seconds_per_chip: float
    source: str  # "ledger" or "bench"
    detail: str


@dataclass
class SceneRow:
    """One listed input: what the process step would make of it."""

    uri: str
    size_bytes: int
    verdict: str  # "ok" or "quarantined"
    reason: str | None = None
    detail: str | None = None
    width: int | None = None
    height: int | None = None
    crs: str | None = None
    bands: int | None = None
    dtype: str | None = None
    gsd_m: list[float] | None = None
    nodata: float | None = None
    ledger: str | None = None  # NEW, KNOWN or PREDICTED; None without a ledger
    area_km2: float | None = None
    blocks: int | None = None
    chips: int | None = None
    est_seconds: float | None = None
    est_usd: float | None = None


@dataclass
class DryRunReport:
    input_uri: str
    model_version: str | None
    block_chips: int
    sizing_reason: str
    measurement: Measurement | None
    memory_mb: int | None
    scenes: list[SceneRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, Any]:
        """Counts, and the area, blocks, chips and estimates of the scenes a real run would predict."""
        ok = [r for r in self.scenes if r.verdict == "ok"]
        todo = [r for r in ok if r.ledger != PREDICTED]
        estimated = self.measurement is not None and all(r.est_seconds is not None for r in todo)
        costed = estimated and all(r.est_usd is not None for r in todo)
        return {
            "scenes": len(self.scenes),
            "ok": len(ok),
            "quarantined": len(self.scenes) - len(ok),
            "to_predict": len(todo),
            "already_predicted": len(ok) - len(todo),
            "area_km2": sum(r.area_km2 or 0.0 for r in todo),
            "blocks": sum(r.blocks or 0 for r in todo),
            "chips": sum(r.chips or 0 for r in todo),
            "est_seconds": sum(r.est_seconds or 0.0 for r in todo) if estimated else None,
            "est_usd": sum(r.est_usd or 0.0 for r in todo) if costed else None,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_uri": self.input_uri,
            "model_version": self.model_version,
            "block_chips": self.block_chips,
            "sizing_reason": self.sizing_reason,
            "measurement": asdict(self.measurement) if self.measurement else None,
            "no_measurement": None if self.measurement else NO_MEASUREMENT,
            "memory_mb": self.memory_mb,
            "scenes": [asdict(r) for r in self.scenes],
            "totals": self.totals,
            "notes": self.notes,
        }


def dry_run(
    settings: ChainSettings, bench_report: Path | None = None, bench_preset: str = "large"
) -> DryRunReport:
    """What a run over ``settings.input_uri`` would do and cost; reads only (see the module doc)."""
    from inference import retry
    from inference.model_cache import champion

    configure_storage(settings)
    notes: list[str] = []
    try:
        pointer: dict[str, Any] | None = retry.call(lambda: champion(settings), "read the champion pointer")
    except NoChampionError as exc:
        pointer = None
        notes.append(f"{exc} (a real run stops there)")
    version = None if pointer is None else str(pointer["version"])
    if pointer is not None:
        sizing = run_block_sizing(settings, pointer)
    else:
        sizing = block_sizing(settings, None, settings.infer_memory_mb)

    measurement = ledger_measurement(settings, version)
    if measurement is None:
        measurement = bench_measurement(settings, bench_report, bench_preset)
    if measurement is None:
        notes.append(NO_MEASUREMENT)
    elif settings.infer_memory_mb is None:
        notes.append("no infer memory set (infra.infer_memory_mb): seconds without a cost")

    report = DryRunReport(
        settings.input_uri,
        version,
        sizing.block_chips,
        sizing.reason,
        measurement,
        settings.infer_memory_mb,
        notes=notes,
    )
    listed = retry.call(lambda: list_objects(settings.input_uri), f"list {settings.input_uri}")
    rows = [_scene_row(settings, obj.uri, obj.size, sizing, measurement) for obj in listed]
    report.scenes = rows
    note = mark_known(settings, version, list(zip(listed, rows, strict=True)))
    if note:
        notes.append(note)
    return report


def _scene_row(
    settings: ChainSettings, uri: str, size: int, sizing: BlockSizing, measurement: Measurement | None
) -> SceneRow:
    row = SceneRow(uri=uri, size_bytes=size, verdict="ok")
    outside = outside_input_root(settings, uri)
    if outside is not None:
        row.verdict, row.reason = "quarantined", OUTSIDE_INPUT_ROOT
        row.detail = f"{uri} resolves to {outside}, outside the input prefix {settings.input_uri}"
        return row
    try:
        info = validate_naip(uri, max_pixels=settings.max_pixels)
    except NaipValidationError as exc:
        row.verdict, row.reason, row.detail = "quarantined", exc.reason, exc.detail
        _describe(row, describe_raster(uri))
        return row
    except FileNotFoundError:
        row.verdict, row.reason = "skipped", "disappeared"
        row.detail = "gone between listing and reading (the process step skips it too)"
        return row
    _describe(row, info)
    row.area_km2 = raster_metadata(info)["area_km2"]
    blocks = block_chip_counts(settings, row.height or 0, row.width or 0, sizing.block_chips)
    row.blocks, row.chips = len(blocks), sum(blocks)
    if measurement is not None:
        row.est_seconds = measurement.seconds_per_chip * row.chips
        if settings.infer_memory_mb is not None:
            # Invocations: one infer call per block plus the scene's assemble call.
            row.est_usd = settings.lambda_cost_usd(row.est_seconds, settings.infer_memory_mb, row.blocks + 1)
    return row


def _describe(row: SceneRow, info: dict[str, Any] | None) -> None:
    if info is None:
        return
    row.width, row.height, row.crs = info["width"], info["height"], info["crs"]
    row.bands, row.nodata, row.gsd_m = info["count"], info["nodata"], info["gsd_m"]
    row.dtype = ",".join(sorted(set(info["dtypes"])))


def existing_ledger(settings: ChainSettings, table: str) -> sa.Engine | None:
    """The ledger's engine when it exists and has ``table``, else None; never created nor migrated."""
    import sqlalchemy as sa

    from inference.transactions import engine

    try:
        url = sa.make_url(settings.resolved_ledger_url())
    except Exception as exc:  # no URL or an unreadable secret: no ledger to read
        log.info("no ledger to read: %s", exc)
        return None
    if url.get_backend_name() == "sqlite" and (
        url.database in (None, "", ":memory:") or not Path(url.database).exists()
    ):
        return None
    try:
        eng = engine(settings)
        return eng if table in sa.inspect(eng).get_table_names() else None
    except sa.exc.SQLAlchemyError as exc:
        log.warning("could not read the ledger: %s", exc)
        return None


def mark_known(
    settings: ChainSettings, model_version: str | None, listed: list[tuple[ListedObject, SceneRow]]
) -> str | None:
    """Set each valid row's ``ledger`` mark (NEW, KNOWN, PREDICTED) from the ledger, read only.

    A scene is found as the process step finds it: by its key and listing ETag (no re-hash), else
    by its identity, the sha256 of its bytes (:func:`inference.planning.scene_identity`), so a
    copy at a new key is known too. Predicted means a prediction by ``model_version`` (by any
    version without a champion). Without a ledger nothing is marked; returns a note for the
    report when the ledger could not be read.
    """
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    from inference.ledger import repository
    from inference.ledger.models import Scene, SceneStatus

    eng = existing_ledger(settings, "scenes")
    if eng is None:
        return None
    try:
        with Session(eng) as s:  # never committed: closing rolls the read back
            for obj, row in listed:
                if row.verdict != "ok":
                    continue
                scene = repository.known_source(s, obj.uri, obj.etag)
                if scene is None:
                    try:
                        sha, _ = scene_identity(obj.uri)
                    except FileNotFoundError:
                        row.verdict, row.reason = "skipped", "disappeared"
                        row.detail = "gone between listing and reading (the process step skips it too)"
                        continue
                    scene = s.execute(sa.select(Scene).where(Scene.sha256 == sha)).scalar_one_or_none()
                if scene is None:
                    row.ledger = NEW
                elif model_version is None:
                    row.ledger = PREDICTED if scene.status == SceneStatus.predicted else KNOWN
                else:
                    done = repository.prediction_by(s, scene, model_version) is not None
                    row.ledger = PREDICTED if done else KNOWN
    except sa.exc.SQLAlchemyError as exc:
        log.warning("could not read the ledger's scenes: %s", exc)
        for _, row in listed:
            row.ledger = None
        return f"could not read the ledger's scenes ({exc.__class__.__name__}): scenes it knows are counted"
    return None


def ledger_measurement(settings: ChainSettings, model_version: str | None) -> Measurement | None:
    """Seconds per chip from the ledger's predicted blocks (of ``model_version`` when given).

    Each block's chips are counted on its scene's plan at the current chip size and overlap. A
    ledger that does not exist (an SQLite file not there yet) or has no blocks table is not
    created or migrated: the answer is None.
    """
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    from inference.ledger.models import Block, BlockStatus, Scene

    eng = existing_ledger(settings, "blocks")
    if eng is None:
        return None
    try:
        query = (
            sa.select(
                Block.block_index, Block.block_chips, Block.seconds, Scene.id, Scene.height, Scene.width
            )
            .join(Scene, Scene.id == Block.scene_id)
            .where(
                Block.status == BlockStatus.predicted, Block.seconds.is_not(None), Scene.height.is_not(None)
            )
        )
        if model_version is not None:
            query = query.where(Block.model_version == model_version)
        with Session(eng) as s:
            rows = s.execute(query).all()
    except sa.exc.SQLAlchemyError as exc:
        log.warning("could not read block durations from the ledger: %s", exc)
        return None
    seconds = chips = 0.0
    plans: dict[tuple[int, int], list[int]] = {}
    for index, block_chips, took, scene_id, height, width in rows:
        key = (scene_id, block_chips)
        if key not in plans:
            plans[key] = block_chip_counts(settings, height, width, block_chips)
        if index < len(plans[key]):
            seconds, chips = seconds + float(took), chips + plans[key][index]
    if not chips:
        return None
    which = f" of model {model_version}" if model_version else ""
    return Measurement(
        seconds / chips,
        "ledger",
        f"{len(rows)} predicted block(s){which} in the ledger: {seconds:.1f} s over {chips:.0f} chips",
    )


def bench_measurement(settings: ChainSettings, report: Path | None, preset: str) -> Measurement | None:
    """Seconds per chip on the infer Lambda from ``make bench``'s report, for ``preset``."""
    if report is None or not report.exists():
        return None
    try:
        throughput: Throughput | None = throughput_from_bench(json.loads(report.read_text()), preset)
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("could not read the bench report %s: %s", report, exc)
        return None
    if throughput is None:
        return None
    memory = settings.infer_memory_mb
    if memory is None:
        per_chip, on = throughput.seconds_per_chip, "as measured (no infer memory set to scale to)"
    else:
        per_chip = throughput.lambda_seconds_per_chip(settings, memory, settings.chip_size)
        on = f"on a {memory} MB Lambda ({settings.lambda_vcpus(memory):.2f} vCPU)"
    return Measurement(
        per_chip,
        "bench",
        f"{report} preset {preset}: {throughput.seconds_per_chip:.3f} s/chip measured on {throughput.threads} "
        f"threads ({throughput.cpu}) -> {per_chip:.3f} s/chip {on}",
    )


def format_report(report: DryRunReport) -> str:
    """A plain-text table of the scenes and the totals."""
    lines = [
        f"dry run        {report.input_uri} (nothing is written)",
        f"champion       {report.model_version or 'none'}",
        "blocks         "
        + (
            report.sizing_reason
            if report.block_chips == WHOLE_SCENE
            else f"{report.block_chips} x {report.block_chips} chips: {report.sizing_reason}"
        ),
        "speed          "
        + (
            f"{report.measurement.seconds_per_chip:.3f} s/chip from the {report.measurement.source}: "
            f"{report.measurement.detail}"
            if report.measurement
            else NO_MEASUREMENT
        ),
    ]
    header = ["scene", "size", "CRS", "bands", "verdict", "blocks", "est. s", "est. USD"]
    table = [header]
    for r in report.scenes:
        size = f"{r.width}x{r.height}" if r.width is not None else "-"
        bands = f"{r.bands}x{r.dtype}" if r.bands is not None else "-"
        if r.verdict != "ok":
            verdict = f"{r.verdict} ({r.reason})"
        else:
            verdict = "ok (already predicted)" if r.ledger == PREDICTED else "ok"
        table.append(
            [
                r.uri.rsplit("/", 1)[-1],
                size,
                r.crs or "-",
                bands,
                verdict,
                "-" if r.blocks is None else str(r.blocks),
                "-" if r.est_seconds is None else f"{r.est_seconds:.1f}",
                "-" if r.est_usd is None else f"{r.est_usd:.6f}",
            ]
        )
    t = report.totals
    table.append(
        [
            f"total ({t['to_predict']} to predict, {t['already_predicted']} already predicted, "
            f"{t['quarantined']} not ok)",
            f"{t['area_km2']:.3f} km²",
            "",
            "",
            "",
            str(t["blocks"]),
            "-" if t["est_seconds"] is None else f"{t['est_seconds']:.1f}",
            "-" if t["est_usd"] is None else f"{t['est_usd']:.6f}",
        ]
    )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    numeric = {5, 6, 7}
    for n, row in enumerate(table):
        if n == len(table) - 1:
            lines.append("  ".join("-" * w for w in widths))
        lines.append(
            "  ".join(
                cell.rjust(w) if i in numeric else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    for r in report.scenes:
        if r.verdict != "ok":
            lines.append(f"{r.verdict:<14} {r.uri}  [{r.reason}] {r.detail or ''}")
    lines += [f"note           {n}" for n in report.notes]
    return "\n".join(lines)
