"""`--strategy/--param` parsing for `qflare jobs start` and `qflare demo`, and `qflare jobs strategies`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic.fields import FieldInfo
from typer.testing import CliRunner

from qflare.errors import ConfigError, QflareError, SchemaError
from qflare.fl import STRATEGIES
from qflare_cli.jobs import app as jobs_app
from qflare_cli.main import app as main_app
from qflare_cli.strategy_options import check_params, parse_value, strategy_params

runner = CliRunner()


def test_values_take_the_type_the_parameter_declares() -> None:
    assert strategy_params("fedadam", None, ["server_lr=0.03", "beta1=5e-1", "tau=1"]) == {
        "name": "fedadam",
        "server_lr": 0.03,
        "beta1": 0.5,
        "tau": 1.0,
    }
    assert strategy_params("scaffold", None, ["num_devices=100"])["num_devices"] == 100
    # A string parameter keeps what was typed, even when it looks like a number.
    assert strategy_params("fedper", None, ["personal=123"])["personal"] == "123"
    assert strategy_params("fedper", None, [r"personal=fc3\..*|x=y"])["personal"] == r"fc3\..*|x=y"
    params = check_params("fedavgm", None, ["server_momentum=0", " server_lr = 2"])
    assert params == {"name": "fedavgm", "server_momentum": 0.0, "server_lr": 2.0}


def test_proximal_mu_stays_an_alias_of_the_param() -> None:
    assert strategy_params("fedprox", 0.5) == {"name": "fedprox", "proximal_mu": 0.5}
    assert strategy_params("fedprox", None, ["proximal_mu=0.5"]) == strategy_params("fedprox", 0.5)
    assert strategy_params("fedavg", None) == {"name": "fedavg"}
    with pytest.raises(ConfigError) as info:
        strategy_params("fedprox", 0.5, ["proximal_mu=0.1"])
    assert info.value.field == "strategy.proximal_mu"
    with pytest.raises(SchemaError) as bad:
        check_params("fedavg", 0.5, [])  # FedAvg has no μ
    assert bad.value.field == "strategy.proximal_mu"


@pytest.mark.parametrize(
    ("strategy", "params", "field"),
    [
        ("scaffold", ["num_devices=many"], "strategy.num_devices"),
        ("scaffold", ["num_devices=2.5"], "strategy.num_devices"),
        ("fedadam", ["server_lr=fast"], "strategy.server_lr"),
        ("fedadam", ["beta2=1.5"], "strategy.beta2"),
        ("fedadagrad", ["beta2=0.9"], "strategy.beta2"),
        ("ditto", ["lam=0"], "strategy.lam"),
        ("fedper", ["personal=("], "strategy.personal"),
        ("fedavgm", ["server_lr"], "strategy"),
        ("fedavgm", ["=1"], "strategy"),
        ("fedavgm", ["server_lr=1", "server_lr=2"], "strategy.server_lr"),
        ("fedavgm", ["name=fedavg"], "strategy.name"),
        ("fedfoo", [], "strategy.name"),
    ],
)
def test_bad_params_name_the_key(strategy: str, params: list[str], field: str) -> None:
    with pytest.raises(QflareError) as info:
        check_params(strategy, None, params)
    assert info.value.field == field


def test_jobs_start_refuses_a_bad_param_before_sending_anything() -> None:
    result = runner.invoke(jobs_app, ["start", "--strategy", "fedyogi", "--param", "tau=-1"])
    assert result.exit_code == 2, result.output
    assert "strategy.tau" in result.output
    result = runner.invoke(jobs_app, ["start", "--strategy", "nope"])
    assert result.exit_code == 2 and "strategy.name" in result.output and "fedadam" in result.output


def test_jobs_start_refuses_a_job_too_small_for_the_robust_rule() -> None:
    result = runner.invoke(jobs_app, ["start", "--strategy", "krum"], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert "min_clients" in result.output and "2f + 3" in result.output


def test_demo_takes_the_same_options() -> None:
    result = runner.invoke(main_app, ["demo", "--strategy", "fedavgm", "-p", "server_momentum=1"])
    assert result.exit_code == 2, result.output
    assert "strategy.server_momentum" in result.output
    assert "--param" in runner.invoke(main_app, ["demo", "--help"]).output


def test_help_explains_the_options() -> None:
    text = runner.invoke(jobs_app, ["start", "--help"], env={"COLUMNS": "200"}).output
    assert "--param" in text and "key=value" in text and "qflare jobs strategies" in text
    assert "--proximal-mu" in text


def test_strategies_lists_every_strategy_with_its_parameters() -> None:
    result = runner.invoke(jobs_app, ["strategies", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert set(rows) == set(STRATEGIES)
    assert rows["fednova"]["mode"] == "buffered" and rows["fednova"]["sends"]["metrics"] == ["local_steps"]
    assert set(rows["scaffold"]["sends"]["groups"]) == {"weights", "control"}
    adam = {p["name"]: p for p in rows["fedadam"]["params"]}
    assert adam["beta2"] == {
        "name": "beta2",
        "type": "float",
        "default": 0.99,
        "bounds": ">= 0, < 1",
        "description": "Second-moment decay β2.",
    }
    assert all(row["description"] for row in rows.values())
    table = runner.invoke(jobs_app, ["strategies"], env={"COLUMNS": "250"})
    assert table.exit_code == 0 and all(name in table.output for name in STRATEGIES)
    assert "server_momentum: float = 0.9" in table.output


def test_the_docs_table_has_a_row_for_every_strategy() -> None:
    text = (Path(__file__).parents[3] / "docs" / "strategies.md").read_text()
    # Strategies that tests register for themselves (a test-only median, say) have no row.
    shipped = [name for name, cls in STRATEGIES.items() if cls.__module__.startswith("qflare.")]
    assert len(shipped) >= 19
    missing = [name for name in shipped if f"| `{name}` |" not in text]
    assert not missing, missing


def test_booleans_and_guesses() -> None:
    flag = FieldInfo(annotation=bool, default=False)
    assert [parse_value(v, flag, "strategy.f") for v in ("true", "No", "1", "off")] == [
        True,
        False,
        True,
        False,
    ]
    with pytest.raises(ConfigError) as info:
        parse_value("maybe", flag, "strategy.f")
    assert info.value.field == "strategy.f"
    # A key the strategy lacks is read as the most specific scalar, so its refusal names the right type.
    assert [parse_value(v, None, "k") for v in ("true", "3", "0.5", "x")] == [True, 3, 0.5, "x"]
