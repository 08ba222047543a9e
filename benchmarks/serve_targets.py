"""The one-process server against issue 22's targets: wrk (C) against `ranet-edge serve`.

    python benchmarks/serve_targets.py [--seconds 5] [--out benchmarks/results/serve_targets.json]

Three servers side by side, each a `ranet-edge serve --port 0 --no-access-log` process on
the shipped bundle: the chain with cross-request stage batching (the default),
the chain without (``--no-stage-batching``: each batch runs all its graphs before the next),
and the monolithic graph (``--graph monolithic``). For each: time from the process's start
(started one after the other) to its first 200 on /v1/health, RSS after the load, and
`wrk -t1` at 1, 8 and 32 connections posting one PNG per request (64 different sample
images in turn, so the exits mix as in the data), then 32 connections posting a JSON list of
16 images; at each level the servers are measured in turns, ``--rounds`` blocks of
``--seconds`` each (medians kept), so the shared machine's drift hits them alike. Reported:
req/s, images/s, p50 and p99 (wrk's), non-2xx answers. The model's own cost for comparison:
``ExitChain.predict`` on the same 64 images one at a time, mean ms per image (adaptive), and
each graph's ms per row at batch 1, 4, 16 and 64 (what batching survivors can save).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
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
from ranet_edge.runtime import ExitChain

LEVELS = (1, 8, 32)
IMAGES = 64
WRK_SCRIPT = r'''
local bodies, i = {}, 0
local ctype = os.getenv("CTYPE")
for line in io.lines(os.getenv("BODY_LIST")) do
  local f = io.open(line, "rb"); bodies[#bodies + 1] = f:read("*a"); f:close()
end
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", os.getenv("PATH_Q"), {["Content-Type"] = ctype}, bodies[i])
end
done = function(summary, latency, requests)
  io.write(string.format('{"requests": %d, "duration_us": %d, "non2xx": %d, "socket_errors": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout, latency:percentile(50), latency:percentile(99)))
end
'''
CONFIGS = {"chain, stage batching": [], "chain, no stage batching": ["--no-stage-batching"],
           "monolithic": ["--graph", "monolithic"]}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wrk(url: str, connections: int, seconds: float, script: Path, bodies: Path, ctype: str) -> dict:
    env = {**os.environ, "BODY_LIST": str(bodies), "CTYPE": ctype, "PATH_Q": "/v1/classify"}
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(script), url],
                         capture_output=True, text=True, env=env, timeout=seconds + 60)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"wrk gave no summary: {out.stdout}{out.stderr}")
    return json.loads(lines[-1])


def graph_ms_per_row(chain: ExitChain, x: np.ndarray) -> dict[str, dict[str, float]]:
    """Each graph's ms per row at batch 1, 4, 16 and 64 (its real inputs: the cached maps of
    the 64 images): what batching the survivors can save per row."""
    env, out = {chain.input_name: x}, {}
    for k, g in enumerate(chain.graphs):
        feeds = {n: env[n] for n in g.inputs}
        row = {}
        for b in (1, 4, 16, 64):
            part = {n: np.ascontiguousarray(v[:b]) for n, v in feeds.items()}
            for _ in range(3):
                g.step(part)
            ts = []
            for _ in range(15):
                t = time.perf_counter()
                g.step(part)
                ts.append(time.perf_counter() - t)
            row[str(b)] = round(float(np.median(ts)) / b * 1e3, 4)
        out[str(k)] = row
        _, cache = g.step(feeds)
        env = {n: v for n, v in env.items() if n in g.keep_after}
        env.update(cache)
    return out


def start(args: list[str], log: Path) -> tuple[subprocess.Popen, str, float]:
    """A server process, its URL and the seconds from spawn to its first 200 on /v1/health."""
    cmd = [str(Path(sys.executable).with_name("ranet-edge")), "serve", "--port", "0", "--no-access-log", *args]
    t0 = time.perf_counter()
    out = open(log, "w")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    url = None
    while time.monotonic() < deadline and proc.poll() is None:
        if url is None:
            for line in log.read_text().splitlines():
                if line.startswith("ranet-edge serving at "):
                    url = line.split()[-1]
        if url is not None:
            try:
                if urllib.request.urlopen(f"{url}/v1/health", timeout=2).status == 200:
                    return proc, url, time.perf_counter() - t0
            except OSError:
                pass
        time.sleep(0.01)
    proc.kill()
    raise RuntimeError(f"server did not become healthy: {log.read_text()[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3, help="blocks per server and level, in turns (median kept)")
    ap.add_argument("--out", default="benchmarks/results/serve_targets.json")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    with np.load(SAMPLE_IMAGES) as z:
        images = z["x"][:IMAGES]
    chain = ExitChain.load(DEFAULT_BUNDLE, threads=1)
    x = chain.preprocess(images)
    for i in range(IMAGES):  # warm
        chain.predict(x[i:i + 1])
    t = time.perf_counter()
    for _ in range(10):
        for i in range(IMAGES):
            chain.predict(x[i:i + 1])
    model_ms = (time.perf_counter() - t) / (10 * IMAGES) * 1e3
    per_row = graph_ms_per_row(chain, x)
    del chain
    work = Path(tempfile.mkdtemp(prefix="serve-targets-"))
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    pngs = []
    for i, im in enumerate(images):
        p = work / f"{i}.png"
        p.write_bytes(cv2.imencode(".png", np.ascontiguousarray(im[..., ::-1]))[1].tobytes())
        pngs.append(p)
    (work / "png.list").write_text("\n".join(map(str, pngs)) + "\n")
    lists = []
    for k in range(4):  # 4 different lists of 16
        p = work / f"list{k}.json"
        p.write_text(json.dumps([base64.b64encode(pngs[(k * 16 + j) % IMAGES].read_bytes()).decode()
                                 for j in range(16)]))
        lists.append(p)
    (work / "json.list").write_text("\n".join(map(str, lists)) + "\n")
    results: dict[str, dict] = {}
    servers: dict[str, tuple[subprocess.Popen, str]] = {}
    try:
        for name, extra in CONFIGS.items():  # started one after the other, each timed alone
            proc, url, healthy = start(extra, work / f"server{len(servers)}.log")
            servers[name] = (proc, url)
            results[name] = {"args": extra, "time_to_healthy_s": round(healthy, 3), "one_image": {}}
            wrk(url, 8, 1.0, script, work / "png.list", "image/png")  # settle, unmeasured
        runs = [(str(n), work / "png.list", "image/png", n) for n in LEVELS] + [
            ("sixteen_images_c32", work / "json.list", "application/json", 32)]
        for key, bodies, ctype, n in runs:  # the servers in turns, --rounds times: drift hits them alike
            per = 16 if ctype == "application/json" else 1
            got: dict[str, list[dict]] = {name: [] for name in servers}
            for _ in range(args.rounds):
                for name, (_, url) in servers.items():
                    got[name].append(wrk(url, n, args.seconds, script, bodies, ctype))
            for name, rs in got.items():
                rate = sorted(r["requests"] / (r["duration_us"] / 1e6) for r in rs)[len(rs) // 2]
                p50 = sorted(r["p50_us"] for r in rs)[len(rs) // 2] / 1e3
                p99 = sorted(r["p99_us"] for r in rs)[len(rs) // 2] / 1e3
                entry = {"req_s": round(rate), "images_s": round(rate * per), "p50_ms": p50, "p99_ms": p99,
                         "non2xx": sum(r["non2xx"] for r in rs), "socket_errors": sum(r["socket_errors"] for r in rs),
                         "rounds_req_s": [round(r["requests"] / (r["duration_us"] / 1e6)) for r in rs]}
                if per == 1:
                    results[name]["one_image"][key] = entry
                else:
                    results[name][key] = entry
                print(f"{name:26s} {per:2d} image(s) c={n:<3d} {rate * per:7.0f} images/s  p50 {p50:7.2f} ms  "
                      f"p99 {p99:7.2f} ms  non-2xx {entry['non2xx']}  rounds {entry['rounds_req_s']}", flush=True)
        for name, (proc, _) in servers.items():
            results[name]["rss_mb"] = round(rss_mb(proc.pid), 1)
    finally:
        for name, (proc, _) in servers.items():
            proc.send_signal(2)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if name in results:
                results[name]["exit_code"] = proc.returncode
        shutil.rmtree(work, ignore_errors=True)
    sb, nosb = results["chain, stage batching"], results["chain, no stage batching"]
    summary = {
        "model_adaptive_ms_per_image": round(model_ms, 3),
        "p50_1_client_ms": sb["one_image"]["1"]["p50_ms"],
        "p50_target_ms": round(model_ms + 1.5, 3),
        "req_s_8_32_clients": [sb["one_image"]["8"]["req_s"], sb["one_image"]["32"]["req_s"]],
        "rss_mb": sb["rss_mb"], "time_to_healthy_s": sb["time_to_healthy_s"],
        "stage_batching_speedup_images_s_c32_one_image": round(
            sb["one_image"]["32"]["images_s"] / nosb["one_image"]["32"]["images_s"], 3),
        "stage_batching_speedup_images_s_c32_16_images": round(
            sb["sixteen_images_c32"]["images_s"] / nosb["sixteen_images_c32"]["images_s"], 3),
        "graph_ms_per_row_at_batch_1_4_16_64": per_row,
    }
    print(json.dumps(summary, indent=1))
    load = os.getloadavg()
    write(args.out, {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "loadavg_1_5_15": [round(v, 2) for v in load]},
                     "seconds_per_block": args.seconds, "rounds": args.rounds, "summary": summary, "servers": results})


if __name__ == "__main__":
    main()
