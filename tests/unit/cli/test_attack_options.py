"""The --attack options of `qflare demo` and `qflare simulate`, checked before anything starts."""

from __future__ import annotations

import pytest

from qflare.errors import ConfigError
from qflare_cli.attack_options import attack_option
from qflare_cli.simulate import _train


def test_an_attack_is_parsed_with_its_parameters() -> None:
    attack = attack_option("scaling", ["factor=3"], None)
    assert attack is not None and attack["factor"] == 3.0
    assert attack_option(None, [], None) is None


@pytest.mark.parametrize(
    ("name", "params", "app", "field"),
    [
        (None, ["factor=3"], None, "attack_param"),
        ("sign_flip", [], "pkg.mod:app", "attack"),
        ("nope", [], None, "attack"),
        ("scaling", ["z=1"], None, "attack_param.z"),
    ],
)
def test_bad_attack_options_are_refused(
    name: str | None, params: list[str], app: str | None, field: str
) -> None:
    with pytest.raises(ConfigError) as bad:
        attack_option(name, params, app)
    assert bad.value.field == field


def test_simulate_trains_the_builtin_app_when_attacking() -> None:
    attack = attack_option("ipm", [], None)
    base = {"app": None, "seed": 3, "dataset": "mnist", "partition": "iid", "attackers": 0.2}
    assert _train({**base, "attack": None}) is None
    assert _train({**base, "attack": attack}) == {
        "dataset": "mnist",
        "partition": "iid",
        "seed": 3,
        "attack": attack,
        "attackers": 0.2,
    }
    assert _train({**base, "app": "m:a", "attack": None}) == {"app": "m:a", "seed": 3}
