"""A device declares the size of what it trains on: its enrolment label ``qflare.num_examples``."""

from __future__ import annotations

import pytest

from edge.__main__ import config, parser
from edge.runtime import DeviceConfig
from edge.shards import VAL_FRACTION, builtin_shards, largest_train_size, split, train_size
from edge.simulator.worker import TrainSpec, WorkerSpec, declared_sizes
from qflare.errors import ConfigError


def test_the_declared_size_is_an_enrolment_label() -> None:
    cfg = DeviceConfig("d", labels={"site": "a"}, num_examples=540)
    assert cfg.enrolment_labels() == {"site": "a", "qflare.num_examples": "540"}
    assert DeviceConfig("d", labels={"site": "a"}).enrolment_labels() == {"site": "a"}
    same = DeviceConfig("d", labels={"qflare.num_examples": "540"}, num_examples=540)
    assert same.enrolment_labels() == {"qflare.num_examples": "540"}


def test_a_device_may_not_set_the_operators_label_or_contradict_itself() -> None:
    with pytest.raises(ConfigError) as caught:
        DeviceConfig("d", labels={"qflare.max_examples": "9"}).enrolment_labels()
    assert caught.value.field == "labels.qflare.max_examples"
    with pytest.raises(ConfigError) as caught:
        DeviceConfig("d", labels={"qflare.num_examples": "9"}, num_examples=10).enrolment_labels()
    assert caught.value.field == "labels.qflare.num_examples"


def test_simulated_devices_declare_their_training_split() -> None:
    train = TrainSpec("mnist", "dirichlet", 10, [3, 7], seed=1)
    spec = WorkerSpec(0, [("a", "t"), ("b", "t")], "/tmp", "", "", "", 1.0, 0, train=train)
    _, shards = builtin_shards("mnist", "dirichlet", 10, 1, 0.5)
    sizes = declared_sizes(spec)
    assert sizes == {"a": len(split(shards[3], VAL_FRACTION)[0]), "b": len(split(shards[7], VAL_FRACTION)[0])}
    assert sizes["a"] != sizes["b"]  # Dirichlet shards differ in size
    # What `qflare simulate` approves per token: no honest device declares more.
    largest = largest_train_size("mnist", "dirichlet", 10, 1)
    assert largest == max(len(split(s, VAL_FRACTION)[0]) for s in shards) >= max(sizes.values())
    assert declared_sizes(WorkerSpec(0, [("a", "t")], "/tmp", "", "", "", 1.0, 0)) == {}


def test_qflare_edge_declares_its_built_in_split_unless_told() -> None:
    base = ["run", "--device-id", "d", "--dataset", "mnist", "--partition", "2", "--num-partitions", "4"]
    _, shards = builtin_shards("mnist", "iid", 4, 0, 0.5)
    assert config(parser().parse_args(base), "").num_examples == train_size(shards[2], VAL_FRACTION) == 13500
    assert config(parser().parse_args([*base, "--num-examples", "77"]), "").num_examples == 77
    assert config(parser().parse_args(["run", "--device-id", "d"]), "").num_examples is None


def test_qflare_edge_refuses_the_operators_label_before_starting(capsys: pytest.CaptureFixture[str]) -> None:
    from edge.__main__ import main

    with pytest.raises(SystemExit) as caught:
        main(["run", "--device-id", "d", "--label", "qflare.max_examples=5"])
    assert caught.value.code == 2 and "qflare.max_examples" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        main(["run", "--device-id", "d", "--num-examples", "0"])
    assert caught.value.code == 2
