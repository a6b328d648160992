"""Attack × defence: final test accuracy (and backdoor success) through the in-process engine.

Run from the repository root::

    python bench/byzantine.py --out /work/results/byz/matrix.jsonl      # the full matrix
    python bench/byzantine.py --splits iid --defences fedavg,median --attacks none,sign_flip --rounds 2
    python bench/byzantine.py --services sign_flip:median alie:trimmed_mean --rounds 3

The issue's setting: MNIST 2NN, 100 devices, 20% attackers (``qflare.attacks.select_attackers``),
IID and Dirichlet α = 0.5. Every cell is a ``qflare.sim.Simulation`` with the same attack code
as ``qflare sim --attack`` (``qflare.sim.attacks``) and the same server rules as the aggregator
(declared-size weighting, anomaly flags; ``qflare.sim.rules``). Rows are the defences (plain
FedAvg and each robust rule), columns the attacks (and no attack).

The defaults fit the matrix (2 × 10 × 11 = 220 cells) in about 45 minutes of one CPU core:
C = 0.1 (n = 10 updates a round), E = 1, B = 50, lr = 0.1, 30 rounds. A backdoor builds up over
rounds (at 10 rounds median and Bulyan held it under 7%; at 30 it succeeds on most of their
triggered images) and the robust rules' cost without an attack shrinks as the model converges,
so 30 rounds judge both more fairly than 10 (``--rounds 10`` gives the shorter run). Each bounded rule takes
the largest f up to 4 that its bound allows at n = 10: median, RFA and centred clipping
f = 4 (n ≥ 2f + 1), Krum and Multi-Krum f = 3 (n ≥ 2f + 3), Bulyan f = 1 (n ≥ 4f + 3);
trimmed mean trims β = 0.2 (2 of 10) from each end. 20 attackers in 100 devices put 2 in
an average round (up to 5 or 6 in some), which Bulyan's f = 1 does not cover.

Each finished cell is appended to ``--out`` (JSON lines) and skipped when the script is run
again with the same settings, so a stopped run resumes. Progress goes to stderr; stdout gets
the matrix per split, the goals of the issue checked from the numbers, and as its last line
the whole matrix as one JSON object.

``--services CELL...`` (``attack:defence``) runs those cells through the real services with
``qflare demo`` (the dev stack must be up), IID, and prints their final accuracy next to the
simulator's for the same settings.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from qflare.errors import QflareError  # noqa: E402 - after the path fix above

SPLITS = ("iid", "dirichlet")
DEFENCES = (
    "fedavg",
    "median",
    "trimmed_mean",
    "krum",
    "multikrum",
    "bulyan",
    "rfa",
    "centered_clip",
    "norm_bound",
    "fltrust",
)
ATTACK_COLUMNS = (
    "none",
    "sign_flip",
    "scaling",
    "gaussian",
    "alie",
    "ipm",
    "label_flip",
    "backdoor",
    "free_rider",
    "num_examples_liar",
    "sybil",
)
#: Attacks whose goal is the model's accuracy (the backdoor's is its success rate instead).
TARGETED = ("backdoor",)
#: Rules that take f (``num_byzantine``), and the most f their bound allows with n updates a round.
MAX_F = {
    "median": lambda n: (n - 1) // 2,  # n ≥ 2f + 1
    "rfa": lambda n: (n - 1) // 2,
    "centered_clip": lambda n: (n - 1) // 2,
    "krum": lambda n: (n - 3) // 2,  # n ≥ 2f + 3
    "multikrum": lambda n: (n - 3) // 2,
    "bulyan": lambda n: (n - 3) // 4,  # n ≥ 4f + 3
}


@dataclass(frozen=True)
class Settings:
    """The job's settings shared by every cell (part of each cell's record, so a resume matches them)."""

    devices: int = 100
    attackers: float = 0.2
    fraction: float = 0.1
    rounds: int = 30
    epochs: int = 1
    batch_size: int = 50
    lr: float = 0.1
    seed: int = 0
    #: The f each bounded rule tolerates: this, or less where its bound at n allows less.
    f: int = 4
    #: Trimmed mean's β: 0.2 of n = 10 trims 2 values from each end of every coordinate.
    beta: float = 0.2
    alpha: float = 0.5


def round_size(s: Settings) -> int:
    from qflare.fl.selection import fleet_round_size

    return fleet_round_size(s.devices, s.fraction)


def strategy(defence: str, s: Settings) -> dict[str, Any]:
    """The job's ``strategy`` map for a defence."""
    params: dict[str, Any] = {"name": defence}
    if defence in MAX_F:
        params["num_byzantine"] = max(0, min(s.f, MAX_F[defence](round_size(s))))
    if defence == "trimmed_mean":
        params["beta"] = s.beta
    if defence == "fltrust":
        # The server takes as many SGD steps on its 100 root images as an average device on its
        # 60,000 / devices examples (FLTrust rescales every device delta to the server's norm).
        params["root_epochs"] = max(1, round(60_000 / s.devices / 100))
    return params


