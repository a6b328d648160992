"""Hostile-record run: the same small job, clean and then under attack, and a markdown report.

Run from the repository root, with the local stack up (``qflare stack up``)::

    python bench/hostile.py [--records N] [--rate R] [--devices D] [--rounds K] [--seed S]

Starts the four services under the supervisor (as ``qflare demo`` does) and a
simulated training fleet, runs a FedAvg job, stops everything; then does the
same with a fresh topic prefix while an attacker sends at least ``--records``
hostile records over every topic any service or device consumes (random bytes,
truncations, bit flips, NUL bytes, absurd tensor headers, tombstones, unsigned
and replayed records, commands from the wrong sender, chunk-stream floods).

Prints (markdown): records sent by topic and kind, rejections counted by each
service against what it must refuse, rejections by reason, service restarts,
and the final accuracy and model digest of both runs. Exit status 0 only when
nothing restarted, both jobs completed with the same model, and every record a
service must refuse was counted. Connects to 127.0.0.1 only and stops by itself
(``--timeout-s`` per run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from qflare_cli.stack import quiet_clients  # noqa: E402
from tests.hostile.attack import AttackConfig  # noqa: E402
from tests.hostile.kinds import KINDS  # noqa: E402
from tests.hostile.report import markdown, untyped  # noqa: E402
from tests.hostile.run import run_once  # noqa: E402
from tests.jobs import small_fedavg_job  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=10_500, help="hostile records to send (default 10500)")
    parser.add_argument("--rate", type=float, default=250.0, help="hostile records per second (default 250)")
    parser.add_argument("--devices", type=int, default=4, help="training devices (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the job (default 3)")
    parser.add_argument("--seed", type=int, default=3, help="seed of the job and of the attack (default 3)")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="most seconds per run (default 900)")
    parser.add_argument(
        "--drain-s",
        type=float,
        default=180.0,
        help="most seconds to wait for the services to read the attack",
    )
    parser.add_argument("--skip-clean", action="store_true", help="only the attacked run (no comparison)")
    parser.add_argument(
        "--kinds", default="", help=f"comma-separated kinds to send (default: {','.join(KINDS)})"
    )
    args = parser.parse_args(argv)
    quiet_clients()
    console = Console(stderr=True)
    job = small_fedavg_job(rounds=args.rounds, seed=args.seed)
    common = {"devices": args.devices, "seed": args.seed, "job": job, "timeout_s": args.timeout_s}
    from tests.hostile.report import Outcome

    clean = Outcome("clean")
    if not args.skip_clean:
        console.print("clean run …")
        clean = run_once("clean", attack=None, drain_s=0.0, **common)
    console.print("run under attack …")
    with Progress(
        TextColumn("hostile records"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("attack", total=args.records)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        kinds = frozenset(k for k in args.kinds.split(",") if k) or None
        if kinds is not None and not kinds <= set(KINDS):
            parser.error(f"unknown kinds: {sorted(kinds - set(KINDS))}")
        attack = AttackConfig(total=args.records, rate=args.rate, seed=args.seed, kinds=kinds)
        attacked = run_once(
            "attacked",
            attack=attack,
            drain_s=args.drain_s,
            progress=progress,
            **common,
        )
    print(markdown(clean, attacked))
    for line in attacked.supervisor_lines:
        print(f"- supervisor: {line}")
    problems = attacked.shortfalls() + [f"untyped reason {r}" for r in untyped(attacked.rejections)]
    if sum(attacked.restarts.values()):
        problems.append(f"{sum(attacked.restarts.values())} service restarts or stops")
    if attacked.error or attacked.completed_rounds < args.rounds:
        problems.append(f"the attacked job did not complete: {attacked.error}")
    if not args.skip_clean and clean.trajectory != attacked.trajectory:
        problems.append("the attacked job's round metrics differ from the clean run's")
    for p in problems:
        print(f"- FAILED: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
