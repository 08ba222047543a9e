"""`ranet-edge serve` under load, every way it serves, side by side in one run: wrk (C) as the client.

    python benchmarks/serve_load.py [--seconds 3] [--rounds 3] [--out benchmarks/results/serve_load.json]

Four servers on the shipped bundle, started one after the other (each one's time from spawn
to its first 200 on /v1/health is its own) and then measured in turns:

- the one-process server with the chain and cross-request stage batching (the default);
- the same without stage batching (``--no-stage-batching``: each batch runs all its graphs
  before the next);
- the same server with the monolithic graph (``--graph monolithic``);
- Ray Serve with HAProxy (``--ray --haproxy``: a local Ray, one replica, the same engine).

`wrk -t1` at 1, 8, 32 and 64 connections posts one PNG per request (64 sample images in
turn, so the exits mix as in the data), then a JSON list of 16 images per request at the same
connection counts. At each point the servers run in turns, ``--rounds`` blocks of
``--seconds`` each (medians kept), so the shared machine's drift hits them alike. Reported:
req/s, images/s, p50 and p99 (wrk's), non-2xx answers and socket errors; the whole server's
RSS after the load (every process of its session: Ray's and HAProxy's included) and its
process count. Early answers: at one connection, one image that leaves at each exit, posted
over and over (p50 by exit). The model's own cost for comparison: ``ExitChain.predict`` on the
same 64 images one at a time, mean ms per image (adaptive), and each graph's ms per row at
batch 1, 4, 16 and 64 (what batching survivors can save).
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
from _common import ensure_wrk, write

from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES
from ranet_edge.runtime import ExitChain

LEVELS = (1, 8, 32, 64)
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
           "monolithic": ["--graph", "monolithic"], "Ray Serve + HAProxy, chain": ["--ray", "--haproxy"]}
RAY_START_S = 240.0  # a local Ray on a busy 2-core machine: ~30 s, at worst a few times that


def session_rss(sid: int) -> tuple[float, int]:
    """Summed VmRSS (MB) and count of the processes of session ``sid``: the whole server."""
    total, n = 0.0, 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getsid(int(pid)) != sid:
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
                    n += 1
        except (OSError, ProcessLookupError):
            continue
    return total, n


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports the kernel picked (held together while picking)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wrk(url: str, connections: int, seconds: int, script: Path, bodies: Path, ctype: str) -> dict:
    env = {**os.environ, "BODY_LIST": str(bodies), "CTYPE": ctype, "PATH_Q": "/v1/classify"}
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "-s", str(script),
                          url], capture_output=True, text=True, env=env, timeout=seconds + 90)
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
    """A server in a session of its own, its URL and the seconds from spawn to its first 200
    on /v1/health."""
    port, stats, metrics = free_ports(3)
    cmd = [str(Path(sys.executable).with_name("ranet-edge")), "serve", "--port", str(port), "--no-access-log", *args]
    env = {**os.environ, "RAY_SERVE_HAPROXY_STATS_PORT": str(stats), "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics)}
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    deadline = time.monotonic() + (RAY_START_S if "--ray" in args else 60)
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if urllib.request.urlopen(f"{url}/v1/health", timeout=2).status == 200:
                return proc, url, time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.01)
    stop(proc)
    raise RuntimeError(f"server {' '.join(args) or '(default)'} did not become healthy: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> int | None:
    """SIGINT (a user's Ctrl-C) to the server's main process; whatever its session leaves after
    20 s is killed. Its exit code."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    return proc.returncode


def stats(rs: list[dict], per: int) -> dict:
    """Medians over the rounds of one server at one point."""
    def med(v: list[float]) -> float:
        return sorted(v)[len(v) // 2]
    rates = [r["requests"] / (r["duration_us"] / 1e6) for r in rs]
    return {"req_s": round(med(rates)), "images_s": round(med(rates) * per), "p50_ms": med([r["p50_us"] for r in rs]) / 1e3,
            "p99_ms": med([r["p99_us"] for r in rs]) / 1e3, "requests": sum(r["requests"] for r in rs),
            "non2xx": sum(r["non2xx"] for r in rs), "socket_errors": sum(r["socket_errors"] for r in rs),
            "rounds_req_s": [round(v) for v in rates]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=3, help="seconds per block (wrk takes whole seconds)")
    ap.add_argument("--rounds", type=int, default=3, help="blocks per server and point, in turns (median kept)")
    ap.add_argument("--exit-seconds", type=int, default=2, help="wrk time per exit for the early-answer figures")
    ap.add_argument("--no-ray", action="store_true", help="leave out Ray Serve (where the ray extra is not installed)")
    ap.add_argument("--out", default="benchmarks/results/serve_load.json")
    args = ap.parse_args()
    ensure_wrk()
    configs = {k: v for k, v in CONFIGS.items() if not (args.no_ray and "--ray" in v)}
    if not args.no_ray and importlib.util.find_spec("ray") is None:
        sys.exit("error: ray is not installed; install the ray extra (pip install 'ranet-edge[ray]') or pass --no-ray")
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
    exits = np.asarray(chain.predict(x).exits)
    per_row = graph_ms_per_row(chain, x)
    del chain
    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
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
    by_exit_lists = {}
    for e in sorted(set(exits.tolist())):  # one image that leaves at each exit
        p = work / f"exit{e}.list"
        p.write_text(f"{pngs[int(np.flatnonzero(exits == e)[0])]}\n")
        by_exit_lists[str(e)] = p
    results: dict[str, dict] = {}
    servers: dict[str, tuple[subprocess.Popen, str]] = {}
    t_run = time.perf_counter()
    try:
        for name, extra in configs.items():  # started one after the other, each timed alone
            proc, url, healthy = start(extra, work / f"server{len(servers)}.log")
            servers[name] = (proc, url)
            results[name] = {"args": extra, "time_to_healthy_s": round(healthy, 3), "one_image": {},
                             "sixteen_images": {}, "early_answer_p50_ms_by_exit": {}}
            wrk(url, 8, 1, script, work / "png.list", "image/png")  # settle, unmeasured
        for per, n in [(per, n) for per in (1, 16) for n in LEVELS]:  # servers in turns: drift hits them alike
            key = "one_image" if per == 1 else "sixteen_images"
            bodies, ctype = (work / "png.list", "image/png") if per == 1 else (work / "json.list", "application/json")
            got: dict[str, list[dict]] = {name: [] for name in servers}
            for _ in range(args.rounds):
                for name, (_, url) in servers.items():
                    got[name].append(wrk(url, n, args.seconds, script, bodies, ctype))
            for name, rs in got.items():
                entry = results[name][key][str(n)] = stats(rs, per)
                print(f"{name:28s} {per:2d} image(s) c={n:<3d} {entry['images_s']:7.0f} images/s  "
                      f"p50 {entry['p50_ms']:7.2f} ms  p99 {entry['p99_ms']:7.2f} ms  non-2xx {entry['non2xx']}  "
                      f"socket errors {entry['socket_errors']}  rounds {entry['rounds_req_s']}", flush=True)
        for e, bodies in by_exit_lists.items():  # early answers: one client, one image per exit
            for name, (_, url) in servers.items():
                r = wrk(url, 1, args.exit_seconds, script, bodies, "image/png")
                results[name]["early_answer_p50_ms_by_exit"][e] = r["p50_us"] / 1e3
                results[name].setdefault("early_answer_non2xx", 0)
                results[name]["early_answer_non2xx"] += r["non2xx"] + r["socket_errors"]
            print("early answers, p50 ms at exit", e, {n: results[n]["early_answer_p50_ms_by_exit"][e] for n in servers},
                  flush=True)
        for name, (proc, _) in servers.items():
            rss, nproc = session_rss(os.getsid(proc.pid))
            results[name]["rss_mb"], results[name]["processes"] = round(rss, 1), nproc
    finally:
        for name, (proc, _) in servers.items():
            code = stop(proc)
            if name in results:
                results[name]["exit_code"] = code
        shutil.rmtree(work, ignore_errors=True)
    sb, nosb = results["chain, stage batching"], results["chain, no stage batching"]
    lost = {name: sum(e["non2xx"] + e["socket_errors"] for k in ("one_image", "sixteen_images") for e in r[k].values())
            + r["early_answer_non2xx"] for name, r in results.items()}
    summary = {
        "model_adaptive_ms_per_image": round(model_ms, 3),
        "p50_1_client_ms": sb["one_image"]["1"]["p50_ms"],
        "p50_target_ms": round(model_ms + 1.5, 3),
        "req_s_8_32_clients": [sb["one_image"]["8"]["req_s"], sb["one_image"]["32"]["req_s"]],
        "rss_mb": sb["rss_mb"], "time_to_healthy_s": sb["time_to_healthy_s"],
        "stage_batching_speedup_images_s_c32_one_image": round(
            sb["one_image"]["32"]["images_s"] / nosb["one_image"]["32"]["images_s"], 3),
        "stage_batching_speedup_images_s_c32_16_images": round(
            sb["sixteen_images"]["32"]["images_s"] / nosb["sixteen_images"]["32"]["images_s"], 3),
        "requests_not_200": lost,
        "requests_sent": sum(e["requests"] for r in results.values() for k in ("one_image", "sixteen_images")
                             for e in r[k].values()),
        "graph_ms_per_row_at_batch_1_4_16_64": per_row,
        "exit_of_each_sample_image": np.bincount(exits, minlength=len(per_row)).tolist(),
    }
    ray = results.get("Ray Serve + HAProxy, chain")
    if ray is not None:
        summary["ray_haproxy"] = {"p50_1_client_ms": ray["one_image"]["1"]["p50_ms"],
                                  "req_s_8_32_clients": [ray["one_image"]["8"]["req_s"], ray["one_image"]["32"]["req_s"]],
                                  "rss_mb": ray["rss_mb"], "processes": ray["processes"],
                                  "time_to_healthy_s": ray["time_to_healthy_s"]}
    print(json.dumps({k: v for k, v in summary.items() if k != "graph_ms_per_row_at_batch_1_4_16_64"}, indent=1))
    load = os.getloadavg()
    write(args.out, {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "loadavg_1_5_15": [round(v, 2) for v in load]},
                     "wall_s": round(time.perf_counter() - t_run), "seconds_per_block": args.seconds,
                     "rounds": args.rounds, "summary": summary, "servers": results})


if __name__ == "__main__":
    main()
