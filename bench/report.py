"""Print the benchmark table (ours vs the seed-design baseline, ratios, targets) and draw the plot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROWS = [
    # (label, section, key, unit, higher is better, target)
    ("Delivered events/s via CrewAI (20 tasks x 3 subs)", "throughput_crew", "events_per_s", "ev/s", True, 50_000),
    ("  p99 latency via CrewAI", "throughput_crew", "p99_ms", "ms", False, 50),
    ("Delivered events/s, streaming core (20 x 3)", "throughput_core", "events_per_s", "ev/s", True, 50_000),
    ("  p99 latency, streaming core, unpaced flood", "throughput_core", "p99_ms", "ms", False, None),
    ("Core paced at 51k delivered/s: events/s", "latency_core_at_target", "events_per_s", "ev/s", True, 50_000),
    ("  p50 latency at 51k/s", "latency_core_at_target", "p50_ms", "ms", False, None),
    ("  p99 latency at 51k/s", "latency_core_at_target", "p99_ms", "ms", False, 50),
    ("CrewAI at 100 tok/s/agent: p99 latency", "latency_crew_100tps", "p99_ms", "ms", False, 50),
    ("Publish cost, median", "publish", "median_us", "us", False, 5),
    ("Idle SSE connection, resident memory", "idle", "kb_per_connection", "KB", False, 20),
    ("Time to first event, median", "ttfe", "median_ms", "ms", False, 50),
    ("Local-model crew, wall time", "crew_local", "wall_s", "s", False, None),
    ("Local-model crew, tokens/s", "crew_local", "tokens_per_s", "tok/s", True, None),
]


def main(path: str) -> None:
    results = json.loads(Path(path).read_text())
    print(f"\nMachine: {results['machine']}\n")
    print(f"{'metric':52} {'ours':>12} {'baseline':>12} {'ratio':>8} {'target':>10}  met")
    plot = []
    for label, section, key, unit, higher, target in ROWS:
        if section not in results:
            continue
        ours, naive = results[section]["ours"][key], results[section]["naive"][key]
        ratio = (ours / naive if higher else naive / ours) if ours and naive else float("nan")
        met = "" if target is None else ("yes" if (ours >= target if higher else ours <= target) else "NO")
        tgt = "" if target is None else (">= " if higher else "<= ") + f"{target:g}"
        print(f"{label:52} {ours:>10.1f}{unit[:2]:>2} {naive:>10.1f}{unit[:2]:>2} {ratio:>7.1f}x {tgt:>10}  {met}")
        plot.append((label.strip(), ours, naive, unit))
    for section in ("throughput_crew", "throughput_core", "latency_core_at_target", "latency_crew_100tps"):
        if section in results:
            for who in ("ours", "naive"):
                r = results[section][who]
                print(
                    f"{section} {who}: every subscriber got every sequence exactly once: "
                    f"{r['all_exact']} (lost {r['lost_total']} across rounds)"
                )
    for section in ("latency_crew_100tps", "latency_core_at_target"):
        if section in results and "worst_window_p99_ms" in results[section]["ours"]:
            r = results[section]["ours"]
            print(
                f"{section} ours, per 1-s window: worst p99 {r['worst_window_p99_ms']:.1f} ms, "
                f"max {r['max_ms']:.1f} ms, p99 in the first 3 s {r['first_3s_p99_ms']:.1f} ms "
                f"(targets: p99 <= 50, max <= 200); every round's worst window p99 "
                f"{r.get('rounds_worst_window_p99_ms')} ms, max {r.get('rounds_max_ms')} ms"
            )
    if "throughput_core_redis" in results:
        memory, shared = results["throughput_core_redis"]["memory"], results["throughput_core_redis"]["redis"]
        print(
            f"Streaming core, EVENT_BACKEND=redis: {shared['events_per_s']:.0f} ev/s (p99 {shared['p99_ms']:.1f} ms) "
            f"vs memory {memory['events_per_s']:.0f} ev/s (p99 {memory['p99_ms']:.1f} ms): "
            f"{shared['events_per_s'] / memory['events_per_s']:.2f}x (target >= 0.5); every subscriber exact: "
            f"{shared['all_exact'] and memory['all_exact']} (lost {shared['lost_total'] + memory['lost_total']})"
        )
    if "replicas" in results:
        rep = results["replicas"]
        paced, first, idle = rep["paced_100tps"], rep["ttfe"], rep["idle_per_replica"]
        print(
            f"Two replicas + Nginx + two Celery workers, 20 tasks x 3 viewers at 100 tok/s: "
            f"{paced['events_per_s']:.0f} ev/s, p50 {paced['p50_ms']:.1f} ms, p99 {paced['p99_ms']:.1f} ms "
            f"(target <= 50), worst 1-s window p99 {paced.get('worst_window_p99_ms', float('nan')):.1f} ms, "
            f"max {paced.get('max_ms', float('nan')):.1f} ms (every round's: "
            f"{paced.get('rounds_worst_window_p99_ms')} / {paced.get('rounds_max_ms')} ms), "
            f"every subscriber exact: {paced['all_exact']} "
            f"(lost {paced['lost_total']}); "
            f"first event via Celery median {first['median_ms']:.1f} ms (target <= 100); "
            f"idle viewer on a replica {idle['kb_per_connection']:.2f} KB"
        )
    if "stream_memory" in results:
        per, burst = results["stream_memory"]["per_event"], results["stream_memory"]["burst"]
        print(
            f"Held finished events: {per['measured_bytes_per_event']} B each (tracemalloc), counted as "
            f"{per['counted_bytes_per_event']} B ({per['counted_over_measured']}x)"
        )
        print(
            f"Burst of {burst['tasks']} finished tasks under STREAM_MEMORY_MB={burst['bound_mb']:g}: counted peak "
            f"{burst['counted_peak_mb']} MB, traced peak {burst['traced_peak_mb']} MB, "
            f"{burst['tasks_held']} held, {burst['tasks_let_go']} let go"
        )
    draw(plot, Path(path).with_suffix(".png"))
    from bench.sweeps import draw_sweeps  # here: it imports bench.run and, through it, the service

    draw_sweeps(results, Path(path))


def draw(rows, out: Path) -> None:
    if not rows:  # a BENCH_ONLY run of sections without a comparison (e.g. replicas)
        print("nothing to plot")
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    cols = 5
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.6 * cols, 3.2 * nrows), squeeze=False)
    for ax in axes.flat[len(rows) :]:
        ax.axis("off")
    for ax, (label, ours, naive, unit) in zip(axes.flat, rows, strict=False):
        ax.bar(["ours", "seed"], [ours, naive], color=["#2a6df4", "#999999"])
        ax.set_title(label.replace(", ", "\n").replace(" (", "\n("), fontsize=7)
        ax.set_ylabel(unit, fontsize=7)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"plot: {out}")


if __name__ == "__main__":
    main(sys.argv[1])
