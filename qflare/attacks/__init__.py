"""Byzantine attack simulators shared by ``qflare sim`` and the services' simulated fleet.

An attack changes what an attacker device sends, given what it knows:

- model attacks (``qflare.attacks.model``) rewrite its trained weights or its example count,
  some of them from the honest updates of the round's other attackers (they collude);
- data attacks (``qflare.attacks.data``) poison its training examples before it trains.

``qflare.attacks.registry`` names them, checks their parameters and picks the attacker
devices from a seed. Everything here is numpy; torch is imported only to score a backdoor.
"""

from qflare.attacks.data import add_trigger, attack_success_rate, flip_labels, poison_backdoor, poison_data
from qflare.attacks.model import RoundView, alie_z, craft
from qflare.attacks.registry import (
    ATTACKS,
    Attack,
    AttackInfo,
    data_rng,
    noise_rng,
    parse_attack,
    parse_params,
    select_attackers,
)

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackInfo",
    "RoundView",
    "add_trigger",
    "alie_z",
    "attack_success_rate",
    "craft",
    "data_rng",
    "flip_labels",
    "noise_rng",
    "parse_attack",
    "parse_params",
    "poison_backdoor",
    "poison_data",
    "select_attackers",
]