def job_map(split: str, defence: str, s: Settings) -> dict[str, Any]:
    from qflare_cli.jobs import model_ref

    return {
        "model": model_ref("2nn"),
        "dataset": "mnist",
        "partition": split,
        "strategy": strategy(defence, s),
        "rounds": s.rounds,
        "fraction": s.fraction,
        "min_clients": round_size(s),
        # No simulated device drops out, so every round closes with all n: Bulyan's f = 4 holds.
        "quorum": 1.0,
        "epochs": s.epochs,
        "batch_size": s.batch_size,
        "lr": s.lr,
        "seed": s.seed,
        "evaluation": "central",
    }


class Cells:
    """Runs cells in one process: each split's data is loaded and each poisoned fleet built once."""

    def __init__(self, s: Settings) -> None:
        self.s = s
        self._fleets: dict[tuple[str, str], Any] = {}
        self._trainers: dict[tuple[str, str], Any] = {}

    def _fleet(self, split: str, attack: str) -> Any:
        from qflare.attacks import parse_attack, select_attackers
        from qflare.sim import make_fleet
        from qflare.sim.attacks import poisoned_fleet

        key = (split, attack)
        if key not in self._fleets:
            # Keep only the clean fleets and the current poisoned one (each copy is ~50 MB).
            for old in [k for k in self._fleets if k[1] != "none"]:
                del self._fleets[old]
            clean = self._fleets.get((split, "none"))
            if clean is None:
                clean = make_fleet("mnist", split, self.s.devices, self.s.seed, alpha=self.s.alpha)
                self._fleets[(split, "none")] = clean
            if attack != "none":
                bad = select_attackers(self.s.devices, self.s.attackers, self.s.seed)
                self._fleets[key] = poisoned_fleet(clean, parse_attack(attack), bad)
        return self._fleets[key]

    def run(self, split: str, defence: str, attack: str) -> dict[str, Any]:
        from qflare.attacks import parse_attack, select_attackers
        from qflare.fl import JobSpec
        from qflare.sim import BatchedTrainer, CentralEvaluation, Simulation
        from qflare.sim.attacks import AttackingTrainer, backdoor_success
        from qflare.sim.rules import declared_sizes, evaluation_split

        began = time.perf_counter()
        s = self.s
        job = JobSpec.parse(job_map(split, defence, s))
        fleet = self._fleet(split, attack)
        # One batched trainer (the fleet's tensors) per poisoned fleet; no strategy here keeps
        # device state in it.
        if (split, attack) not in self._trainers:
            self._trainers.clear()  # its float copy of the training set is ~200 MB
            self._trainers[(split, attack)] = BatchedTrainer(fleet, device="cpu")
        trainer = self._trainers[(split, attack)]
        bad = select_attackers(s.devices, s.attackers, s.seed) if attack != "none" else []
        chosen: Any = trainer
        # Without an attack, the backdoor's trigger is still scored: how often the clean model
        # calls a triggered image the target anyway, the floor no defence can go under.
        score = backdoor_success(parse_attack("backdoor"), fleet)
        if attack != "none":
            parsed = parse_attack(attack)
            chosen = AttackingTrainer(trainer, parsed, frozenset(bad), job.seed)
            score = backdoor_success(parsed, fleet)
        images, labels = evaluation_split(job, fleet.test_images, fleet.test_labels)
        sim = Simulation(
            job,
            fleet.ids,
            chosen,
            CentralEvaluation(images, labels),
            declared=declared_sizes(fleet.ids, [len(i) for i in fleet.train_index]),
            attackers=frozenset(fleet.ids[i] for i in bad),
        )
        records = sim.run()
        last = records[-1]
        rate = None if score is None else score("2nn", sim.weights)
        flags = [r.flags for r in records if r.flags is not None]
        return {
            "split": split,
            "defence": defence,
            "attack": attack,
            "accuracy": last.accuracy,
            "curve": [r.accuracy for r in records],
            "backdoor_success": rate if attack != "none" else None,
            "trigger_rate": rate if attack == "none" else None,
            "rejected": sum(r.rejected for r in records),
            "flagged": sum(f.flagged for f in flags) if flags else None,
            "flagged_attackers": sum(f.attackers for f in flags) if flags else None,
            "unclosed_rounds": sum(r.unclosed is not None for r in records),
            "seconds": round(time.perf_counter() - began, 2),
            "settings": asdict(s),
        }


