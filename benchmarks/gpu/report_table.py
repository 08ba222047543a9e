"""The GPU check's report as a printed table (every figure comes from the JSON report)."""
from __future__ import annotations

_MARK = {True: "PASS", False: "FAIL", None: "skip"}


def _f(v, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def _bad(section) -> str | None:
    if not isinstance(section, dict):
        return "missing"
    return section.get("error") or section.get("skipped")


def render(r: dict) -> str:
    env = r["env"]
    gpu = env.get("gpu") or {}
    lines = [f"ranet-edge GPU check: {gpu.get('name') or env['platform']} | onnxruntime {env['onnxruntime']} | "
             f"provider {env['provider_requested']} | {r.get('elapsed_s', '?')} s"
             + (" | quick" if r.get("quick") else "")
             + f" | load average {env.get('load_average_at_start', ['?'])[0]} (cores {env['cpu_count']})"]
    lines.append(f"providers            {', '.join(r['providers']['available'])}")
    lines.append(f"TensorRT             {'usable' if not r['providers']['tensorrt_unavailable_reason'] else 'unavailable: ' + r['providers']['tensorrt_unavailable_reason']}")
    missing = r["bundles"]["missing"]
    lines.append(f"bundles              {', '.join(r['bundles']['found'])}"
                 + (f" (missing: {', '.join(missing)})" if missing else ""))

    def section(title: str, key: str, body) -> None:
        bad = _bad(r.get(key))
        if bad:
            lines.append(f"{title:<20} {bad}")
        else:
            for i, text in enumerate(body(r[key])):
                lines.append(f"{title if i == 0 else '':<20} {text}")

    section("logits vs CPU", "logits_vs_cpu", lambda s: [
        f"{n:<13} max rel {v['max_relative']:.1e} (tol {v['tolerance']:.0e}) {'ok' if v['ok'] else 'FAIL'}"
        for n, v in s.items()])

    def fp16(s):
        out = []
        for n, v in s.items():
            if "top1_fp32" in v["exits"][0]:
                out.append(f"{n:<13} top-1 fp32 " + " ".join(f"{100 * e['top1_fp32']:.1f}" for e in v["exits"]))
                out.append(f"{'':<13} top-1 fp16 " + " ".join(f"{100 * e['top1_fp16']:.1f}" for e in v["exits"]))
            out.append(f"{n:<13} agreement  " + " ".join(f"{100 * e['top1_agreement']:.1f}" for e in v["exits"]))
        return out
    section("fp16 per exit (%)", "fp16_accuracy", fp16)
    section("stage p50 ms", "stages", lambda s: [
        f"{n:<13} " + " | ".join(f"b{k[5:-7]} " + " ".join(_f(t) for t in ms) for k, ms in v.items())
        for n, v in s.items()])
    section("chain / monolithic", "chain_vs_monolithic", lambda s: [
        f"{n:<13} " + ("; ".join(f"b{b[5:]} x{v[b]['ratio']:.3f} ({_f(v[b]['chain_ms'])} vs {_f(v[b]['monolithic_ms'])} ms)"
                                 for b in v) if "skipped" not in v else v["skipped"])
        for n, v in s.items()])
    section("host / device caches", "device_vs_host", lambda s: [
        f"{n:<13} " + "; ".join(f"{k} x{v[k]['host_over_device']:.2f}" for k in v) for n, v in s.items()])
    section("adaptive speed-up", "adaptive", lambda s: [
        f"{n:<13} " + "; ".join(f"{b}: x{v[b]['measured_speedup']:.2f} of x{v[b]['predicted_speedup']:.2f} "
                                f"({v[b]['measured_over_predicted']:.2f})" for b in v if b.startswith("batch"))
        for n, v in s.items()])

    def routed(s):
        steady = s["steady"]
        out = [f"{k[:-len('_images_per_s')]}: " + ", ".join(f"{n} {v:,.0f}" for n, v in row.items()) + " img/s; "
               f"padding +{100 * (steady[k.replace('images_per_s', 'padding')]['flops_ratio'] - 1):.1f}% FLOPs"
               for k, row in steady.items() if k.endswith("_images_per_s")]
        for kind, v in s["fresh_workload"].items():
            out.append(f"fresh {kind}: load+warm-up {v['load_and_warmup_s']:.2f} s, {v['batches']} random batches "
                       f"{v['first_pass_s']:.2f} s, again {v['second_pass_s']:.2f} s")
        a = s["bucketed_vs_unbucketed"]
        out.append("bucketed vs unbucketed: " + ("identical" if a["identical"] else
                   f"exits equal {a['exits_equal']:.3f}, max prob diff {a['max_probability_diff']:.1e}"))
        return out
    section("routed", "routed_throughput", routed)
    section("distinct shapes", "shapes", lambda s: [
        f"bucketed {s['bucketed']['distinct_per_graph']} (bound {s['bound_per_graph']}), "
        f"unbucketed {s['unbucketed']['distinct_per_graph']}"])
    section("load + warm-up s", "load_warmup", lambda s: [
        f"{n:<13} buckets {v['buckets']['load_s']:.2f} + {v['buckets']['warmup_s']:.2f} "
        f"(sizes {v['buckets']['warm_sizes']}); none {v['no_buckets']['load_s']:.2f} + {v['no_buckets']['warmup_s']:.2f}"
        for n, v in s.items()])
    section("cuDNN search", "cudnn_search", lambda s: [
        f"{m:<11} warm-up {v['warmup_s']:.2f} s, predict batch {_f(v['batch_ms'])} ms, max batch {_f(v['bmax_ms'])} ms"
        for m, v in s["modes"].items()] + [f"chosen: {s['chosen']}"])
    def cap(s):
        out = [s["captured_means"]] if "captured_means" in s else []
        for n, v in s.items():
            if not isinstance(v, dict):
                continue
            if "skipped" in v:
                out.append(f"{n:<13} {v['skipped']}")
                continue
            rep = v["capture_report"]
            out.append(f"{n:<13} {sum(g['captured'] for g in rep['graphs'])}/{len(rep['graphs'])} sessions captured, "
                       f"load+warm-up {rep['load_and_warmup_s']:.1f} s, buffers {rep['buffers_bytes'] / 1e6:.0f} MB")
            for b in (k for k in v if k.startswith("batch")):
                row = v[b]
                if "mono_plain_ms" in row:
                    out.append(f"{'':<13} b{b[5:]}: mono {_f(row['mono_plain_ms'])} -> {_f(row['mono_captured_ms'])} ms, "
                               f"chain {_f(row['chain_plain_ms'])} -> {_f(row['chain_captured_ms'])} ms, "
                               f"chain/mono captured x{row['chain_over_mono_captured']:.2f}")
                else:
                    out.append(f"{'':<13} b{b[5:]}: mono {_f(row['mono_captured_ms'])} ms, chain "
                               f"{_f(row['chain_captured_ms'])} ms captured, x{row['chain_over_mono_captured']:.2f}")
            ad = v.get("adaptive", {})
            if any(k.startswith("batch") for k in ad):
                    out.append(f"{'':<13} adaptive " + "; ".join(
                    f"b{k[5:]} x{ad[k]['measured_speedup']:.2f} of x{ad[k]['predicted_speedup']:.2f} "
                    f"({ad[k]['measured_over_predicted']:.2f})" for k in ad if k.startswith("batch")))
            if "routed" in v:
                rt = v["routed"]
                out.append(f"{'':<13} routed random batches: captured {rt['random_batches_images_per_s']['captured']:,.0f}"
                           f" vs plain {rt['random_batches_images_per_s']['plain']:,.0f} img/s")
        return out
    section("captured", "capture", cap)
    section("ImageNet captured", "imagenet", cap)
    trt = r.get("tensorrt") or {}
    if trt.get("usable"):
        lines.append(f"{'TensorRT engines':<20} first load {trt['first_load']['total_s']:.1f} s, second "
                     f"{trt['second_load']['total_s']:.1f} s, max rel {trt['max_relative_logit_diff_vs_cpu']:.1e}")
    else:
        lines.append(f"{'TensorRT engines':<20} {trt.get('reason') or trt.get('skipped') or trt.get('error') or 'not run'}")
    checks = r.get("checks", [])
    n_ok, n_skip = sum(c["ok"] is True for c in checks), sum(c["ok"] is None for c in checks)
    lines.append(f"{'checks':<20} {n_ok} passed, {len(checks) - n_ok - n_skip} failed, {n_skip} skipped")
    lines += [f"{'':<20} {_MARK[c['ok']]} {c['name']}: {c['detail']}" for c in checks]
    return "\n".join(lines)
