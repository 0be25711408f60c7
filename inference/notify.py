"""Completion notices: one compact summary per execution, built from the ledger, sent to SNS.

The state machine's Notify states call :func:`notify` after Observe (``outcome="succeeded"``)
and after RecordFailure (``outcome="failed"``, with the caught error). The summary is read from
the ledger, not from the execution's state, so it stays true after a redrive: the scenes and km²
are those of every prediction the run recorded, in any attempt.

- **scenes**: predicted by this run (the ledger's predictions of the run by its model version),
  failed, new and quarantined as the run recorded them;
- **km2**: the area of the predicted scenes (``scenes.area_km2``, their footprints), and
  **valid_km2**: the area the run mapped, nodata excluded (observe's ``area_km2`` metric);
- **quarantined**: the count, and the first few inputs quarantined while the run was open;
- **drift**: the run's drift flag (null when observe did not get to it);
- **outputs**: the output prefix and the first few STAC items of the run's predictions;
- **shadow**: when the registry's challenger predicted in shadow, the scenes it compared, its
  pixel-weighted agreement with the champion and its seconds (null otherwise);
- execution id, outcome, the ledger's run status, model version and, on failure, the error.

Where it goes: with ``NOTICE_TOPIC_ARN`` set, one SNS ``Publish`` (a JSON message for HTTPS and
a plain-text one for e-mail subscribers, ``MessageStructure="json"``; attribute ``status`` for
subscription filter policies). Either way the notice is written to
``<OUTPUT_URI>/notices/<execution id>.<outcome>.json`` (in embedded mode, with no topic, that file
and the log line are the notice). The file also makes a repeated Notify (a Lambda retry after the
publish went out, or a redrive that passes Notify again) a no-op: one message per execution and
outcome.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from core import storage
from inference import retry
from inference.ledger import repository
from inference.ledger.models import Metric, Prediction, Run, Scene, SceneStatus, utcnow
from inference.settings import ChainSettings

log = logging.getLogger(__name__)

#: Folder under the output prefix where notices are recorded.
NOTICES_DIR = "notices"
#: Outcomes the state machine reports.
OUTCOMES = ("succeeded", "failed")
#: How many quarantined inputs and STAC items a notice names (the counts are always complete).
MAX_LISTED = 10
#: SNS limits: a subject is at most 100 ASCII characters.
SUBJECT_MAX = 100


class NotifyError(RuntimeError):
    """The notice could not be built or sent."""


def notice_uri(settings: ChainSettings, execution_id: str, outcome: str) -> str:
    """Where the notice of ``execution_id`` with ``outcome`` is recorded."""
    return storage.join(settings.output_uri, NOTICES_DIR, f"{execution_id}.{outcome}.json")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _error_text(error: Any) -> str | None:
    """The caught error as one line: a string as it is, ``{"Error", "Cause"}`` as ``Error: Cause``."""
    if error is None or error == {}:
        return None
    if isinstance(error, dict):
        from inference.payloads import error_text

        return error_text(error)[:1000]
    return str(error)[:1000]


def run_predictions(s: Session, run: Run) -> list[tuple[str | None, float | None]]:
    """(STAC item URI, scene km²) of each prediction the run recorded with its model version."""
    if run.model_version is None:
        return []
    query = (
        sa.select(Prediction.stac_uri, Scene.area_km2)
        .join(Scene, Scene.id == Prediction.scene_id)
        .where(Prediction.run_id == run.id, Prediction.model_version == run.model_version)
        .order_by(Prediction.id)
    )
    return [(stac, area) for stac, area in s.execute(query).all()]


def quarantined_during(s: Session, run: Run) -> list[tuple[str, str | None]]:
    """(source URI, reason) of scenes first seen while the run was open and now quarantined.

    The ledger ties no quarantined scene to a run, so this is the scenes discovered between the
    run's start and its end (or now); the run's own count (``scenes_quarantined``) is exact.
    """
    until = run.finished_at or utcnow()
    query = (
        sa.select(Scene.source_uri, Scene.error)
        .where(
            Scene.status == SceneStatus.quarantined,
            Scene.discovered_at >= run.started_at,
            Scene.discovered_at <= until,
        )
        .order_by(Scene.id)
        .limit(MAX_LISTED)
    )
    return [(uri, reason) for uri, reason in s.execute(query).all()]


def run_metric(s: Session, run: Run, name: str) -> float | None:
    """A run-level metric of the run's model version (None when observe did not record it)."""
    return s.execute(
        sa.select(Metric.value).where(
            Metric.run_id == run.id,
            Metric.scene_id.is_(None),
            Metric.model_version == run.model_version,
            Metric.name == name,
            Metric.key == "",
        )
    ).scalar_one_or_none()


