"""The --attack, --attackers and --attack-param options of `qflare demo` and `qflare simulate`."""

from __future__ import annotations

from collections.abc import Sequence

from qflare.attacks import ATTACKS, Attack, parse_attack, parse_params
from qflare.errors import ConfigError

ATTACK_HELP = (
    "Make some devices attackers (enrolled devices that sign what they send): "
    + ", ".join(sorted(ATTACKS))
    + ". Built-in app only."
)
ATTACKERS_HELP = "Share of the devices that attack (drawn from --seed, as `qflare sim` draws them)."
ATTACK_PARAM_HELP = "An attack parameter, key=value (repeatable), e.g. factor=10 for scaling."


def attack_option(name: str | None, params: Sequence[str], app: str | None) -> Attack | None:
    """The --attack option checked: a known attack, known parameters, and the built-in app."""
    if name is None:
        if params:
            raise ConfigError("--attack-param without --attack", field="attack_param")
        return None
    if app is not None:
        raise ConfigError("attacks run only on the built-in app, not --app", field="attack")
    return parse_attack(name, parse_params(params))
