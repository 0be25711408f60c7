"""Run the inference chain locally: the real state machine on moto's interpreter, real handlers.

``make run_inference`` -> ``python -m setup.tools.run_local run [hydra overrides]``
    One execution of ``pipeline.asl.json`` over the input prefix (Hydra ``inference.input_uri``).
    If the prefix holds no image yet, the synthetic test scenes (``data/synthetic/test``) are
    copied into it first. Storage is ``file://`` and the ledger SQLite by default;
    ``--ledger-url postgresql+psycopg2://...`` and ``--s3-prefix s3://bucket/prefix`` (with
    ``storage=s3`` or ``AWS_ENDPOINT_URL`` for a moto server) switch to Postgres and S3.

``make upload_and_run_inference`` -> ``python -m setup.tools.run_local upload --scenes N --interval S [--window W]``
    A demo of runs triggered by new imagery: drops N new synthetic scenes into the input prefix,
    one every S seconds. Each upload's S3 ``Object Created`` event goes through the same
    coalescing as the trigger Lambda (:func:`inference.trigger.handle_event`, against the local
    state machine): uploads within one window of W seconds (``infra.trigger_window_s``, default
    the chain's ``TRIGGER_WINDOW_S``) start one execution, which waits for the window to close
    and then predicts them together. Each execution's summary and completion notice are printed.

``make run_inference ARGS="--scene-size 6000x7000"`` (``make scale_run``)
    A scale run: one synthetic scene of that size (a NAIP quarter-quad is about 6,000 x 7,000 px)
    is written into the input prefix and predicted in many blocks. Besides the summary it prints
    the blocks, seconds per km², the peak RSS while infer calls ran, and, from ``make bench``'s
    measured large-preset throughput (``--bench``), the time and cost of the large preset per
    block and per scene on Lambda.

``landcover infer --dry-run [--json] [hydra overrides]`` (``run --dry-run``)
    What a run would do, writing nothing (no ledger row, no object): the scenes under the input
    prefix with the process step's own listing and validation (size, CRS, bands, ok or
    quarantined with the reason), their blocks as the process step plans them, and each scene's
    estimated Lambda seconds and USD from a measured speed (the ledger's block durations, else
    ``make bench``'s report), with totals; ``--json`` prints the same as JSON
    (:mod:`inference.dry_run`). Without any measurement it says so and estimates nothing.

All but the dry run print a summary table: scenes, km², class areas, drift flags, quarantined
inputs, time. A champion must exist in the registry (``make train_baseline`` makes one).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.logs import configure_console
from inference.settings import ChainSettings, settings_from_config

log = logging.getLogger("setup.tools.run_local")

SYNTHETIC_TEST_GLOB = "data/synthetic/test/*_naip-new.tif"


class RunLocalError(RuntimeError):
    """A precondition of a local run is not met; the message says what to do."""


def load_settings(overrides: Sequence[str], ledger_url: str | None, s3_prefix: str | None) -> ChainSettings:
    """Compose the Hydra config and map it to chain settings, applying the CLI switches."""
    from core.config import apply_storage, compose

    cfg = compose(list(overrides))
    apply_storage(cfg)
    extra: dict[str, Any] = {
        "model_cache_dir": str(
            Path(cfg.storage.root_uri.removeprefix("file://")) / "inference" / "model-cache"
        )
        if str(cfg.storage.root_uri).startswith("file://")
        else "/tmp/model",
    }
    if cfg.infra.get("trigger_window_s") is not None:  # the deployment's window (Terraform's too)
        extra["trigger_window_s"] = cfg.infra.trigger_window_s
    if ledger_url:
        extra["ledger_url"] = ledger_url
    if s3_prefix:
        prefix = s3_prefix.rstrip("/")
        extra.update(input_uri=f"{prefix}/input", output_uri=f"{prefix}/predictions")
    return settings_from_config(cfg, **extra)


def prepare_ledger(settings: ChainSettings) -> None:
    """Create/upgrade the ledger schema (idempotent); SQLite files get their folder made."""
    import sqlalchemy as sa

    from inference.ledger import db

    url = settings.resolved_ledger_url()
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    db.migrate(url)


def seed_input(settings: ChainSettings, repo_root: Path) -> list[str]:
    """Copy the synthetic test scenes into an input prefix that holds no image yet."""
    from core import storage
    from inference.inputs import list_objects

    if list_objects(settings.input_uri):
        return []
    sources = sorted(repo_root.glob(SYNTHETIC_TEST_GLOB))
    if not sources:
        raise RunLocalError(
            f"the input prefix {settings.input_uri} is empty and there are no synthetic test scenes "
            f"({SYNTHETIC_TEST_GLOB}); run `make synthetic_data` or put NAIP GeoTIFFs there"
        )
    copied = []
    for src in sources:
        dest = storage.join(settings.input_uri, src.name)
        storage.upload(src, dest)
        copied.append(dest)
    return copied


def run_once(settings: ChainSettings, concurrency: int = 1, rss: RssSampler | None = None) -> dict[str, Any]:
    """One execution of the state machine with the real handlers; returns the summary.

    ``rss``: a sampler that records the process's peak RSS while each function's calls run.
    """
    from inference import handlers
    from setup.tools import local_statemachine as local

    handlers.configure(settings)
    functions = local.default_handlers()
    if rss is not None:
        functions = {name: rss.wrap(name, fn) for name, fn in functions.items()}
    try:
        execution = local.run_execution(settings.manifest_prefix, concurrency=concurrency, handlers=functions)
    finally:
        handlers.configure(None)
    return summarize(settings, execution)


def _rss_bytes() -> int:
    """This process's current resident set size (``/proc/self/statm``)."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler:
    """Peak RSS of this process while a function's calls run, sampled every ``interval_s``.

    Locally every handler shares one process with moto's interpreter, so a function's figure is
    an upper bound of what its own Lambda container would hold.
    """

    def __init__(self, interval_s: float = 0.02) -> None:
        import threading

        self.interval_s = interval_s
        self.peaks: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self.after: dict[str, list[int]] = {}  # RSS after each call, in call order
        self._active: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._note()

    def _note(self) -> None:
        rss = _rss_bytes()
        with self._lock:
            for name in self._active:
                self.peaks[name] = max(self.peaks.get(name, 0), rss)

    def wrap(self, name: str, fn: Any) -> Any:
        def call(event: dict[str, Any], context: Any) -> Any:
            with self._lock:
                self._active[name] = self._active.get(name, 0) + 1
                self.calls[name] = self.calls.get(name, 0) + 1
            try:
                return fn(event, context)
            finally:
                self._note()
                with self._lock:
                    self.after.setdefault(name, []).append(_rss_bytes())
                    self._active[name] -= 1
                    if not self._active[name]:
                        del self._active[name]

        return call

    def __enter__(self) -> RssSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _write_synthetic(path: str, height: int, width: int, seed: int) -> None:
    from training.data.synthetic import make_scene, write_naip_tif

    scene = make_scene(seed, (height, width))
    write_naip_tif(path, scene.image, scene.transform, scene.crs, synthetic_seed=str(seed))


