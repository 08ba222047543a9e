"""Load on `ranet-edge serve`: closed-loop HTTP clients against the shipped default bundle.

    python benchmarks/serve_ray_internals.py [--seconds 2] [--rounds 3] [--out benchmarks/results/serve_ray_internals.json]

Two phases, each in its own process with its own local Ray: Serve's Python HTTP proxy (what
`ranet-edge serve` runs by default), then HAProxy talking to the replicas directly
(`ranet-edge serve --haproxy`). In each, four applications are deployed side by side:

- ``chain``: the per-exit graphs with early exit, 1 replica (what `ranet-edge serve` runs);
- ``mono``: the same bundle's monolithic graph, every image pays the whole model (the same
  thresholds then pick its exit, so the answers are the same), 1 replica;
- ``chain2``: ``chain`` with 2 replicas;
- ``echo``: a trivial deployment that reads the body and answers a constant: Ray Serve's
  own cost per request, measured the same way.

At each concurrency (1, 8, 32, 64 closed-loop clients, one PNG per request) the apps are
measured in turns (``--rounds`` blocks of ``--seconds`` each, after an unmeasured settle), so
machine drift hits them alike. CPU seconds of the proxy, the replicas, the rest of Ray and
the client are read from /proc around each block: that is where the time goes. A last pair
of rows sends 16 images per request. Early answers: latency of requests whose image left at
exit 0 against those that went to the last exit, under the same mixed load. The phases run
one after the other (not interleaved): compare across them with that in mind.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
from _common import write

from ranet_edge.assets import SAMPLE_IMAGES
from ranet_edge.serve import ServeSettings
from ranet_edge.serve.launcher import Server

LEVELS = (1, 8, 32, 64)
TICK = os.sysconf("SC_CLK_TCK")


def cpu_by_role(apps: list[str]) -> dict[str, float]:
    """CPU seconds used so far by Serve's proxy, each app's replicas, the rest of Ray, and us."""
    out = {"proxy": 0.0, "ray_other": 0.0, **{f"replicas_{a}": 0.0 for a in apps}}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        secs = (int(fields[11]) + int(fields[12])) / TICK
        if int(pid) == os.getpid():
            out["client"] = secs
        elif "ray::ProxyActor" in cmd or Path(cmd.split(" ", 1)[0]).name == "haproxy":
            out["proxy"] += secs
        elif "ray::ServeReplica:" in cmd:
            app = cmd.split("ray::ServeReplica:", 1)[1].split(":", 1)[0]
            out[f"replicas_{app}" if app in apps else "ray_other"] += secs
        elif any(k in cmd for k in ("raylet", "gcs_server", "ray::", "ray/dashboard", "ray/_private")):
            out["ray_other"] += secs
    return out


async def closed_loop(url: str, bodies: list[tuple[bytes, str]], clients: int, settle: float,
                      seconds: float) -> dict:
    """``clients`` loops, each sending its next request as soon as the last is answered;
    requests started during the first ``settle`` seconds are not counted."""
    import aiohttp

    records: list[tuple[float, float, int, dict | None]] = []
    failures: list[str] = []
    t_start = time.perf_counter()
    t_measure, t_stop = t_start + settle, t_start + settle + seconds

    async def client(i: int, session) -> None:
        k = i
        while (t0 := time.perf_counter()) < t_stop:
            body, ctype = bodies[k % len(bodies)]
            k += clients
            try:
                async with session.post(url, data=body, headers={"Content-Type": ctype}) as r:
                    status, data = r.status, json.loads(await r.read())
            except Exception as exc:  # counted, never hidden
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            if t0 >= t_measure:
                records.append((t0, time.perf_counter() - t0, status, data))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(client(i, session) for i in range(clients)))
    return {"records": records, "failures": failures, "window": (t_measure, t_stop)}


def block_stats(runs: list[dict], cpu: dict[str, float]) -> dict:
    records = [r for run in runs for r in run["records"]]
    failures = [f for run in runs for f in run["failures"]] + \
               [f"HTTP {s}: {d}" for _, _, s, d in records if s != 200]
    ok = [r for r in records if r[2] == 200]
    wall = sum(max(r[0] + r[1] for r in run["records"]) - run["window"][0] for run in runs if run["records"])
    lat = np.array([r[1] for r in ok]) * 1e3
    preds = [p for r in ok for p in r[3].get("predictions", [])]
    exits = [p["exit"] for p in preds if p.get("exit", -1) >= 0]
    out = {
        "requests": len(ok), "images": len(preds), "failed": len(failures), "failures_sample": failures[:3],
        "requests_per_s": len(ok) / wall if wall else 0.0, "images_per_s": len(preds) / wall if wall else 0.0,
        "latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                       "mean": float(lat.mean())} if len(lat) else None,
        "exit_histogram": np.bincount(exits, minlength=6).tolist() if exits else None,
        "cpu_ms_per_request": {k: 1e3 * v / max(len(ok), 1) for k, v in cpu.items()},
    }
    if exits and len(preds) == len(ok):  # one image per request: latency by the exit it took
        by_exit = {}
        for e in sorted(set(exits)):
            sel = np.array([r[1] for r, p in zip(ok, preds) if p["exit"] == e]) * 1e3
            srv = np.array([p["server_ms"] for p in preds if p["exit"] == e])
            by_exit[str(e)] = {"n": len(sel), "latency_p50_ms": float(np.median(sel)),
                               "server_p50_ms": float(np.median(srv))}
        out["by_exit"] = by_exit
    return out


def deploy_echo(server: Server) -> None:
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    class Echo:
        async def __call__(self, request: Request) -> JSONResponse:
            await request.body()
            return JSONResponse({"predictions": [{"exit": -1}]})

    app = serve.deployment(Echo, name="echo").options(max_ongoing_requests=128,
                                                      ray_actor_options={"num_cpus": 1}).bind()
    server.deploy_app(app, "echo", "/echo")


def run_phase(args: argparse.Namespace) -> dict:
    """One Ray, the four apps, every concurrency level; the results of this phase."""
    with np.load(SAMPLE_IMAGES) as z:
        x = z["x"]
    pngs = [cv2.imencode(".png", np.ascontiguousarray(im[..., ::-1]))[1].tobytes() for im in x]
    single = [(b, "image/png") for b in pngs]
    multi = [(json.dumps([base64.b64encode(pngs[(i + j) % len(pngs)]).decode() for j in range(16)]).encode(),
              "application/json") for i in range(0, len(pngs), 16)]

    base = ServeSettings(max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    server = Server(port=port, num_cpus=8, quiet=True, haproxy=args.phase == "haproxy")
    try:
        startup_s = time.perf_counter() - t0
        urls = {
            "chain": server.deploy(base, "chain", "/chain").url,
            "mono": server.deploy(base.replace(graph="monolithic"), "mono", "/mono").url,
            "chain2": server.deploy(base.replace(replicas=2), "chain2", "/chain2").url,
        }
        deploy_echo(server)
        urls["echo"] = server.base_url + "/echo"
        apps = list(urls)
        print(f"[{args.phase}] Ray and Serve up in {startup_s:.1f} s; apps {', '.join(apps)}", flush=True)

        def measure(app: str, clients: int, bodies, runs: dict, cpu: dict) -> None:
            before = cpu_by_role(apps)
            runs[app].append(asyncio.run(closed_loop(f"{urls[app]}/v1/classify" if app != "echo" else urls[app],
                                                     bodies, clients, args.settle, args.seconds)))
            after = cpu_by_role(apps)
            for k in after:
                cpu[app][k] = cpu[app].get(k, 0.0) + after[k] - before.get(k, 0.0)

        levels = {}
        for clients in LEVELS:
            runs = {a: [] for a in apps}
            cpu: dict[str, dict[str, float]] = {a: {} for a in apps}
            for _ in range(args.rounds):
                for app in apps:
                    measure(app, clients, single, runs, cpu)
            levels[str(clients)] = {a: block_stats(runs[a], cpu[a]) for a in apps}
            print(f"[{args.phase}] {clients:>3} clients: " + "; ".join(
                f"{a} {s['requests_per_s']:.0f} req/s p50 {s['latency_ms']['p50']:.1f} ms p99 "
                f"{s['latency_ms']['p99']:.1f} ms, {s['failed']} failed" for a, s in levels[str(clients)].items()),
                flush=True)

        multi_clients = 8
        runs = {a: [] for a in ("chain", "mono")}
        cpu = {a: {} for a in runs}
        for _ in range(args.rounds):
            for app in runs:
                measure(app, multi_clients, multi, runs, cpu)
        multi_stats = {a: block_stats(runs[a], cpu[a]) for a in runs}
        print(f"[{args.phase}] 16 images per request, {multi_clients} clients: " + "; ".join(
            f"{a} {s['images_per_s']:.0f} images/s" for a, s in multi_stats.items()), flush=True)
    finally:
        server.close()
    return {"startup_s": startup_s, "levels": levels,
            "multi_image": {"clients": multi_clients, "images_per_request": 16, **multi_stats}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0, help="measured seconds per block")
    ap.add_argument("--settle", type=float, default=0.5, help="unmeasured seconds before each block")
    ap.add_argument("--rounds", type=int, default=3, help="blocks per app and concurrency, in turns")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--batch-wait-ms", type=float, default=5.0)
    ap.add_argument("--phases", default="proxy,haproxy", help="which ingress phases to run, in order")
    ap.add_argument("--phase", choices=["proxy", "haproxy"], help=argparse.SUPPRESS)  # a child process
    ap.add_argument("--phase-out", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="benchmarks/results/serve_ray_internals.json")
    args = ap.parse_args()
    if args.phase:
        Path(args.phase_out).write_text(json.dumps(run_phase(args)))
        return

    phases = {}
    with tempfile.TemporaryDirectory() as tmp:
        for phase in args.phases.split(","):
            out = Path(tmp) / f"{phase}.json"
            argv = [sys.executable, __file__, "--phase", phase, "--phase-out", str(out),
                    *(f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                      ("seconds", "settle", "rounds", "max_batch", "batch_wait_ms"))]
            subprocess.run(argv, check=True)
            phases[phase] = json.loads(out.read_text())

    import ray

    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as fh:
        cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    result = {
        "env": {"cpu": cpu, "cores": os.cpu_count(),
                "python": platform.python_version(), "onnxruntime": ort.__version__, "ray": ray.__version__,
                "load_average_at_end": os.getloadavg()},
        "settings": {"max_batch": args.max_batch, "batch_wait_ms": args.batch_wait_ms, "seconds": args.seconds,
                     "settle": args.settle, "rounds": args.rounds, "threads": 1,
                     "client": "aiohttp in the benchmark process, on the same machine"},
        "phases": phases,
    }
    write(args.out, result)


if __name__ == "__main__":
    main()
