"""Open-loop load on `ranet-edge serve`, as the anchors measure it (Apparate, E3): requests
arrive at a fixed Poisson rate whether or not earlier ones were answered.

    python benchmarks/open_loop.py [--seconds 3] [--rounds 2] [--slo-ms 30] [--loads 0.5,1,1.5,2,3]
        [--out benchmarks/results/open_loop.json] [--plot docs/guides/open-loop.png]

Servers on the shipped bundle (1 intra-op thread, no spinning: the default; ``--timeout-s 5``,
so that an overloaded run drains in seconds), all started
first and then measured in turns at each load, so a drift of the shared machine hits them
alike:

- ``fixed``: the chain at the bundle's default operating point (fixed thresholds);
- ``slo``: the same with ``--slo-ms S`` (moves along the bundle's ladder);
- ``monolithic``: ``--graph monolithic`` (the whole model per image, no early exit);
- ``deadline``: a fixed-threshold server again, each request with ``?deadline_ms=D``
  (``--deadline-ms``, default 0.8 x the objective: the share of it ``--slo-ms`` plans for,
  leaving the rest to the HTTP side as the controller does).

Capacity is the fixed-threshold server's closed-loop throughput (``--connections`` clients
posting back to back), measured first and again just before each load level (the shared
machine drifts; the JSON keeps each, with the load average). Each load is a multiple of it: requests of ``--images-per-request``
of the 500 shipped labelled images (a JSON list of base64 PNGs; 4 by default, so that the
model, not the HTTP side, is what the load saturates), in turn, at exponential gaps. The client is asyncio on raw sockets; a
request never waits for an answer before it is sent: it takes an idle keep-alive connection
or opens one. Latency counts from the scheduled send time, and the client's own lag (actual
minus scheduled send time) is reported, to show the generator is not the bottleneck.

Reported per server and load: goodput (answers with status 200 within S, per second of the
schedule), p50 and p99 of the answered, the accuracy of the answered images, the share of 503s, the
operating points the answers name, and the client's lag.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
from _common import write

from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES

try:
    import uvloop
except ImportError:  # the serve extra brings it; asyncio's own loop otherwise
    uvloop = None

TIMEOUT_S = 5  # every server's --timeout-s: an overloaded run drains in seconds, not 30 s
MAX_CONNECTIONS = 4000  # open sockets at most; a request finding none free counts as a client drop


def _requests(per_request: int, query: str = "") -> tuple[list[bytes], list[np.ndarray]]:
    """The 500 shipped images as /v1 requests of ``per_request`` images each (a PNG body for
    one, a JSON list of base64 PNGs for more), in turn, and each request's labels."""
    with np.load(SAMPLE_IMAGES) as z:
        x, y = z["x"], z["y"]
    pngs = [cv2.imencode(".png", np.ascontiguousarray(im[..., ::-1]))[1].tobytes() for im in x]
    out, labels = [], []
    for i in range(0, len(pngs) - per_request + 1, per_request):
        chunk = pngs[i:i + per_request]
        if per_request == 1:
            body, ctype = chunk[0], b"image/png"
        else:
            body, ctype = json.dumps([base64.b64encode(b).decode() for b in chunk]).encode(), b"application/json"
        out.append(b"POST /v1/classify" + query.encode() + b" HTTP/1.1\r\nHost: bench\r\nContent-Type: " + ctype +
                   b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        labels.append(y[i:i + per_request])
    return out, labels


class Client:
    """Keep-alive connections to one server, opened on demand."""

    def __init__(self, port: int):
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.open = 0

    async def post(self, data: bytes) -> tuple[int, bytes]:
        """(status, body); status 0 when the connection failed."""
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            if self.open >= MAX_CONNECTIONS:
                return -1, b""
            self.open += 1
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                self.open -= 1
                return 0, b""
        try:
            writer.write(data)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length, close = 0, False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            body = await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            writer.close()
            self.open -= 1
            return 0, b""
        if close:
            writer.close()
            self.open -= 1
        else:
            self.idle.append((reader, writer))
        return status, body

    def close(self) -> None:
        for _, w in self.idle:
            w.close()
        self.idle.clear()


async def closed_loop(port: int, bodies: list[bytes], seconds: float, connections: int) -> float:
    """Answers (200) per second with ``connections`` clients posting back to back."""
    client = Client(port)
    done = 0
    end = time.perf_counter() + seconds

    async def worker(k: int) -> None:
        nonlocal done
        i = k
        while time.perf_counter() < end:
            status, _ = await client.post(bodies[i % len(bodies)])
            done += status == 200
            i += connections
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(connections)))
    rate = done / (time.perf_counter() - t0)
    client.close()
    return rate