def write_scale_scene(settings: ChainSettings, height: int, width: int, seed: int) -> str:
    """One synthetic ``height x width`` scene in the input prefix, generated in a child process
    (the generator's memory must not count in this process's peak RSS)."""
    import multiprocessing
    import tempfile

    from core import storage

    name = f"scale-{height}x{width}-{seed}_naip-new.tif"
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        path = str(Path(tmp) / name)
        child = multiprocessing.get_context("spawn").Process(
            target=_write_synthetic, args=(path, height, width, seed)
        )
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RunLocalError(
                f"writing the {height} x {width} synthetic scene failed (exit {child.exitcode})"
            )
        uri = storage.join(settings.input_uri, name)
        storage.upload(path, uri)
    return uri


def load_report(settings: ChainSettings, summary: dict[str, Any], rss: RssSampler, uris: list[str]) -> str:
    """The load run's checks: each scene predicted exactly once, exact run totals, flat memory."""
    import statistics

    from inference.ledger import repository
    from inference.transactions import session

    with session(settings) as s:
        run = repository.get_run(s, summary["execution_id"])
        mine = repository.predictions_of_run(s, run.id, run.model_version)
        by_scene: dict[int, int] = {}
        for uri in uris:
            scene = repository.known_source(s, uri)
            n = len(repository.predictions_for(s, scene)) if scene is not None else 0
            by_scene[scene.id if scene is not None else -1] = n
    once = sum(1 for n in by_scene.values() if n == 1)
    after = [b / 2**20 for b in rss.after.get("infer", [])] or [0.0]
    k = max(1, min(20, len(after) // 4))
    first, last = statistics.median(after[:k]), statistics.median(after[-k:])
    return "\n".join(
        [
            f"load run       {len(uris)} scenes in one execution: {once} predicted exactly once, "
            f"{len(uris) - once} not; run totals predicted {run.scenes_predicted} (ledger rows {len(mine)}), "
            f"failed {run.scenes_failed}",
            f"memory         RSS after infer calls: median of the first {k} {first:.0f} MB, of the last {k} "
            f"{last:.0f} MB ({last - first:+.0f} MB over {len(after)} calls); peak {max(after, default=0):.0f} MB",
        ]
    )


def scale_report(
    settings: ChainSettings, summary: dict[str, Any], rss: RssSampler, shape: tuple[int, int], bench: Path
) -> str:
    """The scale run's figures: blocks, s/km², peak RSS, and the large preset on Lambda."""
    import json

    from inference.blocks import lambda_estimate, throughput_from_bench

    height, width = shape
    area = float(summary["metrics"].get("area_km2", {}).get("", 0.0))
    seconds = summary["seconds"]
    blocks = rss.calls.get("infer", 0)
    memory = settings.infer_memory_mb
    peak = rss.peaks.get("infer", 0) / 2**20
    lines = [
        f"scale run      {height} x {width} px, {area:.2f} km² valid, in {blocks} blocks "
        f"(block_chips {settings.block_chips or 'from throughput'})",
        f"speed          {seconds:.1f} s wall, {seconds / max(area, 1e-9):.2f} s/km² (all steps, this machine)",
        f"infer RSS      peak {peak:.0f} MB while infer calls ran (whole local process, moto included)"
        + (f"; Lambda memory {memory} MB: {'under' if peak < memory else 'OVER'}" if memory else ""),
    ]
    report = json.loads(bench.read_text()) if bench.exists() else None
    throughput = throughput_from_bench(report, "large") if report else None
    if throughput is None or not memory:
        lines.append(f"large preset   no measured large-preset throughput in {bench}: run `make bench` first")
        return "\n".join(lines)
    large = settings.model_copy(update={"block_chips": None})
    est = lambda_estimate(large, throughput, height, width, memory)
    lines += [
        f"large preset   measured {throughput.seconds_per_chip:.2f} s/chip on {throughput.threads} threads "
        f"({throughput.cpu}, {bench})",
        f"  on Lambda    {memory} MB ({large.lambda_vcpus(memory):.2f} vCPU): {est.blocks} blocks of "
        f"{est.block_chips} x {est.block_chips} chips, slowest block {est.seconds_per_block_max:.0f} s "
        f"of the {est.timeout_s:.0f} s timeout ({est.seconds_per_block_max / est.timeout_s:.0%})",
        f"  per scene    {est.chips} chips, {est.seconds_total / 3600:.2f} h of Lambda compute, ${est.usd:.3f}"
        f" (${est.usd / max(area, 1e-9):.4f}/km²)",
    ]
    return "\n".join(lines)


def summarize(settings: ChainSettings, execution: Any) -> dict[str, Any]:
    """The run as the ledger recorded it: counts, area, class areas, drift, quarantine."""
    from inference.ledger import repository
    from inference.transactions import session

    with session(settings) as s:
        try:
            run = repository.get_run(s, execution.execution_id)
        except repository.RunNotFound:
            run = None
        metrics = repository.metrics_for(s, run.id) if run is not None else []
        quarantine = [(q.source_uri, q.error, q.error_message) for q in repository.quarantined(s)]
        values: dict[str, dict[str, float]] = {}
        for m in metrics:
            values.setdefault(m.name, {})[m.key] = m.value
        return {
            "execution_id": execution.execution_id,
            "status": execution.status,
            "error": (run.error if run is not None else None) or execution.cause,
            "model_version": run.model_version if run is not None else None,
            "discovered": run.scenes_discovered if run is not None else 0,
            "quarantined": run.scenes_quarantined if run is not None else 0,
            "predicted": run.scenes_predicted if run is not None else 0,
            "failed": run.scenes_failed if run is not None else 0,
            "metrics": values,
            "quarantine": quarantine,
            "seconds": execution.seconds,
        }


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text table of one run."""
    m = summary["metrics"]
    lines = [
        f"execution      {summary['execution_id']}  [{summary['status']}]",
        f"model version  {summary['model_version']}",
        f"scenes         {summary['predicted']} predicted, {summary['failed']} failed, "
        f"{summary['discovered']} new, {summary['quarantined']} quarantined this run",
        f"area           {m.get('area_km2', {}).get('', 0.0):.4f} km²",
    ]
    areas = m.get("class_area_km2", {})
    if areas:
        lines.append("class areas    " + "class".ljust(22) + "km²".rjust(10) + "share".rjust(9))
        fractions = m.get("class_fraction", {})
        for name, km2 in sorted(areas.items(), key=lambda kv: -kv[1]):
            lines.append(" " * 15 + name.ljust(22) + f"{km2:10.4f}" + f"{fractions.get(name, 0.0):9.1%}")
    drift_flag = m.get("drift_flag", {}).get("")
    if drift_flag is not None:
        detail = ", ".join(
            f"{name}{'[' + key + ']' if key else ''}={value:.3f}"
            for name in ("psi_class", "js_class", "psi_band")
            for key, value in sorted(m.get(name, {}).items())
        )
        lines.append(f"drift          {'FLAGGED' if drift_flag >= 1 else 'ok'}  ({detail})")
    if "mean_max_softmax" in m:
        lines.append(
            f"confidence     mean max softmax {m['mean_max_softmax'].get('', 0.0):.3f}, "
            f"low-confidence share {m.get('low_confidence_share', {}).get('', 0.0):.1%}"
        )
    if "cost_usd" in m:
        lines.append(
            f"cost (est.)    ${m['cost_usd'].get('', 0.0):.6f} for {m.get('seconds_total', {}).get('', 0.0):.1f} s"
        )
    if "shadow_scenes" in m:
        champion_s, shadow_s = m.get("seconds_total", {}).get("", 0.0), m["shadow_seconds"].get("", 0.0)
        lines.append(
            f"shadow         challenger agrees on {m['shadow_agreement'].get('', 0.0):.2%} of the pixels of "
            f"{m['shadow_scenes'].get('', 0.0):.0f} scene(s); {shadow_s:.1f} s beside the champion's "
            f"{champion_s:.1f} s ({shadow_s / champion_s if champion_s else 0.0:.2f}x)"
            + (f", ${m['shadow_cost_usd'].get('', 0.0):.6f}" if "shadow_cost_usd" in m else "")
        )
    for uri, reason, message in summary["quarantine"]:
        lines.append(f"quarantined    {uri}  [{reason}] {message or ''}")
    if summary["error"] and summary["status"] != "SUCCEEDED":
        lines.append(f"error          {summary['error']}")
    lines.append(f"time           {summary['seconds']:.1f} s")
    return "\n".join(lines)


def upload_scenes(settings: ChainSettings, count: int, size: int, seed: int) -> list[str]:
    """Write ``count`` new synthetic scenes (fresh seeds) into the input prefix."""
    import tempfile

    from core import storage
    from training.data.synthetic import make_scene, write_naip_tif

    uris = []
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="upload-") as tmp:
        for i in range(count):
            scene = make_scene(seed + i, size)
            name = f"upload-{stamp}-{seed + i}_naip-new.tif"
            path = Path(tmp) / name
            write_naip_tif(path, scene.image, scene.transform, scene.crs, synthetic_seed=str(seed + i))
            uri = storage.join(settings.input_uri, name)
            storage.upload(path, uri)
            uris.append(uri)
    return uris


def _bucket_and_key(uri: str) -> tuple[str, str]:
    """The (bucket, key) an S3 event names for ``uri``; a ``file://`` path gets the bucket ``local``."""
    scheme, _, rest = uri.partition("://")
    if scheme == "s3":
        bucket, _, key = rest.partition("/")
        return bucket, key
    return "local", rest.lstrip("/")


def upload_and_run(
    settings: ChainSettings,
    scenes: int,
    interval_s: float,
    size: int,
    seed: int,
    window_s: float,
    concurrency: int = 1,
) -> list[dict[str, Any]]:
    """Drop ``scenes`` synthetic scenes ``interval_s`` apart; each upload's event goes through the
    trigger's coalescing; returns the summaries of the executions that started (in start order)."""
    from inference import handlers, notify, trigger
    from inference.ledger.models import utcnow
    from setup.tools import local_statemachine as local

    handlers.configure(settings)
    started: list[str] = []
    summaries: list[dict[str, Any]] = []
    try:
        with local.state_machine(settings.manifest_prefix, concurrency=concurrency) as machine:
            for drop in range(scenes):
                if drop:
                    time.sleep(interval_s)
                (uri,) = upload_scenes(settings, 1, size, seed + drop)
                bucket, key = _bucket_and_key(uri)
                event = trigger.object_created_event(
                    bucket, key, utcnow(), settings.aws_region or "us-east-1"
                )
                outcome = trigger.handle_event(machine.sfn, machine.arn, event, window_s)
                log.info(
                    "[%d/%d] dropped %s -> %s %s (%s)",
                    drop + 1,
                    scenes,
                    uri,
                    outcome.action,
                    outcome.execution_name,
                    outcome.reason,
                )
                if outcome.action == "started" and outcome.execution_arn:
                    started.append(outcome.execution_arn)
            for arn in started:
                log.info("\nwaiting for %s (it waits for its window to close) ...", arn.rsplit(":", 1)[-1])
                execution = machine.wait(arn)
                summary = summarize(settings, execution)
                outcome_name = "succeeded" if execution.succeeded else "failed"
                summary["notice_uri"] = notify.notice_uri(settings, execution.execution_id, outcome_name)
                summaries.append(summary)
                log.info("%s\nnotice         %s", format_summary(summary), summary["notice_uri"])
    finally:
        handlers.configure(None)
    log.info(
        "\n%d upload(s) -> %d execution(s) (window %.0f s): %s",
        scenes,
        len(summaries),
        trigger.window_seconds(window_s),
        ", ".join(f"{s['execution_id']} [{s['status']}, {s['predicted']} predicted]" for s in summaries),
    )
    return summaries


def dry_run_command(settings: ChainSettings, bench: Path, preset: str, as_json: bool) -> int:
    """Print the dry run's table (or JSON); no champion is required and nothing is written."""
    import json

    from inference.dry_run import dry_run, format_report

    report = dry_run(settings, bench, preset)
    log.info("%s", json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m setup.tools.run_local", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "upload"):
        p = sub.add_parser(name)
        p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. inference.chip_size=512")
        p.add_argument(
            "--ledger-url", help="SQLAlchemy URL of the ledger (default: Hydra inference.ledger_url)"
        )
        p.add_argument("--s3-prefix", help="put input/ and predictions/ under this s3:// prefix")
        p.add_argument("--concurrency", type=int, default=1, help="Lambda calls at once (default 1)")
        p.add_argument("-v", "--verbose", action="store_true")
        if name == "run":
            p.add_argument("--no-seed", action="store_true", help="do not copy the synthetic test scenes")
            p.add_argument("--scene-size", help="scale run: predict one synthetic HxW scene, e.g. 6000x7000")
            p.add_argument("--load", type=int, help="load run: N new small synthetic scenes in one execution")
            p.add_argument(
                "--size", type=int, default=256, help="side of the load run's scenes (default 256)"
            )
            p.add_argument("--seed", type=int, default=7, help="seed of the scale run's scene (default 7)")
            p.add_argument(
                "--bench",
                type=Path,
                default=Path("outputs/bench/bench.json"),
                help="make bench's report, for the large preset's measured throughput",
            )
            p.add_argument(
                "--dry-run",
                action="store_true",
                help="list the scenes, their verdicts, blocks and estimated Lambda time and cost; write nothing",
            )
            p.add_argument("--json", action="store_true", help="with --dry-run: print the report as JSON")
            p.add_argument(
                "--bench-preset",
                default="large",
                help="with --dry-run: the bench report's preset to estimate with (default large)",
            )
        else:
            p.add_argument("--scenes", type=int, default=3, help="scenes to drop (default 3)")
            p.add_argument("--interval", type=float, default=10.0, help="seconds between drops (default 10)")
            p.add_argument("--size", type=int, default=1024, help="scene side in pixels (default 1024)")
            p.add_argument("--seed", type=int, default=None, help="first seed (default: from the clock)")
            p.add_argument(
                "--window",
                type=float,
                default=None,
                help="coalescing window in seconds (default: infra.trigger_window_s, else TRIGGER_WINDOW_S)",
            )
    args = parser.parse_args(argv)
    dry = args.command == "run" and args.dry_run
    if getattr(args, "json", False) and not dry:
        parser.error("--json goes with --dry-run")
    # With --json stdout carries the JSON alone: the libraries' warnings stay off it.
    quiet = logging.ERROR if dry and args.json else logging.WARNING
    configure_console(logging.INFO if args.verbose else quiet, verbose=args.verbose)
    log.setLevel(logging.INFO)  # this command's own lines, whatever the libraries' level

    from core.config import REPO_ROOT
    from inference.errors import NoChampionError
    from inference.model_cache import champion
    from inference.retry import TransientFaultError

    try:
        settings = load_settings(args.overrides, args.ledger_url, args.s3_prefix)
        if dry:
            return dry_run_command(settings, REPO_ROOT / args.bench, args.bench_preset, args.json)
        pointer = champion(settings)
        prepare_ledger(settings)
        log.info(
            "champion %s %s (mIoU %s); input %s",
            settings.model_name,
            pointer["version"],
            pointer.get("miou"),
            settings.input_uri,
        )
        if args.command == "run" and args.load:
            uris = upload_scenes(settings, args.load, args.size, args.seed * 1000)
            log.info("wrote %d scenes of %d px", len(uris), args.size)
            with RssSampler() as rss:
                summary = run_once(settings, args.concurrency, rss)
            log.info("%s", format_summary(summary))
            log.info("%s", load_report(settings, summary, rss, uris))
            return 0 if summary["status"] == "SUCCEEDED" else 1
        if args.command == "run" and args.scene_size:
            height, _, width = args.scene_size.lower().partition("x")
            shape = (int(height), int(width or height))
            log.info("writing a %d x %d synthetic scene ...", *shape)
            log.info("wrote %s", write_scale_scene(settings, *shape, args.seed))
            with RssSampler() as rss:
                summary = run_once(settings, args.concurrency, rss)
            log.info("%s", format_summary(summary))
            log.info("%s", scale_report(settings, summary, rss, shape, args.bench))
            return 0 if summary["status"] == "SUCCEEDED" else 1
        if args.command == "run":
            if not args.no_seed:
                for uri in seed_input(settings, REPO_ROOT):
                    log.info("seeded %s", uri)
            summary = run_once(settings, args.concurrency)
            log.info("%s", format_summary(summary))
            return 0 if summary["status"] == "SUCCEEDED" else 1
        seed = args.seed if args.seed is not None else int(time.time()) % 1_000_000
        window_s = args.window if args.window is not None else settings.trigger_window_s
        summaries = upload_and_run(
            settings, args.scenes, args.interval, args.size, seed, window_s, args.concurrency
        )
        return 0 if all(s["status"] == "SUCCEEDED" for s in summaries) else 1
    except (RunLocalError, NoChampionError, TransientFaultError) as exc:
        log.error("error: %s", exc)
        return 2
    except Exception as exc:  # the command line ends in one clear line, not a traceback
        log.debug("run failed", exc_info=True)
        log.error(
            "error: %s: %s (rerun with -v for the traceback; the ledger keeps what was done)",
            type(exc).__name__,
            exc,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
