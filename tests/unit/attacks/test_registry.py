"""Attack names and parameters, and the deterministic choice of attacker devices."""

from __future__ import annotations

import pytest

from qflare.attacks import ATTACKS, parse_attack, parse_params, select_attackers
from qflare.errors import ConfigError


def test_every_attack_of_the_issue_is_registered() -> None:
    assert set(ATTACKS) == {
        "sign_flip",
        "scaling",
        "gaussian",
        "alie",
        "ipm",
        "label_flip",
        "backdoor",
        "free_rider",
        "num_examples_liar",
        "sybil",
    }
    assert {n for n, a in ATTACKS.items() if a.colluding} == {"alie", "ipm", "sybil"}
    assert {n for n, a in ATTACKS.items() if a.kind == "data"} == {"label_flip", "backdoor"}


def test_parameters_override_the_defaults_and_bad_ones_name_the_field() -> None:
    attack = parse_attack("scaling", parse_params(["factor=4"]))
    assert attack["factor"] == 4.0
    assert parse_attack("scaling")["factor"] == 10.0
    with pytest.raises(ConfigError) as bad:
        parse_attack("scaling", {"sigma": 1})
    assert bad.value.field == "attack_param.sigma"
    with pytest.raises(ConfigError) as bad:
        parse_attack("nope")
    assert bad.value.field == "attack"
    with pytest.raises(ConfigError) as bad:
        parse_attack("backdoor", {"fraction": "x"})
    assert bad.value.field == "attack_param.fraction"
    with pytest.raises(ConfigError) as bad:
        parse_attack("backdoor", {"target": 12})
    assert bad.value.field == "attack_param.target"
    with pytest.raises(ConfigError) as bad:
        parse_params(["factor"])
    assert bad.value.field == "attack_param"


def test_attackers_are_drawn_from_the_seed() -> None:
    a = select_attackers(100, 0.2, seed=5)
    assert a == select_attackers(100, 0.2, seed=5)
    assert len(a) == 20 and len(set(a)) == 20 and a == sorted(a)
    assert all(0 <= i < 100 for i in a)
    assert a != select_attackers(100, 0.2, seed=6)
    assert select_attackers(10, 0.0, seed=1) == []
    assert select_attackers(10, 1.0, seed=1) == list(range(10))
    assert len(select_attackers(7, 0.2, seed=1)) == 1  # round(1.4)
    with pytest.raises(ConfigError) as bad:
        select_attackers(10, 1.5, seed=0)
    assert bad.value.field == "attackers"
