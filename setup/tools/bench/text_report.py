"""The bench's human-readable report: one block of lines per section of the JSON report
(:func:`setup.tools.bench.__main__.run`), the targets MET / MISSED, and the budget's cuts."""

from __future__ import annotations

from typing import Any


def _mb(b: float) -> str:
    return f"{b / 2**20:,.0f} MB"


def _yes(met: bool) -> str:
    return "MET" if met else "MISSED"


def _candidate_lines(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        f"  {'path':16s} {'ms/chip':>9s} {'x eager':>8s} {'agree':>7s} {'GFLOP/s':>8s} {'of peak':>11s} {'load s':>7s}  status"
    ]
    for r in rows:
        if "ms_per_chip" not in r:
            out.append(
                f"  {r['name']:16s} {'-':>9s} {'-':>8s} {'-':>7s} {'-':>8s} {'-':>11s} {'-':>7s}  {r['status']}"
            )
            continue
        share = f"{r['share_of_peak']:.0%} {r['peak_name']}"
        eff = ""
        if "effective_precision" in r:  # on a QDQ graph the hint covers the non-quantised ops only
            rest = "the rest " if r["precision"] == "int8" else ""
            eff = f", {rest}runs {r['effective_precision']}"
        out.append(
            f"  {r['name']:16s} {r['ms_per_chip']:9.1f} {r['speedup']:7.2f}x {r['pixel_agreement']:7.2%} "
            f"{r['gflops']:8.1f} {share:>11s} {r['load_s']:7.2f}  {r['status']}{eff}"
        )
    return out


def render(report: dict[str, Any]) -> str:
    """The human-readable report."""
    sections = (
        _render_machine,
        _render_peaks,
        _render_chips,
        _render_champion,
        _render_candidates,
        _render_scenes,
        _render_lambda_cost,
        _render_image,
        _render_targets,
        _render_budget,
    )
    return "\n".join(line for section in sections for line in section(report))


def _render_machine(report: dict[str, Any]) -> list[str]:
    """Header: the machine and load; section 0: the CPU as detected and the dispatcher's choice."""
    out: list[str] = []
    m = report["machine"]
    cpu = m["cpu_detected"]
    out.append(
        f"# make bench  ({report['created_utc']}, {m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
        f"onnxruntime {m['onnxruntime']}, openvino {m.get('openvino', 'not installed')})"
    )
    out.append(f"load average at start {m['load_average_start']}, at end {m['load_average_end']}")
    out.append("")
    out.append("## 0. CPU and the dispatcher's choice")
    out.append(
        f"  detected: {cpu['model']} ({cpu['arch']}), class {cpu['cpu_class']}, flags {cpu['flags']}; "
        f"torch capability {m['torch_cpu_capability']}; targets of class: {m['target_class']}"
    )
    for preset, d in report["dispatch"].items():
        out.append(
            f"  {preset}: {d['path']} ({d['backend']}, {d['artifact']}, {d['precision']}): {d['reason']}"
        )
        for sk in d["skipped"]:
            out.append(f"      skipped {sk['path']}: {sk['why']}")
    out.append("")
    return out


def _render_peaks(report: dict[str, Any]) -> list[str]:
    """Section 1: the GEMM peaks, each precision's best kernel and the others."""
    out: list[str] = []
    p = report["peaks"]
    out.append("## 1. GEMM peak of this CPU (square matmuls, all cores, median; the best kernel is the peak)")
    units = {"fp32": "GFLOP/s", "bf16": "GFLOP/s", "int8": "GOP/s  "}
    for precision, unit in units.items():
        best = p[precision]
        extra = ""
        if precision == "bf16":
            extra = " (native)" if best.get("native") else " (NOT native: emulated)"
        out.append(
            f"  {precision} {best['gflops']:8.1f} {unit}  {best['kernel']}, n={best['n']}, {best['runs']} runs{extra}"
        )
        for name, k in p.get(f"{precision}_kernels", {}).items():
            out.append(f"       {name:10s} {k['gflops']:8.1f} {unit}  {k['kernel']}, n={k['n']}")
    out.append("")
    return out


