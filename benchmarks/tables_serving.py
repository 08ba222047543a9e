"""The serving guide's generated tables (``<!-- generated:serving -->`` and
``<!-- generated:serving-load -->`` in docs/guides/serving.md), from
benchmarks/results/serve_*.json; written by readme_tables.py."""
from __future__ import annotations

import json
from pathlib import Path

R = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict:
    return json.loads((R / name).read_text())


def serving_load() -> str:
    """Every way `ranet-edge serve` serves, side by side in one run (benchmarks/serve_load.py)."""
    r = load("serve_load.json")
    sv, sm = r["servers"], r["summary"]
    levels = list(next(iter(sv.values()))["one_image"])
    sent = sm["requests_sent"]
    not_ok = sum(sm["requests_not_200"].values())
    lines = [
        f"`wrk -t1` on the same machine ({r['machine']['cpus']} vCPUs, shared: load average "
        f"{r['machine']['loadavg_1_5_15'][1]:.1f} over the run's last 5 minutes), the shipped bundle at its default "
        f"operating point, one intra-op thread, max batch 64, 5 ms batch wait; each point {r['rounds']} x "
        f"{r['seconds_per_block']} s per server in turns, medians; {r['wall_s']} s in all "
        f"(`benchmarks/results/serve_load.json`). {sent:,} requests, {not_ok} answered with anything but a 200.",
        "",
        "| server | healthy after start | RSS (processes) | " + " | ".join(f"{c} client{'s' if c != '1' else ''}" for c in levels)
        + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in levels) + " |",
    ]

    def cell(e: dict, per: int) -> str:
        rate = f"{e['images_s']:,} img/s" if per > 1 else f"{e['req_s']:,} req/s"
        return f"{rate}, {e['p50_ms']:.2f} / {e['p99_ms']:.1f} ms"

    for name, s in sv.items():
        lines.append(f"| {name}, 1 image per request | {s['time_to_healthy_s']:.2f} s | {s['rss_mb']:,.0f} MB "
                     f"({s['processes']}) | " + " | ".join(cell(s["one_image"][c], 1) for c in levels) + " |")
    for name, s in sv.items():
        lines.append(f"| {name}, 16 images per request | | | "
                     + " | ".join(cell(s["sixteen_images"][c], 16) for c in levels) + " |")
    exits = sorted(next(iter(sv.values()))["early_answer_p50_ms_by_exit"], key=int)
    lines += [
        "",
        "Cells: throughput, then p50 / p99 latency as wrk sees it. **Early answers**: one client posting, over and "
        "over, one image that leaves at the exit named (p50 ms):",
        "",
        "| server | " + " | ".join(f"exit {e}" for e in exits) + " |",
        "| --- | " + " | ".join("---" for _ in exits) + " |",
    ]
    for name, s in sv.items():
        lines.append(f"| {name} | " + " | ".join(f"{s['early_answer_p50_ms_by_exit'][e]:.2f}" for e in exits) + " |")
    ray = sm.get("ray_haproxy")
    rows = [
        ("p50 at 1 client, one image", f"{ray['p50_1_client_ms']:.2f} ms" if ray else "-",
         f"{sm['p50_1_client_ms']:.2f} ms", f"<= the model's adaptive ms + 1.5 ms = {sm['p50_target_ms']:.2f} ms",
         sm["p50_1_client_ms"] <= sm["p50_target_ms"]),
        ("req/s at 8 / 32 clients, one image", " / ".join(f"{v:,}" for v in ray["req_s_8_32_clients"]) if ray else "-",
         " / ".join(f"{v:,}" for v in sm["req_s_8_32_clients"]), ">= 1,000", min(sm["req_s_8_32_clients"]) >= 1000),
        ("RSS of the whole server", f"{ray['rss_mb']:,.0f} MB ({ray['processes']} processes)" if ray else "-",
         f"{sm['rss_mb']:,.0f} MB", "<= 250 MB", sm["rss_mb"] <= 250),
        ("time to healthy", f"{ray['time_to_healthy_s']:.1f} s" if ray else "-", f"{sm['time_to_healthy_s']:.2f} s",
         "<= 3 s", sm["time_to_healthy_s"] <= 3),
        ("images/s at 32 clients, stage batching vs without", "-",
         f"{sm['stage_batching_speedup_images_s_c32_one_image']:.2f}x (1 image per request), "
         f"{sm['stage_batching_speedup_images_s_c32_16_images']:.2f}x (16)", ">= 1.3x",
         min(sm["stage_batching_speedup_images_s_c32_one_image"], sm["stage_batching_speedup_images_s_c32_16_images"]) >= 1.3),
        ("requests not answered 200", str(sm["requests_not_200"].get("Ray Serve + HAProxy, chain", "-")),
         str(sm["requests_not_200"]["chain, stage batching"]), "0", sm["requests_not_200"]["chain, stage batching"] == 0),
    ]
    lines += [
        "",
        f"**Issue 22's targets**, from the same run (the model alone: {sm['model_adaptive_ms_per_image']:.3f} ms per "
        "image, one at a time, adaptive):",
        "",
        "| what | Ray Serve + HAProxy | one-process server (default) | target | met |",
        "| --- | --- | --- | --- | --- |",
        *(f"| {w} | {a} | {b} | {t} | {'yes' if ok else '**no**'} |" for w, a, b, t, ok in rows),
    ]
    per_row = sm["graph_ms_per_row_at_batch_1_4_16_64"]
    lines += [
        "",
        "Each graph's ms per row at batch 1 / 4 / 16 / 64 (same run, one intra-op thread): "
        + "; ".join(f"graph {k}: " + " / ".join(f"{v:.3f}" for v in row.values()) for k, row in per_row.items()) + ".",
    ]
    return "\n".join(lines)