def drift_flag(s: Session, run: Run) -> bool | None:
    """The run's drift flag metric; None when observe did not record one."""
    value = run_metric(s, run, "drift_flag")
    return None if value is None else bool(value >= 1.0)


def _empty_summary(settings: ChainSettings, execution_id: str, outcome: str, error: Any) -> dict[str, Any]:
    return {
        "execution_id": execution_id,
        "outcome": outcome,
        "status": None,
        "model_version": None,
        "started_at": None,
        "finished_at": None,
        "scenes": {"predicted": 0, "failed": 0, "new": 0, "quarantined": 0},
        "km2": 0.0,
        "valid_km2": None,
        "quarantined": [],
        "drift": None,
        "outputs": {"prefix": settings.output_uri, "stac_items": [], "more_items": 0},
        "shadow": None,
        "error": _error_text(error),
    }


def build_summary(
    settings: ChainSettings, execution_id: str, outcome: str, error: Any = None
) -> dict[str, Any]:
    """The compact summary of one execution, from the ledger (see the module doc)."""
    from inference import shadow
    from inference.transactions import transaction

    if outcome not in OUTCOMES:
        raise NotifyError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")

    def read(s: Session) -> dict[str, Any]:
        try:
            run = repository.get_run(s, execution_id)
        except repository.RunNotFound:
            run = None
        summary = _empty_summary(settings, execution_id, outcome, error)
        if run is None:  # failed before process opened the run (e.g. no champion)
            return summary
        predictions = run_predictions(s, run)
        items = [stac for stac, _ in predictions if stac]
        summary.update(
            status=str(run.status),
            model_version=run.model_version,
            started_at=_iso(run.started_at),
            finished_at=_iso(run.finished_at),
            scenes={
                "predicted": len(predictions),
                "failed": run.scenes_failed,
                "new": run.scenes_discovered,
                "quarantined": run.scenes_quarantined,
            },
            km2=round(sum(area or 0.0 for _, area in predictions), 6),
            valid_km2=run_metric(s, run, "area_km2"),
            quarantined=[{"uri": uri, "reason": reason} for uri, reason in quarantined_during(s, run)],
            drift=drift_flag(s, run),
            outputs={
                "prefix": settings.output_uri,
                "stac_items": items[:MAX_LISTED],
                "more_items": max(0, len(items) - MAX_LISTED),
            },
            shadow=shadow.run_rows(settings, s, run.id)[1] or None,
            error=run.error or summary["error"],
        )
        return summary

    return transaction(settings, f"read the summary of {execution_id}", read)


def subject(summary: dict[str, Any]) -> str:
    """A one-line, ASCII, at most 100-character SNS subject."""
    scenes = summary["scenes"]
    text = (
        f"landcover run {summary['outcome']}: {scenes['predicted']} scenes, {summary['km2']:.2f} km2"
        + (", DRIFT" if summary.get("drift") else "")
        + (f", {scenes['quarantined']} quarantined" if scenes["quarantined"] else "")
    )
    return text.encode("ascii", "replace").decode()[:SUBJECT_MAX]