async def open_loop(port: int, bodies: list[bytes], labels: list[np.ndarray], rate: float, seconds: float,
                    slo_ms: float, seed: int) -> dict:
    """One open-loop run at ``rate`` requests/s for ``seconds``."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1.0 / rate, int(rate * seconds * 1.5) + 16))
    times = times[times < seconds]
    client = Client(port)
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.05
    n = len(times)
    lag = np.zeros(n)
    latency = np.full(n, np.nan)
    status = np.zeros(n, np.int64)
    correct = np.zeros(n)  # share of the request's images classified right
    server_ms = np.full(n, np.nan)  # the answer's server_ms: from the engine's intake (after decoding) to it
    points: dict[str, int] = {}

    async def one(i: int) -> None:
        scheduled = t0 + times[i]
        lag[i] = loop.time() - scheduled
        j = int(seed * 7919 + i) % len(bodies)
        status[i], body = await client.post(bodies[j])
        latency[i] = (loop.time() - scheduled) * 1e3
        if status[i] == 200:
            doc = json.loads(body)
            correct[i] = np.mean([p["label"] for p in doc["predictions"]] == labels[j])
            server_ms[i] = doc["predictions"][0]["server_ms"]
            points[doc["operating_point"]] = points.get(doc["operating_point"], 0) + 1

    tasks = []
    for i in range(n):
        delay = t0 + times[i] - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    client.close()
    return {"seconds": seconds, "lag": lag, "latency": latency, "status": status, "correct": correct,
            "server_ms": server_ms, "points": points}


def summarize(parts: list[dict], rate: float, slo_ms: float, deadline_ms: float | None = None) -> dict:
    """The figures of the runs ``parts`` of one server at one rate, their requests pooled;
    with ``deadline_ms`` (the deadline server), the share of the answered within it + 2 ms,
    on the client's clock (from the scheduled send) and from the engine's intake (``server_ms``),
    and the share of every request sent that was answered 200 within it on the client's clock."""
    seconds = sum(p["seconds"] for p in parts)
    lag, latency, status, correct, server_ms = (np.concatenate([p[k] for p in parts]) for k in (
        "lag", "latency", "status", "correct", "server_ms"))
    points: dict[str, int] = {}
    for p in parts:
        for k, v in p["points"].items():
            points[k] = points.get(k, 0) + v
    ok = status == 200
    answered = latency[ok]
    within = {}
    if deadline_ms is not None and ok.any():
        within = {"within_deadline_2ms_client": float((latency[ok] <= deadline_ms + 2).mean()),
                  "within_deadline_2ms_engine": float((server_ms[ok] <= deadline_ms + 2).mean()),
                  # of every request sent, 503s and all: answered 200 within it on the client's clock
                  "answered_within_deadline_2ms_of_all": float((ok & (latency <= deadline_ms + 2)).mean())}
    return {
        **within,
        "rate": rate, "seconds": seconds, "requests": len(status), "answered": int(ok.sum()),
        "goodput": float((ok & (latency <= slo_ms)).sum() / seconds),
        "throughput": float(ok.sum() / seconds),
        "p50_ms": float(np.percentile(answered, 50)) if ok.any() else None,
        "p99_ms": float(np.percentile(answered, 99)) if ok.any() else None,
        "accuracy": float(correct[ok].mean()) if ok.any() else None,
        "share_503": float((status == 503).mean()), "share_other": float(((status != 200) & (status != 503)).mean()),
        "statuses": {str(s): int((status == s).sum()) for s in np.unique(status)},
        "operating_points": dict(sorted(points.items())),
        "client_lag_ms": {"p50": float(np.percentile(lag, 50) * 1e3), "p99": float(np.percentile(lag, 99) * 1e3),
                          "max": float(lag.max() * 1e3)},
    }