def _render_chips(report: dict[str, Any]) -> list[str]:
    """Section 2: eager fp32 vs the served path per preset, cold starts and the chip profile."""
    from setup.tools.bench.profile import render_profile

    out: list[str] = []
    out.append(
        f"## 2. Per chip ({report['chip']}², batch 1; FLOPs analytic; eager = TorchPredictor fp32, served = the dispatcher's path)"
    )
    hdr = f"  {'preset':6s} {'path':14s} {'runs':>4s} {'ms/chip':>9s} {'chips/s':>8s} {'GFLOP/s':>8s} {'of peak':>12s} {'peak RSS':>9s} {'cold s':>7s} {'(load)':>7s}"
    out.append(hdr)
    for preset, r in report["presets"].items():
        for key, label in (("eager_fp32", "eager fp32"), ("optimized", r["served_path"])):
            x = r[key]
            share = f"{x['share_of_peak']:.0%} {x['peak_name']}"
            out.append(
                f"  {preset:6s} {label:14s} {x['runs']:4d} {x['ms_per_chip']:9.1f} {x['chips_per_s']:8.2f} "
                f"{x['gflops']:8.1f} {share:>12s} {_mb(x['cold']['peak_rss_bytes']):>9s} "
                f"{x['cold']['cold_start_s']:7.2f} {x['cold']['load_s']:7.2f}"
            )
        oc = r["optimized"]["cold"]
        out.append(
            f"  {preset:6s} -> speedup {r['speedup']:.2f}x, pixel agreement {r['pixel_agreement']:.2%} "
            f"({r['agreement_chips']} chips, eager predicts {r.get('reference_classes', '?')} classes), RSS {r['rss_ratio']:.1f}x smaller, cold start {r['cold_start_ratio']:.1f}x faster; "
            f"{r['flops']['total'] / 1e9:.1f} GFLOP/chip ({r['quantised_share']:.0%} in quantised matmuls)"
        )
        uncached = oc["uncached_cold_start_s"]
        out.append(
            f"         served cold start {oc['cold_start_s']:.2f} s with the optimised graph cached "
            f"({oc['cached_graph_runs']}/{oc['runs']} children; first child, no cache: "
            f"{f'{uncached:.2f} s' if uncached is not None else 'n/a'}): handler import {oc['handler_import_s']:.2f} s, "
            f"all imports {oc['import_s']:.2f} s, load {oc['load_s']:.2f} s, first chip {oc['first_predict_s']:.2f} s; "
            f"torch imported: {oc['torch_imported']}; load average after: {r.get('load_average_after')}"
        )
        if r.get("profile"):
            out.append(render_profile(preset, r["profile"]))
    return out


def _render_champion(report: dict[str, Any]) -> list[str]:
    """The registry champion's agreement (section 2's closing lines)."""
    out: list[str] = []
    if report.get("champion"):
        champ = dict(report["champion"])
        per_path = champ.pop("candidates", None) or {}
        out.append(f"  registry champion: {champ}")
        if per_path:
            out.append(
                "  trained champion, every path vs eager fp32: "
                + ", ".join(f"{name} {agreement:.3%}" for name, agreement in per_path.items())
            )
    else:
        out.append("  registry champion: none found (agreement above is on random weights)")
    out.append("")
    return out


def _render_candidates(report: dict[str, Any]) -> list[str]:
    """Sections 2b and 2c: the candidate paths and the quantisation experiments."""
    out: list[str] = []
    if report.get("candidates"):
        cands = report["candidates"]
        out.append(
            f"## 2b. Candidate paths side by side ({cands['preset']}, vs {cands['reference']}; load average after {cands['load_average_after']})"
        )
        out.extend(_candidate_lines(cands["rows"]))
        out.append("")
        ex = report["experiments"]
        out.append(
            f"## 2c. Quantisation experiments ({ex['preset']} preset, ONNX Runtime, vs {ex['reference']})"
        )
        out.extend(_candidate_lines(ex["rows"]))
        out.append("")
    return out


def _render_scenes(report: dict[str, Any]) -> list[str]:
    """Section 3: whole-scene scaling and the top preset's estimate."""
    out: list[str] = []
    sc = report["scenes"]["scaling"]
    out.append(
        f"## 3. Whole scenes (predict_scene, {sc['path']}, preset {sc['preset']}, overlap {sc['overlap']} adaptive, batch {sc['batch_size']}; chip {sc['chip_s'] * 1e3:.1f} ms)"
    )
    rows = list(sc["scenes"])
    out.append(
        f"  {'preset':6s} {'km²':>5s} {'runs':>4s} {'seconds':>8s} {'s/km²':>7s} {'chips run':>9s} {'non-ovl':>7s} {'count x':>7s} {'time x':>7s}"
    )
    for r in rows:
        out.append(
            f"  {sc['preset']:6s} {r['km2']:5.2f} {r['runs']:4d} {r['median_s']:8.2f} {r['s_per_km2']:7.2f} "
            f"{r['chips_run']:9d} {r['chips_nonoverlapping']:7d} {r['chip_count_ratio']:7.2f} {r['cost_ratio']:7.2f}"
        )
    if sc["linear_fit"]:
        f = sc["linear_fit"]
        out.append(
            f"  linear fit ({sc['preset']}): seconds = {f['intercept_s']:.2f} + {f['s_per_km2']:.2f} x km², R² = {f['r2']:.4f}"
        )
    est = report["scenes"]["estimate"]
    out.append(
        f"  {est['preset']} estimate: {est['s_per_km2']:.1f} s/km² = {est['chips_run_per_km2']:.1f} chips/km² x "
        f"{est['chip_s']:.2f} s + {est['overhead_s_per_km2']:.2f} s/km² non-model overhead; cost vs chip sum by km²: "
        + ", ".join(f"{e['km2']:g}: {e['cost_ratio']:.2f}x" for e in est["by_km2"])
    )
    out.append("")
    return out


