"""Find a user's :class:`~edge.app.DeviceApp` by name: ``package.module:attribute``.

The module is imported the way ``python -m`` would find it: the current
directory comes first on ``sys.path``, so an app next to where the device is
started needs no install. An app that cannot be loaded does not stop the
device: :func:`app_or_failure` gives an app whose every handler reports the
import error, so the device still enrols, heartbeats and answers each task it
is given with a failed reply that says what is wrong.
"""

from __future__ import annotations

import importlib
import os
import sys

from edge.app import DeviceApp, EvaluateResult, EvaluateTask, Failure, TrainResult, TrainTask
from qflare.errors import QflareError, Reason


class AppLoadError(QflareError):
    """``--app`` names no DeviceApp; the message names the module and the attribute."""

    reason = Reason.APP_LOAD


def parse_ref(ref: str) -> tuple[str, str]:
    """``("package.module", "attribute")`` from ``package.module:attribute``."""
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr or not all(p.isidentifier() for p in (*module.split("."), attr)):
        raise AppLoadError(f"{ref!r} is not of the form package.module:attribute", field="app")
    return module, attr


def load_app(ref: str) -> DeviceApp:
    """Import ``package.module`` and return its ``attribute``, which must be a DeviceApp."""
    module_name, attr = parse_ref(ref)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module code: whatever it raises is the app's error
        missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
        if missing is not None and (module_name == missing or module_name.startswith(f"{missing}.")):
            problem = f"no module named {missing!r} (looked in the current directory {cwd} and sys.path)"
        else:
            problem = f"module {module_name!r} failed to import: {_last_line(exc)}"
        raise AppLoadError(problem, field="app") from exc
    try:
        app = getattr(module, attr)
    except AttributeError:
        raise AppLoadError(f"module {module_name!r} has no attribute {attr!r}", field="app") from None
    if not isinstance(app, DeviceApp):
        raise AppLoadError(
            f"{module_name}:{attr} is a {type(app).__name__}, not a DeviceApp (create one with DeviceApp())",
            field="app",
        )
    return app


def failing_app(error: QflareError) -> DeviceApp:
    """An app whose every handler reports ``error`` as a failed reply."""
    app = DeviceApp()
    failure = Failure(error.reason, str(error))

    @app.train
    def train(task: TrainTask) -> TrainResult | Failure:
        return failure

    @app.evaluate
    def evaluate(task: EvaluateTask) -> EvaluateResult | Failure:
        return failure

    return app


def app_or_failure(ref: str) -> tuple[DeviceApp, AppLoadError | None]:
    """The app ``ref`` names, or (when it cannot be loaded) a failing app and the reason why."""
    try:
        return load_app(ref), None
    except AppLoadError as exc:
        return failing_app(exc), exc


def _last_line(exc: BaseException) -> str:
    """``Type: message`` of the error, with the file and line for a syntax error."""
    if isinstance(exc, SyntaxError):
        return f"{type(exc).__name__}: {exc.msg} ({exc.filename}, line {exc.lineno})"
    return f"{type(exc).__name__}: {exc}"
