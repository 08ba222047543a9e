"""A Ray cluster of two nodes on this machine, `ranet-edge serve --ray --address HEAD` on it,
steady load, and the worker node lost and brought back.

    python benchmarks/ray_cluster.py [--clients 4] [--before-s 20] [--lost-s 20] [--after-s 40]
                                     [--warmup-s 5] [--rss-every-s 30]
                                     [--autoscale] [--out benchmarks/results/ray_cluster.json]

A head node and a worker node (`ray start --head`, then `ray start --address`, one CPU
each: ranet_edge/serve/ray_cluster.py), two replicas of one thread each (one per node, the
CPUs force it), Serve's proxy and the retrying ingress on the head. Closed-loop clients
(ranet_edge/serve/load_client.py: every answer's label checked, 503 + Retry-After honoured)
post one PNG per request throughout:

1. ``before``: 2 replicas on 2 nodes;
2. the worker node is SIGKILLed (raylet, agents, replica at once); ``lost``: 1 replica;
3. the node is started again (`ray start --address`) under a steady load at half the
   ``lost`` rate (closed-loop clients on this one machine would take the CPU its start needs;
   a real node has its own) until a replica placed on it answers;
4. ``after``: closed-loop clients again, 2 replicas on 2 nodes.

Reported: the counts (sent, 200, retried by the ingress, 503 then sent again, failed), the
throughput of each phase (the first 3 s after a change left out) with the CPU of the load
generator, Serve's proxy, the ingress, the replicas and the rest of Ray beside it, the time
from the node's `ray start` to its replica's first answer and to full throughput (a 2 s
window at >= 90% of ``before``), and each process's RSS (named: its Ray actor, program or
script), sampled every ``--rss-every-s`` from the end of ``--warmup-s`` of load: its growth
over the run and over the run's second half (a leak keeps growing; a cache that fills does not).
``--autoscale`` then redeploys with ``--replicas auto`` (1-2 replicas, 2 requests in flight
per replica as the target) and records the replica count under 8 clients sending 16 images
per request (so that the replicas, not the proxy, are what they wait on) and after the load;
``--autoscale-only`` does only that (``--out benchmarks/results/ray_cluster_autoscale.json``).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import write

from ranet_edge.serve import procs
from ranet_edge.serve.load_client import Load, sample_requests
from ranet_edge.serve.ray_cluster import LocalCluster, free_port

TICK = os.sysconf("SC_CLK_TCK")
SETTLE_S = 3.0
GROUPS = (("proxy", "ProxyActor"), ("ingress", "ranet-edge-ingress"), ("replicas", "ServeReplica:ranet-edge:ranet-edge"))


def cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except OSError:
        return 0.0


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def short_name(pid: int) -> str:
    """What a process is: its Ray actor or task (``ray::X``), else its program (raylet,
    gcs_server) or the Python script it runs (log_monitor.py, dashboard.py, ...)."""
    cmd = procs.cmdline(pid).split()
    if not cmd:
        return "gone"
    if cmd[0].startswith("ray::"):
        return cmd[0]
    script = next((Path(a).name for a in cmd[1:4] if a.endswith(".py")), None)
    return script or Path(cmd[0]).name


class RssSeries(threading.Thread):
    """The RSS of each process in ``pids`` every ``every`` seconds, until :meth:`stop`."""

    def __init__(self, pids: list[int], every: float):
        super().__init__(daemon=True)
        self.pids, self.every, self.done = pids, every, threading.Event()
        self.rows: list[tuple[float, list[float]]] = []
        self.t0 = time.monotonic()

    def run(self) -> None:
        while True:
            self.rows.append((round(time.monotonic() - self.t0, 1), [round(rss_mb(p), 1) for p in self.pids]))
            if self.done.wait(self.every):
                return

    def stop(self) -> list[tuple[float, list[float]]]:
        self.done.set()
        self.join()
        return self.rows


def rss_report(groups: dict[int, str], rows: list[tuple[float, list[float]]]) -> dict:
    """Per process: RSS after warm-up, at the run's middle and at its end, the growth over the
    whole run and over its second half, and the series (MB every sample)."""
    out = {}
    mid = rows[len(rows) // 2][1]
    for j, (pid, group) in enumerate(groups.items()):
        first, half, end = rows[0][1][j], mid[j], rows[-1][1][j]
        if first > 0 and end > 0:
            out[f"{group} ({pid}, {short_name(pid)})"] = {
                "after_warmup_mb": first, "middle_mb": half, "end_mb": end,
                "growth_pct": round(100 * (end / first - 1), 1),
                "second_half_growth_pct": round(100 * (end / half - 1), 1) if half > 0 else None,
                "series_mb": [r[1][j] for r in rows]}
    return out


def group_of(pid: int) -> str:
    cmd = procs.cmdline(pid)
    return next((name for name, key in GROUPS if key in cmd), "rest of Ray")


class CpuMeter:
    """CPU seconds by group (load generator, proxy, ingress, replicas, rest of Ray) between marks."""

    def __init__(self, cluster: LocalCluster, serve_pid: int):
        self.cluster, self.serve_pid = cluster, serve_pid

    def sample(self) -> dict[int, tuple[str, float]]:
        pids = {pid for pid, _ in self.cluster.processes()} | {self.serve_pid}
        out = {pid: (group_of(pid) if pid != self.serve_pid else "serve command", cpu_s(pid)) for pid in pids}
        out[os.getpid()] = ("load generator", cpu_s(os.getpid()))
        return out

    @staticmethod
    def between(a: dict, b: dict, seconds: float) -> dict[str, float]:
        """Cores used by each group between samples ``a`` and ``b`` (processes in both)."""
        used: dict[str, float] = {}
        for pid, (group, end) in b.items():
            if pid in a:
                used[group] = used.get(group, 0.0) + (end - a[pid][1]) / seconds
        return {g: round(v, 3) for g, v in sorted(used.items())}


def serve_cmd(cluster: LocalCluster, port: int, *extra: str) -> list[str]:
    return [str(Path(sys.executable).with_name("ranet-edge")), "serve", "--ray", "--address", cluster.address,
            "--port", str(port), "--no-access-log", *extra]


def start_serve(cluster: LocalCluster, port: int, log: Path, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(serve_cmd(cluster, port, *extra), stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env={**cluster.env, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    deadline = time.monotonic() + 240
    while "Press Ctrl-C to stop." not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"error: ranet-edge serve did not come up: {log.read_text()[-2000:]}")
        time.sleep(0.3)
    return proc


def stop_serve(proc: subprocess.Popen) -> int:
    os.killpg(proc.pid, signal.SIGINT)
    return proc.wait(timeout=60)


def phase(load: Load, meter: CpuMeter, seconds: float) -> dict:
    time.sleep(SETTLE_S)
    start, a = time.monotonic(), meter.sample()
    time.sleep(seconds)
    end, b = time.monotonic(), meter.sample()
    return {"req_per_s": round(load.tally.rate(start, end), 1), "seconds": round(end - start, 1),
            "cores_used": CpuMeter.between(a, b, end - start)}


def full_after(tally, start: float, full: float) -> float | None:
    """Seconds from ``start`` to the end of the first 2 s window answered at >= ``full`` req/s."""
    t = start
    while t + 2 <= time.monotonic():
        if tally.rate(t, t + 2) >= full:
            return t + 2 - start
        t += 0.5
    return None


def node_returns(cluster: LocalCluster, url: str, requests: list, rate: float) -> tuple[object, dict, object]:
    """Start the node again under a steady load of ``rate`` req/s until its replica answers:
    (the node, the seconds it took, the load's tally)."""
    steady = Load(url, requests, clients=4, rate=rate).start()
    restarted, wall = time.monotonic(), time.time()
    back = cluster.add_node(num_cpus=1, name="worker-again")
    up = time.monotonic() - restarted
    deadline, mark, seen = time.monotonic() + 120, "@" + back.node_id()[:12], 0
    while not any(r.endswith(mark) for _, r in steady.tally.answers[seen:]):
        seen = max(0, len(steady.tally.answers) - 8)
        if time.monotonic() > deadline:
            sys.exit("error: no replica was placed on the node that came back within 120 s")
        time.sleep(0.1)
    first = min(t for t, r in steady.tally.answers if r.endswith(mark)) - restarted
    started = replica_started(cluster, back.node_id())
    return back, {"node_up_s": round(up, 1),
                  "replica_started_s (Serve's controller log)": round(started - wall, 1) if started else None,
                  "first_answer_from_the_node_s": round(first, 1), "restarted": restarted}, steady.stop()


def replica_started(cluster: LocalCluster, node_id: str) -> float | None:
    """When Serve's controller logged a replica started on ``node_id`` (epoch seconds)."""
    import datetime
    import glob
    import re

    for path in glob.glob(f"{cluster.temp_dir}/session_latest/logs/serve/controller_*.log"):
        for line in open(path, errors="replace"):
            m = re.match(r"INFO (\S+ \S+) .*started successfully on node '" + node_id, line)
            if m:
                return datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def autoscale(cluster: LocalCluster, log_dir: Path, requests: list, port: int) -> dict:
    """``--replicas auto`` under 8 clients, then idle: the replica count every 2 s. ``port``:
    Serve's proxy, already running on the cluster, keeps the port it was started with."""
    proc = start_serve(cluster, port, log_dir / "serve-auto.log", "--replicas", "auto", "--max-replicas", "2",
                       "--target-ongoing-requests", "2")

    def count() -> int:
        # a replica's process title gains the method it runs (".handle"): match the start only
        return sum(1 for pid, _ in cluster.processes() if (t := procs.cmdline(pid).split(" ")[0])
                   .startswith("ray::ServeReplica:ranet-edge:ranet-edge") and "-ingress" not in t)

    trace, t0 = [], time.monotonic()
    # 16 images per request: the replicas, not Serve's proxy and the ingress, are what the load waits on
    load = Load(f"http://127.0.0.1:{port}", sample_requests(32, per_request=16), clients=8).start()
    while time.monotonic() - t0 < 40:
        trace.append((round(time.monotonic() - t0), count(), "load"))
        time.sleep(2)
    tally = load.stop()
    while time.monotonic() - t0 < 100 and count() > 1:
        trace.append((round(time.monotonic() - t0), count(), "idle"))
        time.sleep(2)
    trace.append((round(time.monotonic() - t0), count(), "idle"))
    return {"trace": trace, "counts": tally.counts(), "errors": tally.errors, "serve_exit": stop_serve(proc)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--before-s", type=float, default=20)
    ap.add_argument("--lost-s", type=float, default=20)
    ap.add_argument("--after-s", type=float, default=40)
    ap.add_argument("--warmup-s", type=float, default=5, help="of load before the RSS baseline")
    ap.add_argument("--rss-every-s", type=float, default=30, help="RSS of every process sampled this often")
    ap.add_argument("--autoscale", action="store_true")
    ap.add_argument("--autoscale-only", action="store_true", help="only the --autoscale part, on a cluster of its own")
    ap.add_argument("--out", default="benchmarks/results/ray_cluster.json")
    args = ap.parse_args()
    requests = sample_requests(64)
    cluster = LocalCluster()
    log_dir = Path(cluster.temp_dir)
    result: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} vCPUs, shared with other work (noisy)"}
    try:
        t = time.monotonic()
        head = cluster.start(num_cpus=1)
        worker = cluster.add_node(num_cpus=1)
        ids = {"head": head.node_id()[:12], "worker": worker.node_id()[:12]}
        result["cluster_start_s"] = round(time.monotonic() - t, 1)
        port = free_port()
        if args.autoscale_only:
            result["autoscale"] = autoscale(cluster, log_dir, requests, port)
            return
        serve = start_serve(cluster, port, log_dir / "serve.log", "--replicas", "2")
        meter = CpuMeter(cluster, serve.pid)
        load = Load(f"http://127.0.0.1:{port}", requests, clients=args.clients).start()
        time.sleep(args.warmup_s)
        groups = {pid: group for pid, (group, _) in meter.sample().items()}
        series = RssSeries(list(groups), args.rss_every_s)
        series.start()
        before = phase(load, meter, args.before_s)
        cluster.kill(worker)
        lost = phase(load, meter, args.lost_s)
        tallies = [load.stop()]
        url = f"http://127.0.0.1:{port}"
        # the node comes back under a steady load at half the one-replica rate: its `ray start`
        # needs CPU that closed-loop clients on this one machine would take (a real node has its own)
        back, times, steady = node_returns(cluster, url, requests, 0.5 * lost["req_per_s"])
        tallies.append(steady)
        closed = Load(url, requests, clients=args.clients).start()
        closed_at = time.monotonic()
        after = phase(closed, meter, args.after_s)
        tallies.append(closed.stop())
        full = full_after(closed.tally, closed_at, 0.9 * before["req_per_s"])
        times["full_throughput_s"] = round(closed_at - times.pop("restarted") + full, 1) if full else None
        counts = {k: sum(t.counts()[k] for t in tallies) for k in tallies[0].counts()}
        growth = rss_report(groups, series.stop())
        result.update({
            "nodes": {**ids, "worker_again": back.node_id()[:12]},
            "node_loss": counts, "errors": [e for t in tallies for e in t.errors],
            "phases": {"before: 2 replicas on 2 nodes": before, "lost: 1 replica (the head's)": lost,
                       "after: the node back": after},
            "scaling_2_vs_1": round(before["req_per_s"] / max(lost["req_per_s"], 1e-9), 2),
            "recovery": times,
            "rss_warmup_s": args.warmup_s, "rss": growth,
            "max_rss_growth_pct_of_the_server": max(v["growth_pct"] for k, v in growth.items()
                                                    if not k.startswith("load generator")),
            "max_rss_second_half_growth_pct_of_the_server": max(
                (v["second_half_growth_pct"] or 0) for k, v in growth.items() if not k.startswith("load generator")),
            "serve_exit_on_ctrl_c": stop_serve(serve),
            "cluster_alive_after_ctrl_c": head.proc.poll() is None and back.proc.poll() is None,
        })
        if args.autoscale:
            result["autoscale"] = autoscale(cluster, log_dir, requests, port)
        result["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        result["left_after_close"] = cluster.close()
        if not result["left_after_close"]:
            shutil.rmtree(cluster.temp_dir, ignore_errors=True)  # Ray's logs of the run
        print({k: v for k, v in result.items() if k not in ("rss",)})
        write(args.out, result)


if __name__ == "__main__":
    main()