def _render_lambda_cost(report: dict[str, Any]) -> list[str]:
    """Section 4: the Lambda cost per km², served and eager fp32."""
    out: list[str] = []
    c = report["lambda_cost"]["optimized"]
    e = report["lambda_cost"]["eager_fp32"]
    out.append(
        f"## 4. Lambda cost ({c['preset']}, {c['architecture']} ${c['usd_per_gb_s']}/GB-s; basis: {c['basis']})"
    )
    out.append(
        f"  served: {c['memory_mb']} MB, {c['s_per_km2_here']:.1f} s/km² here -> {c['lambda_s_per_km2']:.1f} s/km² on "
        f"{c['lambda_vcpu']:.2f} vCPU -> ${c['usd_per_km2']:.5f}/km² (${c['usd_per_1000_km2']:.2f} per 1000 km²; "
        f"${c['usd_per_km2_same_cpu']:.5f}/km² at this CPU's speed)"
    )
    out.append(
        f"  eager fp32: {e['memory_mb']} MB, {e['s_per_km2_here']:.1f} s/km² here -> ${e['usd_per_km2']:.5f}/km² "
        f"(${e['usd_per_km2_same_cpu']:.5f}/km² at this CPU's speed)"
    )
    out.append(f"  {c['note']}")
    out.append("")
    return out


def _render_image(report: dict[str, Any]) -> list[str]:
    """Section 5: the Lambda image's Python packages."""
    out: list[str] = []
    img = report.get("image")
    out.append(
        "## 5. Lambda image: Python packages (pip install --target of inference/requirements-lambda.txt)"
    )
    if img and "installed_mb" in img:
        out.append(
            f"  {img['installed_mb']:.0f} MB installed in {img['seconds']:.0f} s{' (cached build)' if img.get('cached') else ''}; torch installed: {img['torch_installed']}, "
            f"Lightning: {img['lightning_installed']}; largest: "
            + ", ".join(f"{k} {v:.0f} MB" for k, v in img["largest"][:6])
        )
    else:
        out.append(f"  not measured: {(img or {}).get('error', '--no-image')}")
    out.append("")
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def _chip_gap(chip: dict[str, Any]) -> str:
    """For a missed chip target, the profiled group with the largest excess over its ideal."""
    parts = chip.get("gap_by_group") or []
    if not parts:
        return "no operator profile to split the gap"
    top = parts[0]
    peak = "" if top["share_of_peak"] is None else f" at {top['share_of_peak']:.0%} of the {top['peak']} peak"
    return (
        f"largest part of the {chip['gap_s']:.2f} s gap: {top['group']} {top['excess_s']:.2f} s "
        f"({top['share_of_time']:.0%} of the chip{peak})"
    )


def _cold_gap(d: dict[str, Any]) -> str:
    """For a missed cold start, the largest part beyond the floor: the first chip's seconds over
    an ideal chip, or what the child spends outside its imports, load and first chip."""
    over = d["seconds"] - d["floor_s"]
    parts = {
        "the first chip beyond an ideal chip": d["first_chip_over_ideal_s"],
        "the rest (outside imports, load and the first chip)": d["seconds"]
        - d["import_s"]
        - d["load_s"]
        - d["first_predict_s"],
    }
    name, seconds = max(parts.items(), key=lambda kv: kv[1])
    return f"{over:.2f} s over the floor; largest part: {name} {seconds:.2f} s"


def _attention_line(att: dict[str, Any], target_class: str) -> str:
    """The served path's attention products on this CPU's class: share of the chip, seconds,
    rate and share of the peak of the precision they run in."""
    cls = att.get("cpu_class") or target_class
    seconds = "" if att.get("seconds") is None else f" ({att['seconds']:.3f} s)"
    rate = "" if att.get("gflops") is None else f"{att['gflops']:.0f} GFLOP/s = "
    return (
        f"        attention ({cls}): {_pct(att['share_of_time'])} of the chip{seconds}, "
        f"{rate}{_pct(att['share_of_peak'])} of the {att['peak'] or '-'} peak"
    )


