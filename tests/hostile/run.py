"""A job run as ``qflare demo`` runs it (supervised services, a training fleet), optionally attacked.

``run_once`` runs the job once, clean or under attack, and returns its
``Outcome``; the suite runs it twice with the same job and seed and compares.
Everything talks to 127.0.0.1 only, each run on its own topic prefix, and every
wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from qflare import operator
from qflare.errors import QflareError, StackError
from qflare.fl import JobSpec
from qflare.protocol.training import RoundComplete
from qflare_cli.demo import KEYS_DIR, Run
from qflare_cli.supervised import SERVICES, metrics_ports
from tests.hostile.attack import Attack, AttackConfig
from tests.hostile.report import Outcome, Scraper


class HostileRun(Run):
    def __init__(
        self,
        *,
        devices: int,
        seed: int,
        job: JobSpec,
        attack: AttackConfig | None,
        timeout_s: float,
        drain_s: float,
        progress: Callable[[int, int], None] = lambda done, total: None,
    ) -> None:
        self.rounds: list[RoundComplete] = []
        super().__init__(
            devices=devices, processes=2, seed=seed, job=job, as_json=False, on_round=self.rounds.append
        )
        self.attack_cfg, self.timeout_s, self.drain_s = attack, timeout_s, drain_s
        self.progress = progress
        self.hostile: Attack | None = None
        self.scraper: Scraper | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def _start_job(self, ident: Any) -> None:
        self.scraper = Scraper(dict(zip(SERVICES, metrics_ports(self.services), strict=True)))
        if self.attack_cfg is not None:
            victims = [f"dev-{self.run_id}-{i:03d}" for i in range(self.devices)]
            self.hostile = Attack(self.kafka, KEYS_DIR, self.job_id, victims, self.attack_cfg, self.progress)
            await self.hostile.enrol(operator.operator_identity(KEYS_DIR))
        await super()._start_job(ident)
        self._tasks.append(asyncio.create_task(self._scrape_forever()))
        if self.hostile is not None:
            self._tasks.append(asyncio.create_task(self.hostile.run()))

    async def _scrape_forever(self) -> None:
        assert self.scraper is not None
        while True:
            await asyncio.to_thread(self.scraper.poll)
            await asyncio.sleep(2.0)

    async def _follow(self, began: float) -> list[RoundComplete]:
        try:
            done = await asyncio.wait_for(super()._follow(began), self.timeout_s)
            if self.hostile is not None:
                # The whole attack is sent, and the services have read it, before they stop.
                await asyncio.wait_for(self._tasks[-1], self.timeout_s)
                await self._drain()
            return done
        except TimeoutError:
            raise StackError("hostile", f"the job did not finish within {self.timeout_s:.0f} s") from None
        finally:
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, QflareError):
                    await task
            if self.scraper is not None:
                await asyncio.to_thread(self.scraper.poll)

    async def _drain(self) -> None:
        """Wait until every service counted what it must, or its counts stop moving (bounded)."""
        assert self.hostile is not None and self.scraper is not None
        probe = Outcome("drain", expected=self.hostile.expected(), targets=self.hostile.targets)
        deadline = time.monotonic() + self.drain_s
        last, still_since = -1.0, time.monotonic()
        while time.monotonic() < deadline:
            await asyncio.to_thread(self.scraper.poll)
            probe.rejections = self.scraper.rejections()
            short = probe.shortfalls()
            total = sum(probe.rejections.values())
            if total != last:
                last, still_since = total, time.monotonic()
            if not short or time.monotonic() - still_since > 20:
                return
            await asyncio.sleep(2.0)

    def _summary(self, results: list[RoundComplete], seconds: float) -> None:
        pass  # the pair's tables are printed by the caller

    def outcome(self, label: str, error: str | None, seconds: float) -> Outcome:
        completed = [r for r in self.rounds if r.status == "completed"]
        out = Outcome(label, completed_rounds=len(completed), error=error, seconds=seconds)
        if completed:
            out.final_accuracy = completed[-1].metrics.get("test_accuracy")
            # Only the evaluation: a round's other metrics are wall-clock durations and byte counts.
            out.trajectory = [
                (r.round, {k: v for k, v in sorted(r.metrics.items()) if k.startswith("test_")})
                for r in completed
            ]
        events = list(self.services.events)
        if self.fleet is not None:
            events += [e for e in self.fleet.supervisor.events]
        # A death is a restart ("died") or, past the supervisor's patience or for exit 78, a stop.
        out.restarts.update(e.service for e in events if e.kind in ("died", "gave_up"))
        out.supervisor_lines = [e.text.splitlines()[0] for e in events]
        if self.scraper is not None:
            out.rejections = self.scraper.rejections()
        if self.hostile is not None:
            out.sent, out.failed = self.hostile.sent, self.hostile.failed
            out.expected = self.hostile.expected()
            out.targets = self.hostile.targets
        return out


def run_once(
    label: str,
    *,
    devices: int,
    seed: int,
    job: JobSpec,
    attack: AttackConfig | None,
    timeout_s: float,
    drain_s: float,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> Outcome:
    run = HostileRun(
        devices=devices,
        seed=seed,
        job=job,
        attack=attack,
        timeout_s=timeout_s,
        drain_s=drain_s,
        progress=progress,
    )
    began = time.monotonic()
    error: str | None = None
    try:
        run.execute()
    except QflareError as exc:
        error = str(exc).splitlines()[0]
    return run.outcome(label, error, time.monotonic() - began)
