"""The sweep's picture: test accuracy against rounds, one line per grid point (a PNG).

matplotlib is optional (it is not needed to train): without it, ``plot_accuracy``
raises ``ConfigError`` naming the package, after the JSON lines are written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from qflare.errors import ConfigError


def plot_accuracy(series: Mapping[str, Sequence[tuple[int, float]]], path: Path, title: str = "") -> Path:
    """Write ``series`` (label -> (round, accuracy) points) as a PNG at ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: files only
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"plotting needs the matplotlib package ({exc.name} is missing): pip install matplotlib",
            field="plot",
        ) from exc
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for name, points in series.items():
        if points:
            rounds, accuracy = zip(*points, strict=True)
            ax.plot(rounds, accuracy, label=name, linewidth=1.4, marker="." if len(points) < 30 else None)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