def _render_targets(report: dict[str, Any]) -> list[str]:
    """The targets of this CPU's class: MET / MISSED with the figures, the floors and, for a
    miss, the largest part of the gap."""
    out: list[str] = []
    t = report["targets"]
    out.append(f"## Targets ({t['preset']}, CPU class {t['cpu_class']}, served path {t['served_path']})")
    ch, ag, b = t["chip"], t["agreement"], t["efficiency"]
    cm, d, es, im = t["memory"], t["cold_start"], t["scene"], t["image"]
    att = ch["attention"]
    line = (
        f"  chip  served <= {ch['target_ratio']}x floor: {ch['seconds']:.3f} s = {ch['ratio_to_floor']:.2f}x "
        f"the floor {ch['floor_s']:.3f} s -> {_yes(ch['met'])} "
        f"(x eager fp32 {ch['speedup_vs_eager']:.2f}, ceiling {ch['ceiling_vs_eager']:.2f}x)"
    )
    if not ch["met"]:
        line += f"; {_chip_gap(ch)}"
    out.append(line)
    out.append(_attention_line(att, t["cpu_class"]))
    champ = (
        ""
        if ag["champion"] is None
        else f" (random weights {ag['random_weights']:.2%}, trained champion {ag['champion']:.2%})"
    )
    if ag.get("random_weights_classes") == 1:
        champ += " (the random-weight model predicts one class on every chip: its agreement says nothing)"
    out.append(
        f"  agree pixel agreement >= {ag['target']:.0%}: {ag['agreement']:.2%}{champ} -> {_yes(ag['met'])}"
    )
    out.append(
        f"  peak  >= {b['target']:.0%} of the {b['peak']} peak: {b['share_of_peak']:.0%} -> {_yes(b['met'])}"
        + (
            " (by part: " + ", ".join(f"{k} {v:.0%} of {p}" for k, (v, p) in b["profile"].items()) + ")"
            if b.get("profile")
            else ""
        )
    )
    out.append(
        f"  rss   infer peak RSS <= {cm['target']} GiB: {cm['peak_rss_gb']:.2f} GiB -> {_yes(cm['met'])}"
    )
    unc = d["uncached_seconds"]
    line = (
        f"  cold  cold start <= floor + {d['target_s'] - d['floor_s']:.1f} s = {d['target_s']:.2f} s: "
        f"{d['seconds']:.2f} s (graph cached; {f'{unc:.2f} s' if unc is not None else 'n/a'} without) "
        f"-> {_yes(d['met'])} (floor: imports {d['import_s']:.2f} s + load {d['load_s']:.2f} s + an ideal "
        f"chip = {d['floor_s']:.2f} s; first chip {d['first_predict_s']:.2f} s)"
    )
    if not d["met"]:
        line += f"; {_cold_gap(d)}"
    out.append(line)
    out.append(
        f"  scene cost <= {es['target']}x chip sum, 1-16 km²: worst {es['worst_cost_ratio']:.2f}x "
        f"(measured {es['measured_by_km2']}, large estimate {es['estimated_large_by_km2']}) -> {_yes(es['met'])}"
    )
    if "installed_mb" in im:
        out.append(
            f"  image <= {im['target_mb']:.0f} MB, no torch: {im['installed_mb']:.0f} MB, torch {im['torch_installed']} -> {_yes(im['met'])}"
        )
    else:
        out.append(f"  image <= {im['target_mb']:.0f} MB, no torch: {im['error']} -> MISSED")
    return out


def _render_budget(report: dict[str, Any]) -> list[str]:
    """The bench's wall time by section, and the runs cut to fit the budget."""
    out: list[str] = []
    bud = report["budget"]
    cached = [k for k, v in report["models"].items() if v["cached"]]
    where = f" under {report['export_cache']}" if report.get("export_cache") else ""
    out.append(
        f"bench wall time {bud['elapsed_s']:.0f} s of a {bud['total_s']:.0f} s budget (exports cached: {cached}{where}); "
        + ", ".join(f"{k} {v:.0f} s" for k, v in bud["sections_s"].items())
    )
    if bud["cuts"]:
        out.append(
            "  fewer runs to fit the budget on this CPU: "
            + "; ".join(
                f"{c['what']} {c['ran']} of {c['wanted']} ({c['each_s']:.1f} s each)" for c in bud["cuts"]
            )
        )
    return out
