"""Peak memory and time of a buffered robust aggregation of N CNN updates, spilled to disk.

Run from the repository root::

    python bench/robust_memory.py --updates 100 --rule median [--budget-mib 256] [--spill DIR]

Makes N random updates shaped like ``builtin:cnn`` (6.6 MB each), keeps them in an
``UpdateBuffer`` whose memory budget is ``--budget-mib`` (the rest spill to disk,
memory-mapped when read), then closes one round with the rule. A thread samples
``/proc/self/status`` every 20 ms: ``VmRSS`` (all resident pages, including the
spilled files' pages the rule has touched, which the kernel can drop) and ``RssAnon``
(the process's own memory). One rule per run, so each peak is its own. The last
line is JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from qflare.fl import JobSpec, Strategy, Update, build_strategy
from qflare.fl.buffer import UpdateBuffer
from qflare.fl.spec import WEIGHTS
from qflare.fl.strategies.fltrust import FLTrust
from qflare.ml import layout

_KEYS = ("VmRSS", "RssAnon", "RssFile")


def _status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in _KEYS:
            out[key] = int(value.split()[0]) * 1024
    return out


class Peak:
    def __init__(self) -> None:
        self.peak = dict.fromkeys(_KEYS, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, value in _status().items():
                self.peak[key] = max(self.peak[key], value)
            time.sleep(0.02)

    def __enter__(self) -> Peak:
        self.peak = dict.fromkeys(_KEYS, 0)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument("--rule", default="median")
    parser.add_argument("--budget-mib", type=int, default=256)
    parser.add_argument("--spill", default=None)
    parser.add_argument("--num-byzantine", type=int, default=1)
    args = parser.parse_args()
    shapes = [s for _, s in layout("cnn")]
    rng = np.random.default_rng(0)
    glob = [rng.standard_normal(s).astype(np.float32) * 0.05 for s in shapes]
    params: dict[str, Any] = {"name": args.rule}
    if args.rule in ("median", "krum", "multikrum", "bulyan", "rfa", "centered_clip"):
        params["num_byzantine"] = args.num_byzantine
    job = JobSpec.parse(
        {"model": "builtin:cnn", "min_clients": args.updates, "quorum": 1.0, "strategy": params}
    )
    strategy: Strategy
    if args.rule == "fltrust":
        strategy = FLTrust(job, root_trainer=lambda w, r: [0.01 * np.asarray(a, np.float64) for a in w])
    else:
        strategy = build_strategy(job)
    before = _status()
    buffer = UpdateBuffer(args.budget_mib << 20, args.spill)
    t0 = time.perf_counter()
    for k in range(args.updates):
        weights = [g + 0.01 * rng.standard_normal(g.shape).astype(np.float32) for g in glob]
        buffer.add(Update(f"d{k:05d}", {WEIGHTS: weights}, 100))
    fill_s = time.perf_counter() - t0
    filled = _status()
    with Peak() as peak:
        t1 = time.perf_counter()
        new, _ = strategy.aggregate(strategy.initial_state(), buffer, glob)
        aggregate_s = time.perf_counter() - t1
    result = {
        "rule": args.rule,
        "updates": args.updates,
        "budget_mib": args.budget_mib,
        "in_memory": len(buffer) - buffer.spilled,
        "spilled": buffer.spilled,
        "fill_s": round(fill_s, 2),
        "aggregate_s": round(aggregate_s, 2),
        "rss_before_mib": round(before["VmRSS"] / 2**20, 1),
        "rss_after_fill_mib": round(filled["VmRSS"] / 2**20, 1),
        "peak_rss_mib": round(peak.peak["VmRSS"] / 2**20, 1),
        "peak_anon_mib": round(peak.peak["RssAnon"] / 2**20, 1),
        "peak_file_mib": round(peak.peak["RssFile"] / 2**20, 1),
        "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "finite": bool(all(np.isfinite(a).all() for a in new)),
    }
    buffer.close()
    print(
        f"{args.rule}: {args.updates} CNN updates ({result['spilled']} spilled), "
        f"aggregate {aggregate_s:.1f} s, "
        f"peak RSS {result['peak_rss_mib']} MiB (anonymous {result['peak_anon_mib']} MiB)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
