"""`qflare demo`'s job: the round size as min_clients (bounded robust rules start), the rule options."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from qflare.errors import ConfigError
from qflare_cli.demo import Run, demo_job
from qflare_cli.main import app as main_app
from qflare_cli.rule_options import rules

runner = CliRunner()


def _settings(**extra: object) -> dict[str, object]:
    return {"model": "builtin:2nn", "rounds": 1, "fraction": 1.0, **extra}


def test_bounded_rules_start_on_a_fleet_that_holds_their_bound() -> None:
    # 10 devices, C = 1: rounds of 10, quorum 0.8 -> 8 >= Krum's 2f + 3 = 7 and Bulyan's 4f + 3 = 7.
    krum = demo_job(_settings(strategy={"name": "krum", "num_byzantine": 2}), 10)
    assert krum.min_clients == 10
    demo_job(_settings(strategy={"name": "bulyan", "num_byzantine": 1}), 10)
    # 100 devices, C = 0.1: rounds of 10.
    assert demo_job(_settings(fraction=0.1, strategy={"name": "median"}), 100).min_clients == 10


def test_a_fleet_too_small_for_the_bound_is_still_refused() -> None:
    with pytest.raises(ConfigError) as info:
        demo_job(_settings(strategy={"name": "bulyan", "num_byzantine": 2}), 10)
    assert info.value.field == "min_clients"


def test_the_rule_options_reach_the_job() -> None:
    job = demo_job(_settings(evaluation="central", **rules("equal", 2.0, 0.02, 2, 4)), 10)
    assert (job.weighting, job.weight_cap, job.gate_max_drop) == ("equal", 2.0, 0.02)
    assert (job.quarantine_k, job.quarantine_m) == (2, 4)
    assert "gate_max_drop" not in rules("declared", 3.0, None, 0, 5)


def test_demo_refuses_bad_rule_options_before_starting_anything() -> None:
    result = runner.invoke(
        main_app, ["demo", "--quarantine-k", "6", "--quarantine-m", "5"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 2 and "quarantine_m" in result.output
    result = runner.invoke(
        main_app, ["demo", "--gate-max-drop", "0.02", "--evaluation", "federated"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 2 and "gate_max_drop" in result.output


def test_demo_help_explains_the_rule_options() -> None:
    text = runner.invoke(main_app, ["demo", "--help"], env={"COLUMNS": "200"}).output
    for option in ("--weighting", "--weight-cap", "--quarantine-k", "--quarantine-m", "--gate-max-drop"):
        assert option in text
    assert "declared" in text and "0.02 = 2 points" in text


def test_a_user_app_fleet_needs_equal_weighting_because_it_declares_no_size() -> None:
    declared = demo_job(_settings(strategy={"name": "fedavg"}), 3)
    with pytest.raises(ConfigError) as info:
        Run(devices=3, processes=1, seed=0, job=declared, as_json=False, app="tests.apps.shift:app")
    assert info.value.field == "weighting" and "--weighting equal" in str(info.value)
    equal = demo_job(_settings(strategy={"name": "fedavg"}, weighting="equal"), 3)
    run = Run(devices=3, processes=1, seed=0, job=equal, as_json=False, app="tests.apps.shift:app")
    assert run.job.weighting == "equal"
    # Without an app the fleet declares its shard sizes, so the default stands.
    assert Run(devices=3, processes=1, seed=0, job=declared, as_json=False).job.weighting == "declared"
