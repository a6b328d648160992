"""Write the initial model to import: ``python -m examples.vision.make_model -o vision.pt``.

The file is the CNN's ``state_dict`` saved with ``torch.save`` (tensors only, no
code), which ``qflare models import`` reads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from examples.vision.model import SmallCNN


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-o", "--output", type=Path, default=Path("vision.pt"))
    parser.add_argument("--seed", type=int, default=0, help="Seed of the initial weights.")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.save(SmallCNN().state_dict(), args.output)
    print(args.output)
    return Path(args.output)


if __name__ == "__main__":
    main()
