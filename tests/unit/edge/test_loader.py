"""Loading a user's DeviceApp by name: the good path, and each bad one naming the module or attribute."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from edge.app import DeviceApp, EvaluateTask, Failure, TrainResult, TrainTask
from edge.loader import AppLoadError, app_or_failure, load_app, parse_ref
from qflare.fl import FedAvg, JobSpec
from qflare.reasons import Reason


def _task() -> TrainTask:
    config = FedAvg(JobSpec(lr=0.1)).train_config(1)
    return TrainTask(1, 0, [np.zeros(3, np.float32)], config, ("w",))


def test_a_test_module_app_loads_by_name() -> None:
    from tests.apps import shift

    assert load_app("tests.apps.shift:app") is shift.app


def test_the_current_directory_is_importable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cwd_device_app.py").write_text("from edge.app import DeviceApp\nmine = DeviceApp()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        assert isinstance(load_app("cwd_device_app:mine"), DeviceApp)
    finally:
        sys.modules.pop("cwd_device_app", None)


@pytest.mark.parametrize("ref", ["tests.apps.shift", "tests.apps.shift:", ":app", "tests apps:app", "a:b:c"])
def test_a_malformed_reference_is_refused(ref: str) -> None:
    with pytest.raises(AppLoadError, match=r"package\.module:attribute") as caught:
        parse_ref(ref)
    assert caught.value.reason == Reason.APP_LOAD and caught.value.field == "app"


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        ("tests.apps.no_such_module:app", ["no module named 'tests.apps.no_such_module'"]),
        ("no_such_package.device:app", ["no module named 'no_such_package'"]),
        ("tests.apps.not_an_app:missing", ["'tests.apps.not_an_app' has no attribute 'missing'"]),
        ("tests.apps.not_an_app:app", ["tests.apps.not_an_app:app is a dict, not a DeviceApp"]),
        (
            "tests.apps.broken:app",
            ["'tests.apps.broken' failed to import", "RuntimeError", "/nonexistent is missing"],
        ),
    ],
)
def test_each_bad_app_names_the_module_or_attribute(ref: str, words: list[str]) -> None:
    with pytest.raises(AppLoadError) as caught:
        load_app(ref)
    for word in words:
        assert word in str(caught.value), str(caught.value)


def test_a_module_that_fails_on_a_missing_dependency_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "needs_a_lib.py").write_text("import no_such_library_xyz\n")
    (tmp_path / "bad_syntax_app.py").write_text("app = (\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AppLoadError, match=r"'needs_a_lib' failed to import: ModuleNotFoundError.*no_such"):
        load_app("needs_a_lib:app")
    with pytest.raises(AppLoadError, match=r"SyntaxError: .*bad_syntax_app.py, line 1"):
        load_app("bad_syntax_app:app")


async def test_an_app_that_cannot_load_answers_every_task_with_its_error() -> None:
    app, error = app_or_failure("tests.apps.broken:app")
    assert error is not None
    config = _task().config
    for outcome in (
        await app.run_train(_task()),
        await app.run_evaluate(EvaluateTask(1, 0, [np.zeros(3, np.float32)], config, ("w",))),
    ):
        assert isinstance(outcome, Failure) and outcome.reason == Reason.APP_LOAD
        assert "tests.apps.broken" in outcome.message and "/nonexistent is missing" in outcome.message
    good, none = app_or_failure("tests.apps.shift:app")
    assert none is None and good.handles("train")


async def test_the_shift_app_returns_the_global_model_plus_its_constant(tmp_path: Path) -> None:
    from edge.app import DeviceContext
    from tests.apps.shift import SHIFT, app

    task = TrainTask(
        2, 1, [np.ones((2, 2), np.float32)], _task().config, ("w",), DeviceContext("d", 1, 4, tmp_path)
    )
    result = await app.run_train(task)
    assert isinstance(result, TrainResult) and result.num_examples == 20
    assert isinstance(result.weights, list) and np.allclose(result.weights[0], 1 + SHIFT)
    assert (tmp_path / "round-2.json").exists()
