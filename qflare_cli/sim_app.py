"""``qflare sim --app``: a user's DeviceApp as the simulator's devices, one after another.

Device ``i`` gets the context a device of ``qflare demo --app`` gets (partition ``i``
of the fleet size, its own state folder), the round's global weights (a copy) and
its instructions, and runs the app's train handler. A failed handler is the
device's failed reply: the round goes on without it, as in the services.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edge.app import DeviceApp, DeviceContext, Failure, TrainTask
from qflare.fl import WEIGHTS, NDArrays, TrainConfig
from qflare.sim import DeviceResult


@dataclass
class AppTrainer:
    app: DeviceApp
    ids: list[str]
    names: tuple[str, ...]
    state_dir: Path
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)

    def train(
        self,
        round_no: int,
        devices: Sequence[int],
        weights: NDArrays,
        config: TrainConfig,
        server_groups: Mapping[str, NDArrays],
    ) -> list[DeviceResult]:
        out = []
        for i in devices:
            own = self.state_dir / self.ids[i]
            own.mkdir(parents=True, exist_ok=True)
            context = DeviceContext(self.ids[i], i, len(self.ids), own)
            task = TrainTask(round_no, round_no - 1, [w.copy() for w in weights], config, self.names, context)
            result = self.loop.run_until_complete(self.app.run_train(task))
            if isinstance(result, Failure):
                out.append(DeviceResult({}, 0, failure=f"{result.reason}: {result.message}"))
                continue
            trained = result.weights if isinstance(result.weights, list) else list(result.weights.values())
            metrics = {k: float(v) for k, v in result.metrics.items()}
            out.append(DeviceResult({WEIGHTS: trained}, int(result.num_examples), metrics))
        return out

    def close(self) -> None:
        self.loop.close()
