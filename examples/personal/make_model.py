"""Write the initial model to import: ``python -m examples.personal.make_model -o personal.safetensors``.

Written with ``safetensors.torch`` from the model's ``state_dict``. The head is in
the file too: the job's layout is the whole model, and the personal tensors'
global values are simply never changed by the devices.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

from examples.personal.model import BodyHead


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-o", "--output", type=Path, default=Path("personal.safetensors"))
    parser.add_argument("--seed", type=int, default=0, help="Seed of the initial weights.")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    save_file(BodyHead().state_dict(), str(args.output))
    print(args.output)
    return Path(args.output)


if __name__ == "__main__":
    main()
