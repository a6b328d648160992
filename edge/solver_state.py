"""A device's durable local solver state, one file per job: SCAFFOLD's c_i, Ditto's v, FedPer's own tensors.

The file is ``<state_dir>/solver/<job_id>.npz`` (numpy's zip of ``.npy`` arrays,
read with ``allow_pickle=False``): ``round`` (int64), then ``control/<name>``,
``ditto/<name>`` and ``personal/<name>`` float32 arrays, with the model's names in
``names/<group>`` so the order survives. It is replaced atomically: written to a
temporary file in the same directory, flushed to disk (fsync), renamed over the old
one, and the directory fsynced, so after a crash at any point the file holds
either the previous round's state or the new one, never a mixture.

When it is written (``edge.training``): right before the update that goes with it
is handed to the device's durable outbox (a SQLite spool the link drains), after
every check of the update passed, with no ``await`` in between. So:

- a device never sends a SCAFFOLD ``dc`` it has not committed: the server can never
  hold a ``dc`` the device forgot;
- a device that restarts never trains a round its state already covers
  (``SolverState.round``; the round's task is replayed from the start of the rounds
  topic), so it never commits twice for one update nor sends a second ``dc``;
- a crash in the instant between the commit and the spool append leaves the device
  one ``dc`` ahead of the server: the same as an update the aggregator drops as late,
  which SCAFFOLD tolerates (c is an average over devices, refreshed every round).

The other order (send, then commit) could lose the commit and let the server add a
``dc`` that the device then computes again from its stale ``c_i``.
"""

from __future__ import annotations

import os
import secrets
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qflare.errors import QflareError
from qflare.ml.solvers import SolverState

_GROUPS = ("control", "ditto", "personal")


class SolverStateError(QflareError):
    """The state file exists but cannot be read; ``field`` names the file or the entry."""


def state_path(state_dir: Path, job_id: str) -> Path:
    return state_dir / "solver" / f"{job_id}.npz"


def save_state(path: Path, state: SolverState, names: tuple[str, ...]) -> None:
    """Write ``state`` atomically; ``names`` are the model's tensor names (``control``/``ditto`` order)."""
    arrays: dict[str, NDArray[Any]] = {"round": np.asarray(state.round, np.int64)}
    groups: dict[str, tuple[tuple[str, ...], list[NDArray[Any]]]] = {}
    if state.control is not None:
        groups["control"] = (names, list(state.control))
    if state.ditto is not None:
        groups["ditto"] = (names, list(state.ditto))
    if state.personal:
        groups["personal"] = (tuple(state.personal), list(state.personal.values()))
    for group, (tensor_names, values) in groups.items():
        arrays[f"names/{group}"] = np.asarray(tensor_names, dtype=np.str_)
        for name, value in zip(tensor_names, values, strict=True):
            arrays[f"{group}/{name}"] = np.asarray(value, np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    # The rename itself is durable only once the directory entry is on disk.
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_state(path: Path) -> SolverState:
    """The stored state, or an empty one (round 0) when the file does not exist."""
    if not path.exists():
        return SolverState()
    try:
        with np.load(path, allow_pickle=False) as data:
            entries = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise SolverStateError(f"unreadable solver state: {exc}", field=str(path)) from exc
    if "round" not in entries:
        raise SolverStateError("no round in the solver state", field=f"{path}:round")
    found: dict[str, dict[str, NDArray[np.float32]]] = {}
    for group in _GROUPS:
        key = f"names/{group}"
        if key not in entries:
            continue
        tensors: dict[str, NDArray[np.float32]] = {}
        for name in (str(n) for n in entries[key]):
            value = entries.get(f"{group}/{name}")
            if value is None or value.dtype != np.float32:
                raise SolverStateError("missing or not float32", field=f"{path}:{group}/{name}")
            tensors[name] = value
        found[group] = tensors
    control, ditto = found.get("control"), found.get("ditto")
    return SolverState(
        round=int(entries["round"]),
        control=list(control.values()) if control is not None else None,
        ditto=list(ditto.values()) if ditto is not None else None,
        personal=found.get("personal", {}),
    )
