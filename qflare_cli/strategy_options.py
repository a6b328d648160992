"""The strategy options of `qflare jobs start` and `qflare demo`, and the listing of `qflare jobs strategies`.

``--strategy NAME --param key=value ...`` becomes the job spec's strategy map. Each
value is read as the type its parameter declares (int, float, bool or str); a key the
strategy does not have is read as the most specific of those that fits, and the
strategy's ``Params`` then refuses it. Errors name ``strategy.<key>``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from pydantic.fields import FieldInfo

from qflare.errors import ConfigError, QflareError
from qflare.fl import STRATEGIES, FedProxParams, JobSpec, Strategy
from qflare.types import Scalar

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})

STRATEGY_HELP = f"One of {', '.join(sorted(STRATEGIES))} (see `qflare jobs strategies`)."
PARAM_HELP = (
    "A strategy parameter as key=value, e.g. --param server_lr=0.01; repeat for more. "
    "`qflare jobs strategies` lists each strategy's parameters, types and defaults."
)
MU_HELP = (
    "FedProx's proximal coefficient μ (default: "
    f"{FedProxParams.model_fields['proximal_mu'].default}); only for --strategy fedprox. "
    "The same as --param proximal_mu=MU."
)


def _bool(raw: str, where: str) -> bool:
    word = raw.strip().lower()
    if word in _TRUE | _FALSE:
        return word in _TRUE
    raise ConfigError(f"{raw!r} is not a boolean (true/false)", field=where)


def _guess(raw: str) -> Scalar:
    """The most specific scalar ``raw`` spells: bool, then int, then float, else the string."""
    if raw.strip().lower() in ("true", "false"):
        return raw.strip().lower() == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def parse_value(raw: str, field: FieldInfo | None, where: str) -> Scalar:
    """``raw`` as the type ``field`` declares (or guessed when the strategy has no such key)."""
    kind = field.annotation if field is not None else None
    try:
        if kind is bool:
            return _bool(raw, where)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError:
        name = "an integer" if kind is int else "a number"
        raise ConfigError(f"{raw!r} is not {name}", field=where) from None
    return raw if kind is str else _guess(raw)


def strategy_params(strategy: str, proximal_mu: float | None, params: Sequence[str] = ()) -> dict[str, Any]:
    """The strategy map of a job spec from the CLI's options; keys left out take the strategy's defaults."""
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"unknown strategy {strategy!r}; known: {', '.join(sorted(STRATEGIES))}", field="strategy.name"
        )
    fields = STRATEGIES[strategy].Params.model_fields
    out: dict[str, Any] = {"name": strategy}
    for item in params:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{item!r} is not key=value", field="strategy")
        where = f"strategy.{key}"
        if key in out:
            raise ConfigError("is given more than once", field=where)
        out[key] = parse_value(raw, fields.get(key) if key != "name" else None, where)
    if proximal_mu is not None:
        if "proximal_mu" in out:
            raise ConfigError("is given twice (--proximal-mu and --param)", field="strategy.proximal_mu")
        out["proximal_mu"] = proximal_mu
    return out


def check_params(strategy: str, proximal_mu: float | None, params: Sequence[str]) -> dict[str, Any]:
    """``strategy_params``, then validated by the strategy's ``Params`` (errors name ``strategy.<key>``)."""
    out = strategy_params(strategy, proximal_mu, params)
    JobSpec.parse({"strategy": out}, where="")
    return out


# --- the listing ----------------------------------------------------------------------


def _bounds(field: FieldInfo) -> str:
    marks = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "max_length": "length <="}
    parts = []
    for meta in field.metadata:
        for attr, sign in marks.items():
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{sign} {value}")
    return ", ".join(parts)


def _description(cls: type[Strategy]) -> str:
    """The class's own docstring, else the first line of its module's (which cites the paper)."""
    doc = cls.__dict__.get("__doc__") or sys.modules[cls.__module__].__doc__ or ""
    return " ".join(doc.strip().split("\n\n")[0].split()) if doc else ""


def _sends(strategy: Strategy) -> dict[str, Any]:
    """What a device must send, as the strategy's update spec says for the built-in 2nn."""
    # Imported here: the listing is the only user of a concrete layout.
    from qflare.ml.arch import layout

    names, shapes = zip(*layout("2nn"), strict=True)
    spec = strategy.update_spec(names, shapes)
    groups = {
        g: (
            "all tensors"
            if len(s.names) == len(names)
            else f"shared tensors ({len(s.names)} of {len(names)})"
        )
        + ("" if s.weighting == "examples" else ", unweighted")
        for g, s in spec.groups.items()
    }
    return {"groups": groups, "metrics": sorted(spec.metrics)}


def describe_strategies() -> list[dict[str, Any]]:
    """Every registered strategy: name, mode, one-line description, what devices send, parameters."""
    rows = []
    for name in sorted(STRATEGIES):
        cls = STRATEGIES[name]
        params = []
        for key, field in cls.Params.model_fields.items():
            if key == "name":
                continue
            kind = field.annotation
            params.append(
                {
                    "name": key,
                    "type": getattr(kind, "__name__", str(kind)),
                    "default": field.default,
                    "bounds": _bounds(field),
                    "description": field.description or "",
                }
            )
        try:
            # A fleet large enough for any robust rule's bound: what devices send does not depend on it.
            sends = _sends(
                cls(JobSpec.parse({"min_clients": 1000, "quorum": 1.0, "strategy": {"name": name}}))
            )
        except QflareError as exc:  # a strategy that cannot describe itself on the 2nn still gets listed
            sends = {"groups": {}, "metrics": [], "note": str(exc)}
        rows.append(
            {
                "name": name,
                "mode": cls.mode,
                "description": _description(cls),
                "sends": sends,
                "params": params,
            }
        )
    return rows
