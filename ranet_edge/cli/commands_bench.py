"""`ranet-edge bench`: latency per stage and exit, chain vs monolithic, adaptive speed-up."""
from __future__ import annotations

from pathlib import Path

import click

from . import cli
from .commands_runtime import provider_option


@cli.command()
@click.argument("bundle", required=False, type=click.Path(file_okay=False))
@provider_option
@click.option("--batch-size", type=int, default=1, show_default=True, help="batch of the stage/chain timings")
@click.option("--warmup", type=int, default=10, show_default=True)
@click.option("--iters", type=int, default=100, show_default=True)
@click.option("--thresholds", default=None, help="one value or a comma list per exit")
@click.option("--operating-point", default=None, help="name of a stored operating point")
@click.option("--data", "data_path", default=None, help="images for adaptive mode [default: shipped sample]")
@click.option("--images", "n_images", type=int, default=500, show_default=True, help="images timed in adaptive mode")
@click.option("--json", "json_out", default=None, help="write the results as JSON to this file")
def bench(bundle, provider, threads, batch_size, warmup, iters, thresholds, operating_point, data_path,
          n_images, json_out) -> None:
    """Latency per stage and exit, chain against monolithic graph, adaptive speed-up, throughput.
    \f
    Raises:
        click.UsageError: both ``--thresholds`` and ``--operating-point``.
        RanetEdgeError: as :func:`ranet_edge.tasks.bench` (bad counts, bundle, provider, images).
    """
    from ranet_edge.runtime.evaluation import BenchOptions
    from ranet_edge.tasks import bench as run_benchmark

    from .commands_runtime import parse_thresholds

    if thresholds and operating_point:
        raise click.UsageError("give --thresholds or --operating-point, not both")
    if bundle is None:
        from ..assets import default_bundle

        bundle = default_bundle()
    spec = parse_thresholds(thresholds) if thresholds else operating_point
    opts = BenchOptions(batch_size=batch_size, warmup=warmup, iters=iters, thresholds=spec,
                        adaptive_images=n_images)
    b = run_benchmark(bundle, opts, provider=provider, threads=threads, data_path=data_path,
                      progress=lambda s: click.echo(f"  measuring {s} ...", err=True))
    echo_bench(b, batch_size)
    if json_out:
        from ranet_edge.runtime.manifest import write_json_atomic

        write_json_atomic(Path(json_out), b.result)
        click.echo(f"wrote {json_out}")


def echo_bench(b, batch_size: int) -> None:
    """Print a :class:`ranet_edge.tasks.Benchmark` as `ranet-edge bench` does."""
    r, source = b.result, b.source
    if b.assumed_threshold is not None:
        click.echo(f"no operating point stored: adaptive mode used threshold {b.assumed_threshold:g} at every "
                   "exit (run `ranet-edge calibrate` for a real one)", err=True)
    env = r["env"]
    click.echo(f"machine   {env['cpu']}, {env['cores']} cores; onnxruntime {env['onnxruntime']}; "
               f"threads {env['threads']}; sessions on {sorted({p[0] for p in env['session_providers']})}")
    click.echo(f"per graph at batch {batch_size} (ms), alone:  p50      p90      p99   run to it (p50)")
    for k, (p, e) in enumerate(zip(r["stage_percentiles"], _graph_exit_ms(b.exits_per_graph, r["exit_ms"]))):
        click.echo(f"  graph {k:<2}                    {p['p50']:>8.3f} {p['p90']:>8.3f} {p['p99']:>8.3f}   {e:>8.3f}")
    if r["monolithic_ms"] is None:
        click.echo(f"full chain {r['chain_ms']:.3f} ms; no monolithic graph: re-export with "
                   "`ranet-edge export CKPT --monolithic` to compare")
    else:
        click.echo(f"full chain {r['chain_ms']:.3f} ms vs monolithic {r['monolithic_ms']:.3f} ms: "
                   f"overhead x{r['overhead_ratio']:.3f}")
    a = r["adaptive"]
    click.echo(f"adaptive  {a['images']} images from {source}: mean {a['mean_ms']:.3f} ms, p99 {a['p99_ms']:.3f} ms, "
               f"exits {a['exit_counts']}")
    if a.get("expected_ms"):
        click.echo(f"          expected from the ms to each exit: {a['expected_ms']:.3f} ms "
                   f"(measured / expected x{a['mean_ms'] / a['expected_ms']:.2f})")
    if a["measured_speedup"] is not None:
        click.echo(f"          speed-up over monolithic: predicted by FLOPs x{a['predicted_speedup']:.2f}, "
                   f"measured x{a['measured_speedup']:.2f}")
    if a["granularity"] != "exit":
        click.echo(f"          {a['granularity']} graphs: samples pay {a['expected_flops'] / 1e6:.2f} MFLOPs on average, "
                   f"against {a['expected_flops_per_exit_cut'] / 1e6:.2f} with one graph per exit")
    t = r["throughput"]
    mono_ips = f"{t['monolithic_ips']:.0f}" if t["monolithic_ips"] else "n/a"
    click.echo(f"throughput at batch {t['batch_size']}: chain {t['chain_ips']:.0f} img/s, monolithic {mono_ips} img/s")


def _graph_exit_ms(exits_per_graph: list[int], exit_ms: list[float]) -> list[float]:
    out, k = [], 0
    for n in exits_per_graph:
        k += n
        out.append(exit_ms[k - 1])
    return out