def serving() -> str:
    """Ray Serve's own costs, before the one-process server (benchmarks/serve_ray_internals.py)."""
    r = load("serve_ray_internals.json")
    ph, st = r["phases"], r["settings"]
    names = {"proxy": "Serve proxy", "haproxy": "HAProxy"}

    def lat(s: dict) -> str:
        return f"{s['latency_ms']['p50']:.1f} / {s['latency_ms']['p99']:.1f}"

    lines = [
        f"Closed-loop clients on the same machine ({r['env']['cpu']}, {r['env']['cores']} vCPUs; aiohttp, one PNG per "
        "request), the shipped bundle at its "
        f"default operating point, max batch {st['max_batch']}, {st['batch_wait_ms']:g} ms batch wait, one intra-op "
        f"thread; each app measured {st['rounds']} x {st['seconds']:g} s in turns with the others at each "
        f"concurrency (`benchmarks/results/serve_ray_internals.json`; Ray {r['env']['ray']}; the machine was shared, load "
        f"average {r['env']['load_average_at_end'][1]:.1f} over the run's last 5 minutes). Latency is what the "
        "client sees, p50 / p99 in ms. No request failed: "
        f"{sum(s['failed'] for p in ph.values() for lv in p['levels'].values() for s in lv.values())} failures in "
        f"{sum(s['requests'] for p in ph.values() for lv in p['levels'].values() for s in lv.values()):,} requests.",
        "",
        "| ingress | clients | chain req/s | chain ms | monolithic req/s | monolithic ms | chain, 2 replicas req/s | "
        "echo req/s | echo ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for phase, p in ph.items():
        for c, lv in p["levels"].items():
            ch, mo, c2, ec = lv["chain"], lv["mono"], lv["chain2"], lv["echo"]
            lines.append(f"| {names[phase]} | {c} | {ch['requests_per_s']:.0f} | {lat(ch)} | {mo['requests_per_s']:.0f} | "
                         f"{lat(mo)} | {c2['requests_per_s']:.0f} | {ec['requests_per_s']:.0f} | {lat(ec)} |")
    lines += [
        "",
        "**Early answers**: under the same load, the client-side p50 latency of the chain's requests by the exit "
        "their image took (how many in brackets), against the monolithic graph, where every request waits for the "
        "whole model:",
        "",
        "| ingress | clients | exit 0 | last exit | monolithic, all |",
        "| --- | --- | --- | --- | --- |",
    ]
    for phase, p in ph.items():
        for c, lv in p["levels"].items():
            be, last = lv["chain"]["by_exit"], str(len(lv["chain"]["exit_histogram"]) - 1)
            if "0" in be and last in be:
                lines.append(f"| {names[phase]} | {c} | {be['0']['latency_p50_ms']:.1f} ({be['0']['n']}) | "
                             f"{be[last]['latency_p50_ms']:.1f} ({be[last]['n']}) | "
                             f"{lv['mono']['latency_ms']['p50']:.1f} |")
    hist = ph["proxy"]["levels"]["64"]["chain"]["exit_histogram"]
    lines += [
        "",
        f"(Exits taken at 64 clients: {', '.join(f'{n:,}' for n in hist)} images at exits 0–{len(hist) - 1}.)",
        "",
        "**Where the time goes**: CPU milliseconds per request, by process, at 64 clients (read from /proc around "
        "each block):",
        "",
        "| ingress | app | HTTP proxy | replica(s) | rest of Ray | client | total |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for phase, p in ph.items():
        for app in ("echo", "chain", "mono"):
            cpu = p["levels"]["64"][app]["cpu_ms_per_request"]
            parts = [cpu["proxy"], cpu[f"replicas_{app}"], cpu["ray_other"], cpu["client"]]
            lines.append(f"| {names[phase]} | {app} | " + " | ".join(f"{v:.2f}" for v in parts) + f" | {sum(parts):.2f} |")
    lines += [
        "",
        "**Several images per request** (a JSON list of 16, 8 clients) against one per request:",
        "",
        "| ingress | chain images/s, 16 per request | monolithic images/s, 16 per request | chain images/s, 1 per request |",
        "| --- | --- | --- | --- |",
    ]
    for phase, p in ph.items():
        m = p["multi_image"]
        lines.append(f"| {names[phase]} | {m['chain']['images_per_s']:.0f} | {m['mono']['images_per_s']:.0f} | "
                     f"{p['levels']['8']['chain']['images_per_s']:.0f} |")
    return "\n".join(lines)
