"""Write the initial model to import: ``python -m examples.tabular.make_model -o tabular.safetensors``.

A safetensors file written with ``safetensors.numpy``: named float32 arrays, no torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from safetensors.numpy import save_file

from examples.tabular.data import NUM_CLASSES, NUM_FEATURES
from examples.tabular.model import initial


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-o", "--output", type=Path, default=Path("tabular.safetensors"))
    parser.add_argument("--seed", type=int, default=0, help="Seed of the initial weights.")
    args = parser.parse_args(argv)
    save_file(initial(NUM_FEATURES, NUM_CLASSES, args.seed), str(args.output))
    print(args.output)
    return Path(args.output)


if __name__ == "__main__":
    main()