@contextlib.contextmanager
def server(name: str, args: list[str], logs: Path):
    """A `ranet-edge serve` subprocess on a kernel-picked port, up and answering."""
    exe = str(Path(sys.executable).with_name("ranet-edge"))
    out, err = logs / f"{name}.out", logs / f"{name}.err"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([exe, "serve", str(DEFAULT_BUNDLE), "--port", "0", "--threads", "1",
                                 "--timeout-s", str(TIMEOUT_S), "--no-access-log", *args], stdout=o, stderr=e, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Press Ctrl-C to stop." not in out.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {err.read_text()[-2000:]}")
            time.sleep(0.2)
        port = int(next(w for w in out.read_text().split() if w.startswith("http://127.0.0.1:"))
                   .rsplit(":", 1)[1].split("/")[0])
        yield port
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)
        if proc.poll() is None:
            proc.kill()


def plot(results: dict, slo_ms: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    panels = [("goodput", f"goodput (answers within {slo_ms:g} ms)/s"), ("p99_ms", "p99 ms (answered)"),
              ("accuracy", "accuracy of answered"), ("share_503", "share of 503")]
    for ax, (key, title) in zip(axes, panels, strict=True):
        for name, runs in results["runs"].items():
            xs = [r["load"] for r in runs]
            ys = [r[key] if r[key] is not None else np.nan for r in runs]
            ax.plot(xs, ys, marker="o", label=name)
        if key == "p99_ms":
            ax.axhline(slo_ms, color="grey", ls="--", lw=1)
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("load (x fixed-threshold capacity)")
    axes[0].legend(fontsize=8)
    caps = [r["capacity_rps"] for r in results["runs"]["fixed"]]
    fig.suptitle(f"open-loop Poisson load, {results['images_per_request']} images per request, x the fixed server's "
                 f"capacity re-measured before each level ({min(caps):.0f}-{max(caps):.0f} req/s) "
                 "(shared 2-core machine: compare side by side only)", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def markdown(results: dict) -> str:
    """The serving guide's table of ``results``, one row per load and server."""
    lines = ["| load (capacity then) | server | goodput /s | p50 ms | p99 ms | accuracy | 503 | client lag p99 ms "
             f"| deadline server: within {results['deadline_ms']:g} + 2 ms, client / engine / of all sent |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for i, load in enumerate(results["loads"]):
        for name in ("fixed", "slo", "deadline", "monolithic"):
            r = results["runs"][name][i]
            within = (f"{r['within_deadline_2ms_client']:.1%} / {r['within_deadline_2ms_engine']:.1%} / "
                      f"{r['answered_within_deadline_2ms_of_all']:.1%}" if "within_deadline_2ms_client" in r else "")
            lines.append(f"| {load:g}x ({r['capacity_rps']:.0f} req/s) | {name} | {r['goodput']:.1f} | "
                         f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['accuracy']:.1%} | {r['share_503']:.1%} | "
                         f"{r['client_lag_ms']['p99']:.1f} | {within} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="of each open-loop run")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each server at each load, in turns")
    ap.add_argument("--slo-ms", type=float, default=30.0)
    ap.add_argument("--loads", default="0.5,1,1.5,2,3")
    ap.add_argument("--connections", type=int, default=16, help="closed-loop clients measuring capacity")
    ap.add_argument("--deadline-ms", type=float, default=None, help="of the deadline server's requests [0.8 x S]")
    ap.add_argument("--recheck-s", type=float, default=2.0, help="capacity measured again before each load level")
    ap.add_argument("--images-per-request", type=int, default=4, help="shipped images per request, in turn")
    ap.add_argument("--out", default="benchmarks/results/open_loop.json")
    ap.add_argument("--plot", default="docs/guides/open-loop.png")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the servers on the way out
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    bodies, labels = _requests(a.images_per_request)
    deadline_ms = a.deadline_ms if a.deadline_ms is not None else 0.8 * a.slo_ms
    with_deadline, _ = _requests(a.images_per_request, f"?deadline_ms={deadline_ms:g}")
    run = uvloop.run if uvloop is not None else asyncio.run
    loads = [float(v) for v in a.loads.split(",")]
    configs = {"fixed": [], "slo": ["--slo-ms", f"{a.slo_ms:g}"], "monolithic": ["--graph", "monolithic"],
               "deadline": []}  # a fixed-threshold server, each request with deadline_ms
    requests = {name: with_deadline if name == "deadline" else bodies for name in configs}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        ports = {name: stack.enter_context(server(name, args, Path(tmp))) for name, args in configs.items()}
        for port in ports.values():  # warm up: sessions, arenas
            run(closed_loop(port, bodies, 1.0, 4))
        capacity = run(closed_loop(ports["fixed"], bodies, 5.0, a.connections))
        print(f"capacity of the fixed-threshold server: {capacity:.0f} req/s (closed loop, {a.connections} clients)",
              flush=True)
        models = {name: json.loads(urllib.request.urlopen(f"http://127.0.0.1:{p}/v1/model").read())
                  for name, p in ports.items()}
        runs: dict[str, list] = {name: [] for name in configs}
        for j, load in enumerate(loads):
            parts: dict[str, list] = {name: [] for name in configs}
            # the shared machine drifts: capacity again, just before this level's runs
            now_capacity = run(closed_loop(ports["fixed"], bodies, a.recheck_s, a.connections))
            for k in range(a.rounds):  # the servers in turn, round after round: drift hits them alike
                for name, port in ports.items():
                    parts[name].append(run(open_loop(port, requests[name], labels, load * now_capacity, a.seconds,
                                                     a.slo_ms, seed=100 * j + k)))
            for name in configs:
                r = summarize(parts[name], load * now_capacity, a.slo_ms, deadline_ms if name == "deadline" else None)
                r["load"], r["capacity_rps"], r["loadavg_1min"] = load, now_capacity, os.getloadavg()[0]
                runs[name].append(r)
                print(f"{load:>4}x ({now_capacity:.0f} req/s) {name:>10}: goodput {r['goodput']:7.1f}/s  p50 {r['p50_ms'] or 0:7.2f}  "
                      f"p99 {r['p99_ms'] or 0:8.2f} ms  acc {r['accuracy'] or 0:.4f}  503 {r['share_503']:.3f}  "
                      f"lag p99 {r['client_lag_ms']['p99']:.2f} ms  {r['operating_points']}"
                      + (f"  within D+2: client {r['within_deadline_2ms_client']:.3f} engine "
                         f"{r['within_deadline_2ms_engine']:.3f} (of all sent: "
                         f"{r['answered_within_deadline_2ms_of_all']:.3f})" if "within_deadline_2ms_client" in r else ""),
                      flush=True)
    results = {"slo_ms": a.slo_ms, "deadline_ms": deadline_ms, "capacity_rps": capacity, "images_per_request": a.images_per_request, "loads": loads, "seconds": a.seconds,
               "servers": {name: {"args": args, "default_operating_point": models[name]["default_operating_point"],
                                  "graph": models[name]["graph"]} for name, args in configs.items()},
               "cpus": os.cpu_count(), "runs": runs,
               "note": "shared, noisy 2-core machine; the client runs on the same cores as the servers: compare "
                       "ratios measured side by side in this run only"}
    write(a.out, results)
    print(markdown(results))
    if a.plot:
        plot(results, a.slo_ms, a.plot)
        print(f"wrote {a.out} and {a.plot}")


if __name__ == "__main__":
    main()
