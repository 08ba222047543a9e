"""Per-request cost of the HTTP layers the one-process server could be built on, side by side.

    python benchmarks/serve_overhead.py [--seconds 3] [--out benchmarks/results/serve_overhead.json]
        [--kserve-python /tmp/kserve-venv/bin/python] [--mlserver-python /tmp/mlserver-venv/bin/python]

Each candidate serves an echo route (read the POSTed body, answer a small constant JSON) in a
process of its own, one worker; Debian's `wrk` (C, one thread) drives it with closed-loop
connections (1, 8, 32) posting a 2 KB body, each level for ``--seconds``, the candidates in
turns. Reported per candidate and level: req/s, p50/p99 latency (wrk's), and the server's
own CPU microseconds per request (from /proc: what the framework costs, whatever the client
costs), plus the server's RSS and the time from start to its first answer.

Candidates: a raw ASGI app on uvicorn (httptools, uvloop); Starlette on uvicorn; aiohttp's
web server; KServe's Python ModelServer (its v1 predict route, a model that echoes) and
MLServer (a custom runtime that echoes, on its v2 infer route) when an interpreter with them
installed is given (they pull in dependencies this project does not want in its own
environment, so they live in throwaway venvs: ``python3 -m venv /tmp/kserve-venv &&
/tmp/kserve-venv/bin/pip install kserve``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import ensure_wrk, write

LEVELS = (1, 8, 32)
TICK = os.sysconf("SC_CLK_TCK")
BODY = json.dumps({"data": "x" * 2000})

SERVERS = {
    "asgi-raw+uvicorn": '''
import sys, uvicorn
OUT = b'{"ok":true}'
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        msg = await receive()
        more = msg.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(OUT)).encode())]})
    await send({"type": "http.response.body", "body": OUT})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http="httptools", loop="uvloop",
            access_log=False, log_level="warning", lifespan="off")
''',
    "starlette+uvicorn": '''
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
async def echo(request):
    await request.body()
    return JSONResponse({"ok": True})
app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http="httptools", loop="uvloop",
            access_log=False, log_level="warning", lifespan="off")
''',
    "aiohttp": '''
import sys
from aiohttp import web
async def echo(request):
    await request.read()
    return web.json_response({"ok": True})
app = web.Application()
app.router.add_post("/echo", echo)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
''',
    "kserve-modelserver": '''
import logging, sys
import kserve
class Echo(kserve.Model):
    def __init__(self):
        super().__init__("echo")
        self.ready = True
    def predict(self, payload, headers=None):
        return {"predictions": [1]}
kserve.ModelServer(http_port=int(sys.argv[1]), workers=1, enable_grpc=False,
                   enable_latency_logging=False).start([Echo()])
''',
}
PATHS = {"kserve-modelserver": "/v1/models/echo:predict"}
BODIES = {"kserve-modelserver": json.dumps({"instances": ["x" * 2000]})}
MLSERVER_RUNTIME = '''
from mlserver import MLModel
from mlserver.types import InferenceResponse, ResponseOutput
class Echo(MLModel):
    async def load(self):
        return True
    async def predict(self, payload):
        return InferenceResponse(model_name=self.name, outputs=[ResponseOutput(name="ok", shape=[1], datatype="INT64", data=[1])])
'''
MLSERVER_BODY = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["x" * 2000]}]})

WRK_SCRIPT = '''
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open(os.getenv("BODY_FILE")):read("*a")
done = function(summary, latency, requests)
  io.write(string.format('{"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout, latency:percentile(50), latency:percentile(99)))
end
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_cpu_and_rss(pid: int) -> tuple[float, float]:
    """CPU seconds and RSS (MB) of ``pid`` and every process below it."""
    cpu, rss, todo, seen = 0.0, 0.0, [pid], set()
    children: dict[int, list[int]] = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu += (int(fields[11]) + int(fields[12])) / TICK
        rss += int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        todo.extend(children.get(p, ()))
    return cpu, rss


class Candidate:
    def __init__(self, name: str, argv: list[str], path: str, body: str, workdir: Path):
        self.name, self.argv, self.path = name, argv, path
        self.body_file = workdir / f"{name}.body"
        self.body_file.write_text(body)
        self.body = body
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self, log: Path) -> float:
        """Start it; seconds until it answered its first request."""
        self.port = free_port()
        t0 = time.perf_counter()
        with open(log, "w") as f:
            self.proc = subprocess.Popen([*self.argv, str(self.port)], stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {log.read_text()[-2000:]}")
            try:
                req = urllib.request.Request(self.url, data=self.body.encode(),
                                             headers={"Content-Type": "application/json"})
                urllib.request.urlopen(req, timeout=2).read()
                return time.perf_counter() - t0
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer within 120 s: {log.read_text()[-2000:]}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(10)


def wrk(url: str, connections: int, seconds: float, script: Path, body_file: Path) -> dict:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(script), url],
                         capture_output=True, text=True, env={**os.environ, "BODY_FILE": str(body_file)},
                         timeout=seconds + 60)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not line:
        raise RuntimeError(f"wrk gave no summary: {out.stdout}{out.stderr}")
    return json.loads(line[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--out", default="benchmarks/results/serve_overhead.json")
    ap.add_argument("--kserve-python", default=None, help="a python with kserve installed")
    ap.add_argument("--mlserver-python", default=None, help="a python with mlserver installed")
    args = ap.parse_args()
    ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="serve-overhead-"))
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    cands: list[Candidate] = []
    skipped: dict[str, str] = {}
    for name, code in SERVERS.items():
        python = sys.executable
        if name == "kserve-modelserver":
            if not args.kserve_python:
                skipped[name] = "no --kserve-python given"
                continue
            python = args.kserve_python
        src = work / f"server_{len(cands)}.py"  # not the module's own name (aiohttp.py would shadow it)
        src.write_text(code)
        cands.append(Candidate(name, [python, str(src)], PATHS.get(name, "/echo"), BODIES.get(name, BODY), work))
    if args.mlserver_python:
        mdir = work / "mlserver"
        mdir.mkdir()
        (mdir / "runtime.py").write_text(MLSERVER_RUNTIME)
        (mdir / "model-settings.json").write_text(json.dumps({"name": "echo", "implementation": "runtime.Echo"}))
        launcher = work / "mlserver_start.py"
        launcher.write_text(
            "import json, os, sys, subprocess\n"
            f"d = {str(mdir)!r}\n"
            "json.dump({'http_port': int(sys.argv[1]), 'grpc_port': int(sys.argv[1]) + 1, 'metrics_port': "
            "int(sys.argv[1]) + 2, 'parallel_workers': 0, 'debug': False}, open(os.path.join(d, 'settings.json'), 'w'))\n"
            "os.chdir(d)\n"
            f"os.execv({str(Path(args.mlserver_python).with_name('mlserver'))!r}, ['mlserver', 'start', d])\n")
        cands.append(Candidate("mlserver", [args.mlserver_python, str(launcher)], "/v2/models/echo/infer",
                               MLSERVER_BODY, work))
    else:
        skipped["mlserver"] = "no --mlserver-python given"
    results: dict[str, dict] = {}
    try:
        for c in cands:
            healthy = c.start(work / f"{c.name}.log")
            results[c.name] = {"time_to_first_answer_s": round(healthy, 3), "levels": {}}
            wrk(c.url, 4, 1.0, script, c.body_file)  # settle (unmeasured)
            _, rss = tree_cpu_and_rss(c.proc.pid)
            results[c.name]["rss_mb"] = round(rss, 1)
            for n in LEVELS:
                cpu0, _ = tree_cpu_and_rss(c.proc.pid)
                r = wrk(c.url, n, args.seconds, script, c.body_file)
                cpu1, _ = tree_cpu_and_rss(c.proc.pid)
                rps = r["requests"] / (r["duration_us"] / 1e6)
                results[c.name]["levels"][str(n)] = {
                    "req_s": round(rps), "p50_ms": round(r["p50_us"] / 1e3, 3), "p99_ms": round(r["p99_us"] / 1e3, 3),
                    "server_cpu_us_per_req": round((cpu1 - cpu0) / max(r["requests"], 1) * 1e6, 1),
                    "errors": r["errors"]}
                print(f"{c.name:20s} c={n:<3d} {rps:8.0f} req/s  p50 {r['p50_us'] / 1e3:6.3f} ms  "
                      f"p99 {r['p99_us'] / 1e3:6.3f} ms  server CPU "
                      f"{results[c.name]['levels'][str(n)]['server_cpu_us_per_req']:6.1f} us/req", flush=True)
            c.stop()
    finally:
        for c in cands:
            c.stop()
        shutil.rmtree(work, ignore_errors=True)
    write(args.out, {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                     "seconds_per_level": args.seconds, "body_bytes": len(BODY), "results": results,
                     "skipped": skipped})


if __name__ == "__main__":
    main()
