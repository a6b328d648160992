"""The attacks by name, their parameters, and which devices of a fleet are attackers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from qflare.errors import ConfigError

Kind = Literal["model", "data"]

#: Mixed into the attack's draws so they are independent of the other draws made from the job seed.
_SELECT_SALT, _DATA_SALT, _NOISE_SALT = 0xA77AC, 0xDA7A, 0x9015E


@dataclass(frozen=True, slots=True)
class AttackInfo:
    """One attack: what it changes, whether its attackers share their honest updates, its defaults."""

    name: str
    kind: Kind
    colluding: bool
    defaults: Mapping[str, float]
    help: str


ATTACKS: dict[str, AttackInfo] = {
    a.name: a
    for a in (
        AttackInfo("sign_flip", "model", False, {}, "send global - (trained - global)"),
        AttackInfo(
            "scaling", "model", False, {"factor": 10.0}, "model replacement: global + factor * update"
        ),
        AttackInfo("gaussian", "model", False, {"sigma": 1.0}, "send global + N(0, sigma^2) noise"),
        AttackInfo(
            "alie",
            "model",
            True,
            {"z": 0.0},
            "A Little Is Enough: mean - z * std of the colluders' honest updates "
            "(z = 0: the paper's z_max from n and f)",
        ),
        AttackInfo(
            "ipm", "model", True, {"epsilon": 0.1}, "inner-product manipulation: -epsilon * colluders' mean"
        ),
        AttackInfo("free_rider", "model", False, {}, "send the global model back untrained"),
        AttackInfo(
            "num_examples_liar",
            "model",
            False,
            {"claim": float(2**27)},
            "honest weights, claims `claim` examples",
        ),
        AttackInfo(
            "sybil",
            "model",
            True,
            {"scale": 1.0},
            "every attacker sends one shared update: -scale * colluders' mean",
        ),
        AttackInfo("label_flip", "data", False, {}, "train on labels y -> 9 - y"),
        AttackInfo(
            "backdoor",
            "data",
            False,
            {"target": 0.0, "size": 4.0, "fraction": 0.5, "boost": 1.0},
            "a size x size white square in the bottom-right corner relabelled to `target` on `fraction` "
            "of the attacker's examples; the update is scaled by `boost`",
        ),
    )
}


@dataclass(frozen=True, slots=True)
class Attack:
    """A chosen attack with its parameters (the defaults, overridden by the caller's)."""

    name: str
    params: Mapping[str, float] = field(default_factory=dict)

    @property
    def info(self) -> AttackInfo:
        return ATTACKS[self.name]

    @property
    def kind(self) -> Kind:
        return self.info.kind

    @property
    def colluding(self) -> bool:
        return self.info.colluding

    def __getitem__(self, key: str) -> float:
        return float(self.params[key])

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "params": dict(self.params)}


def parse_attack(name: str, params: Mapping[str, float | str] | None = None) -> Attack:
    """The attack ``name`` with ``params`` over its defaults; unknown names and keys are refused."""
    info = ATTACKS.get(name)
    if info is None:
        raise ConfigError(f"unknown attack {name!r}; one of {', '.join(sorted(ATTACKS))}", field="attack")
    merged = dict(info.defaults)
    for key, value in (params or {}).items():
        if key not in info.defaults:
            known = ", ".join(sorted(info.defaults)) or "none"
            raise ConfigError(
                f"attack {name} has no parameter {key!r} (has: {known})", field=f"attack_param.{key}"
            )
        try:
            merged[key] = float(value)
        except ValueError:
            raise ConfigError(f"{key}={value!r} is not a number", field=f"attack_param.{key}") from None
    _check(name, merged)
    return Attack(name, merged)


def _check(name: str, p: Mapping[str, float]) -> None:
    if name == "gaussian" and p["sigma"] < 0:
        raise ConfigError("sigma must be >= 0", field="attack_param.sigma")
    if name == "num_examples_liar" and p["claim"] < 1:
        raise ConfigError("claim must be >= 1", field="attack_param.claim")
    if name == "backdoor":
        if not 0 < p["fraction"] <= 1:
            raise ConfigError("fraction must be in (0, 1]", field="attack_param.fraction")
        if not (0 <= p["target"] <= 9 and p["target"] == int(p["target"])):
            raise ConfigError("target must be a class 0..9", field="attack_param.target")
        if not (1 <= p["size"] <= 28 and p["size"] == int(p["size"])):
            raise ConfigError("size must be a whole number of pixels 1..28", field="attack_param.size")


def parse_params(items: Iterable[str]) -> dict[str, str]:
    """``["k=v", ...]`` (the CLI's repeated ``--attack-param``) as a map."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{item!r} is not key=value", field="attack_param")
        out[key.strip()] = value.strip()
    return out


def select_attackers(devices: int, fraction: float, seed: int) -> list[int]:
    """The indices (sorted) of ``round(fraction * devices)`` attacker devices, drawn from ``seed``.

    The same fleet size, fraction and seed give the same attackers in ``qflare sim`` and in
    the services' fleet, so the two paths attack with the same devices.
    """
    if not 0 <= fraction <= 1:
        raise ConfigError(f"attackers must be a fraction in [0, 1], got {fraction}", field="attackers")
    count = round(fraction * devices)
    rng = np.random.default_rng([seed, _SELECT_SALT])
    return sorted(int(i) for i in rng.choice(devices, size=count, replace=False))


def data_rng(fleet_seed: int, index: int) -> np.random.Generator:
    """The draw of device ``index``'s poisoned examples (``qflare sim`` and the services' fleet alike)."""
    return np.random.default_rng([fleet_seed, index, _DATA_SALT])


def noise_rng(fleet_seed: int, index: int, round_no: int) -> np.random.Generator:
    """The Gaussian attack's noise of device ``index`` in ``round_no``."""
    return np.random.default_rng([fleet_seed, index, round_no, _NOISE_SALT])