def load_done(path: Path | None, s: Settings) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Cells already in ``path`` with the same settings."""
    done: dict[tuple[str, str, str], dict[str, Any]] = {}
    if path is None or not path.exists():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("settings") == asdict(s):
            done[(row["split"], row["defence"], row["attack"])] = row
    return done


def run_matrix(
    s: Settings,
    splits: Sequence[str],
    defences: Sequence[str],
    attacks: Sequence[str],
    out: Path | None,
) -> list[dict[str, Any]]:
    """Every cell (those already in ``out`` are read back, not run again), in grid order."""
    done = load_done(out, s)
    cells = Cells(s)
    rows = []
    total = len(splits) * len(defences) * len(attacks)
    n = 0
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
    for split in splits:
        for attack in attacks:  # attack-major: one poisoned fleet is built per column
            for defence in defences:
                n += 1
                key = (split, defence, attack)
                if key in done:
                    rows.append(done[key])
                    continue
                try:
                    row = cells.run(split, defence, attack)
                except QflareError as exc:  # one broken cell is reported, the matrix goes on
                    row = {
                        "split": split,
                        "defence": defence,
                        "attack": attack,
                        "accuracy": None,
                        "backdoor_success": None,
                        "error": str(exc),
                        "settings": asdict(s),
                    }
                rows.append(row)
                asr = row["backdoor_success"]
                acc = "failed: " + row["error"] if row["accuracy"] is None else f"{row['accuracy']:.4f}"
                print(
                    f"[{n}/{total}] {split} {defence} × {attack}: accuracy {acc}"
                    + ("" if asr is None else f", backdoor {asr:.4f}")
                    + f" ({row.get('seconds')} s)",
                    file=sys.stderr,
                    flush=True,
                )
                if out is not None:
                    with out.open("a", encoding="utf-8") as file:
                        file.write(json.dumps(row) + "\n")
    return rows


def matrix(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """split -> defence -> attack -> {accuracy, backdoor_success?}."""
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for r in rows:
        cell: dict[str, Any] = {"accuracy": r["accuracy"]}
        if r["backdoor_success"] is not None:
            cell["backdoor_success"] = r["backdoor_success"]
        if r.get("trigger_rate") is not None:
            cell["trigger_rate"] = r["trigger_rate"]
        out.setdefault(r["split"], {}).setdefault(r["defence"], {})[r["attack"]] = cell
    return out


def goals(m: dict[str, dict[str, dict[str, dict[str, Any]]]]) -> dict[str, Any]:
    """The issue's three goals, checked per split from the matrix (clean = FedAvg without attack)."""
    out: dict[str, Any] = {}
    for split, table in m.items():
        clean = table.get("fedavg", {}).get("none", {}).get("accuracy")
        if clean is None:
            continue
        attacks = sorted({a for row in table.values() for a in row} - {"none"})
        untargeted: dict[str, Any] = {}
        for attack in attacks:
            if attack in TARGETED:
                continue
            scored = {
                d: row[attack]["accuracy"]
                for d, row in table.items()
                if attack in row and row[attack]["accuracy"] is not None
            }
            if not scored:
                continue
            best = max(scored, key=lambda d: scored[d])
            untargeted[attack] = {
                "best": best,
                "accuracy": scored[best],
                "gap": round(clean - scored[best], 4),
                "met": scored[best] >= clean - 0.02,
            }
        backdoor: dict[str, Any] | None = None
        asr = {
            d: row["backdoor"]["backdoor_success"]
            for d, row in table.items()
            if row.get("backdoor", {}).get("backdoor_success") is not None
        }
        if asr:
            low = min(asr, key=lambda d: asr[d])
            backdoor = {
                "lowest": low,
                "success": asr[low],
                "under_5pct": sorted(d for d, v in asr.items() if v < 0.05),
                "met": asr[low] < 0.05,
                # The same defence's model without an attack, scored on the same triggered images.
                "clean_trigger_rate": table[low].get("none", {}).get("trigger_rate"),
            }
        losses = {
            d: round(clean - row["none"]["accuracy"], 4)
            for d, row in table.items()
            if row.get("none", {}).get("accuracy") is not None
        }
        out[split] = {
            "clean": clean,
            "untargeted": untargeted,
            "untargeted_met": all(v["met"] for v in untargeted.values()),
            "backdoor": backdoor,
            "no_attack_loss": losses,
            "no_attack_met": all(v <= 0.01 for v in losses.values()),
        }
    return out