def format_text(summary: dict[str, Any]) -> str:
    """The plain-text notice (e-mail subscribers, the log)."""
    scenes = summary["scenes"]
    drift = summary["drift"]
    lines = [
        f"execution   {summary['execution_id']}  [{summary['outcome']}; ledger: {summary['status']}]",
        f"model       {summary['model_version']}",
        f"scenes      {scenes['predicted']} predicted, {scenes['failed']} failed, {scenes['new']} new, "
        f"{scenes['quarantined']} quarantined",
        f"area        {summary['km2']:.4f} km² of scenes"
        + ("" if summary["valid_km2"] is None else f", {summary['valid_km2']:.4f} km² mapped (valid pixels)"),
        f"drift       {'n/a' if drift is None else ('FLAGGED' if drift else 'ok')}",
        f"outputs     {summary['outputs']['prefix']}",
    ]
    lines += [f"  item      {uri}" for uri in summary["outputs"]["stac_items"]]
    if summary["outputs"]["more_items"]:
        lines.append(f"  ... and {summary['outputs']['more_items']} more")
    if summary.get("shadow"):
        sh = summary["shadow"]
        lines.append(
            f"shadow      challenger {sh['challenger_version']} agrees on {sh['agreement']:.2%} "
            f"of {sh['scenes']} scene(s), {sh['seconds']:.1f} s"
        )
    lines += [f"quarantined {q['uri']}  [{q['reason']}]" for q in summary["quarantined"]]
    if summary["error"]:
        lines.append(f"error       {summary['error']}")
    return "\n".join(lines)


def publish(topic_arn: str, summary: dict[str, Any]) -> str:
    """One SNS message (JSON by default, text for e-mail); returns its MessageId."""
    sns = storage.boto3_client("sns")
    message = {"default": json.dumps(summary, sort_keys=True), "email": format_text(summary)}
    answer = sns.publish(
        TopicArn=topic_arn,
        Subject=subject(summary),
        Message=json.dumps(message),
        MessageStructure="json",
        MessageAttributes={"status": {"DataType": "String", "StringValue": summary["outcome"]}},
    )
    return str(answer["MessageId"])


def notify(settings: ChainSettings, execution_id: str, outcome: str, error: Any = None) -> dict[str, Any]:
    """Send the notice of ``execution_id`` once; returns where it went (``channel``, ``uri``, ...)."""
    from inference.storage_endpoint import configure_storage

    if outcome not in OUTCOMES:
        raise NotifyError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
    configure_storage(settings)
    uri = notice_uri(settings, execution_id, outcome)
    if storage.exists(uri):
        sent = json.loads(storage.read_text(uri))
        log.info("notice of %s (%s) already sent: %s", execution_id, outcome, uri)
        return {
            "execution_id": execution_id,
            "channel": sent.get("channel"),
            "uri": uri,
            "status": "already_sent",
        }
    try:
        # Half of the call's retry budget for the ledger: the rest is kept for the publish.
        with retry.time_budget(int(retry.remaining_budget_s() * 500)):
            summary = build_summary(settings, execution_id, outcome, error)
    except (retry.TransientFaultError, sa.exc.SQLAlchemyError) as exc:
        # The ledger stayed unreachable: a notice that says so beats none (a failure notice most of all).
        log.error(
            "notice of %s: the ledger could not be read (%s); sending what the execution knows",
            execution_id,
            exc,
        )
        summary = {**_empty_summary(settings, execution_id, outcome, error), "ledger_error": str(exc)[:500]}
    record: dict[str, Any] = {"summary": summary, "sent_at": _iso(utcnow())}
    if settings.notice_topic_arn:
        record.update(channel="sns", topic_arn=settings.notice_topic_arn)
        record["message_id"] = publish(settings.notice_topic_arn, summary)
        log.info(
            "notice of %s published to %s (%s)", execution_id, settings.notice_topic_arn, record["message_id"]
        )
    else:
        record["channel"] = "file"
        log.warning(
            "notice of %s (no NOTICE_TOPIC_ARN: embedded mode), recorded at %s\n%s",
            execution_id,
            uri,
            format_text(summary),
        )
    # Written after the publish: a crash in between sends the notice again rather than never.
    storage.write_text(uri, json.dumps(record, indent=2, sort_keys=True))
    return {
        "execution_id": execution_id,
        "channel": record["channel"],
        "uri": uri,
        "status": "sent",
        "message_id": record.get("message_id"),
    }


def read_notice(settings: ChainSettings, execution_id: str, outcome: str) -> dict[str, Any] | None:
    """The recorded notice of an execution and outcome, or None."""
    uri = notice_uri(settings, execution_id, outcome)
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else None