def render(m: dict[str, dict[str, dict[str, dict[str, Any]]]]) -> str:
    """The matrix per split as text: accuracy in %, the backdoor as accuracy/success."""
    lines = []
    for split, table in m.items():
        attacks = [a for a in ATTACK_COLUMNS if any(a in row for row in table.values())]
        head = f"{split:<14}" + "".join(f"{a[:11]:>12}" for a in attacks)
        lines += ["", head, "-" * len(head)]
        for defence, row in table.items():
            cells = []
            for a in attacks:
                c = row.get(a)
                if c is None:
                    cells.append(f"{'':>12}")
                elif c["accuracy"] is None:
                    cells.append(f"{'failed':>12}")
                elif "backdoor_success" in c:
                    cells.append(f"{100 * c['accuracy']:>6.1f}/{100 * c['backdoor_success']:<5.1f}")
                else:
                    cells.append(f"{100 * c['accuracy']:>12.1f}")
            lines.append(f"{defence:<14}" + "".join(cells))
    return "\n".join(lines)


def services_cell(attack: str, defence: str, s: Settings, rounds: int) -> float | None:
    """The final central accuracy of one cell through ``qflare demo`` (IID), or None if it failed."""
    cmd = [
        sys.executable,
        "-m",
        "qflare_cli.main",
        "demo",
        "--devices",
        str(s.devices),
        "--fraction",
        str(s.fraction),
        "--batch",
        str(s.batch_size),
        "--lr",
        str(s.lr),
        "--rounds",
        str(rounds),
        "--seed",
        str(s.seed),
        "--strategy",
        defence,
        "--evaluation",
        "central",
        # Every round closes with all n updates, as in the simulator (the bounds at n = 10 need it).
        "--quorum",
        "1.0",
        "--json",
    ]
    for key, value in strategy(defence, s).items():
        if key != "name":
            cmd += ["--param", f"{key}={value}"]
    if attack != "none":
        cmd += ["--attack", attack, "--attackers", str(s.attackers)]
    print("$ " + " ".join(cmd[2:]), file=sys.stderr, flush=True)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    accuracy = None
    for line in done.stdout.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("accuracy") is not None:
            value = float(row["accuracy"])
            accuracy = value if math.isfinite(value) else accuracy
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
    return accuracy


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--splits", default=",".join(SPLITS))
    p.add_argument("--defences", default=",".join(DEFENCES))
    p.add_argument("--attacks", default=",".join(ATTACK_COLUMNS))
    p.add_argument("--out", type=Path, default=None, help="JSON lines, a line per cell (resumable).")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads.")
    p.add_argument("--services", nargs="*", metavar="ATTACK:DEFENCE", help="Cells through qflare demo.")
    p.add_argument(
        "--seeds",
        default=None,
        help="Comma-separated seeds (e.g. 0,1,2,3,4): the matrix per seed, then every cell's mean over "
        "them with the goals checked on the means (overrides --seed).",
    )
    defaults = Settings()
    for name, value in asdict(defaults).items():
        p.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = p.parse_args(argv)
    s = Settings(**{k: getattr(args, k) for k in asdict(defaults)})
    import torch

    torch.set_num_threads(args.threads)
    if args.services:
        return compare_services(args.services, s)
    seeds = [int(x) for x in _names(args.seeds)] if args.seeds else [s.seed]
    per_seed = [matrix(run_matrix(replace(s, seed=seed), *grid(args), args.out)) for seed in seeds]
    m = per_seed[0] if len(seeds) == 1 else mean_matrix(per_seed)
    summary = goals(m)
    if len(seeds) > 1:
        print(f"the mean of seeds {', '.join(map(str, seeds))} in every cell")
    print(render(m))
    print()
    for split, g in summary.items():
        print(f"{split}: clean {100 * g['clean']:.1f}%")
        missed = [a for a, v in g["untargeted"].items() if not v["met"]]
        print(f"  untargeted attacks, best defence within 2 points: {g['untargeted_met']} (missed: {missed})")
        if g["backdoor"] is not None:
            b = g["backdoor"]
            floor = b.get("clean_trigger_rate")
            unattacked = "" if floor is None else f"; {100 * floor:.1f}% without the attack"
            lowest = f"lowest {b['lowest']} {100 * b['success']:.1f}%{unattacked}"
            print(f"  backdoor success < 5%: {b['met']} ({lowest})")
        print(f"  no defence loses > 1 point without attack: {g['no_attack_met']}")
    result: dict[str, Any] = {"settings": asdict(s), "matrix": m, "goals": summary}
    if len(seeds) > 1:
        result["seeds"] = seeds
        result["per_seed"] = [
            {"seed": seed, "goals": goals(one)} for seed, one in zip(seeds, per_seed, strict=True)
        ]
        for split in summary:
            met = {
                name: sum(bool((g["goals"].get(split) or {}).get(key)) for g in result["per_seed"])
                for name, key in (("untargeted", "untargeted_met"), ("no_attack", "no_attack_met"))
            }
            met["backdoor"] = sum(
                bool(((g["goals"].get(split) or {}).get("backdoor") or {}).get("met"))
                for g in result["per_seed"]
            )
            print(f"{split}: goals met per seed (of {len(seeds)}): {met}")
    print(json.dumps(result))
    return result


def grid(args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    return _names(args.splits), _names(args.defences), _names(args.attacks)


def mean_matrix(
    per_seed: Sequence[dict[str, dict[str, dict[str, dict[str, Any]]]]],
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """Every cell's mean over the seeds' matrices (a cell that failed in any seed stays None)."""
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    first = per_seed[0]
    for split, table in first.items():
        for defence, row in table.items():
            for attack, cell in row.items():
                cells = [m[split][defence][attack] for m in per_seed]
                mean: dict[str, Any] = {}
                for key in cell:
                    values = [c.get(key) for c in cells]
                    ok = [float(v) for v in values if v is not None]
                    mean[key] = sum(ok) / len(ok) if len(ok) == len(values) else None
                out.setdefault(split, {}).setdefault(defence, {})[attack] = mean
    return out


def compare_services(cells: Sequence[str], s: Settings) -> dict[str, Any]:
    """Each ``attack:defence`` cell through the services and through the simulator (IID)."""
    out = []
    sim = Cells(s)
    for cell in cells:
        attack, _, defence = cell.partition(":")
        services = services_cell(attack, defence, s, s.rounds)
        simulated = sim.run("iid", defence, attack)["accuracy"]
        out.append({"attack": attack, "defence": defence, "services": services, "sim": simulated})
        print(f"{attack} × {defence}: services {services}, sim {simulated}", flush=True)
    result = {"settings": asdict(s), "services": out}
    print(json.dumps(result))
    return result


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


if __name__ == "__main__":
    main()
