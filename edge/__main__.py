"""`qflare-edge`: run one device, the way a real edge host does.

It needs only the ``qflare[edge]`` install (no server-side packages): the device
keeps its key and its durable spool under ``--state-dir``, enrols with a
single-use token, heartbeats, and trains whenever a round task names it: with
``--app package.module:attribute``, the user's DeviceApp (its data its own; the
current directory is importable), or with ``--dataset`` the built-in app on its
partition of a built-in dataset. A device is a fleet of
one, so training reuses the simulator's round follower.

The command line uses argparse on purpose: a device image should not need a
CLI framework.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
from pathlib import Path

from edge.link import Link
from edge.runtime import DeviceConfig, DeviceRuntime, load_or_create_key
from edge.shards import ALPHA, VAL_FRACTION, builtin_shards, train_size
from edge.simulator.worker import TrainSpec, WorkerSpec, train_forever
from edge.spool import Spool
from qflare.errors import QflareError
from qflare.kafka import KafkaSettings, make_producer
from qflare.telemetry import configure_logging

EPILOG = """
environment:
  QFLARE_KAFKA_BOOTSTRAP      broker list, host:port[,host:port] (default 127.0.0.1:19092)
  QFLARE_KAFKA_TOPIC_PREFIX   the deployment's topic prefix (ask your operator)
  QFLARE_KAFKA_DEPLOYMENT_ID  the deployment id every signature is bound to (ask your operator)
  QFLARE_DEVICE_TOKEN         the enrolment token, instead of --token

examples:
  qflare-edge run --device-id lab-7 --token T0K3N --state-dir /var/lib/qflare-edge \\
      --trusted-keys /etc/qflare/trusted --app mypackage.device:app --partition 7 --num-partitions 10
  qflare-edge run --device-id lab-7 --token T0K3N --state-dir /var/lib/qflare-edge \\
      --trusted-keys /etc/qflare/trusted --dataset mnist --partition 7 --num-partitions 10
"""


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"labels are key=value, got {text!r}")
    return key, value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qflare-edge",
        description="Run one QFLARE edge device: enrol, heartbeat, and train when a round selects it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run one device until stopped (Ctrl-C) or --duration-s",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--device-id", required=True, help="this device's id (letters, digits, . _ -)")
    run.add_argument("--token", default=os.environ.get("QFLARE_DEVICE_TOKEN"), help="enrolment token")
    run.add_argument(
        "--state-dir", type=Path, default=Path(".qflare-edge"), help="key file (0600) and durable spool"
    )
    run.add_argument("--label", type=_label, action="append", default=[], help="key=value, repeatable")
    run.add_argument(
        "--num-examples",
        type=int,
        default=None,
        metavar="N",
        help="the dataset size this device declares at enrolment (label qflare.num_examples): its "
        "updates may claim no more, and the server weights them by it. With --dataset it defaults "
        "to the size of this device's training split; the operator's token may cap it",
    )
    run.add_argument("--heartbeat-s", type=float, default=5.0, help="heartbeat interval in seconds")
    run.add_argument("--duration-s", type=float, default=0.0, help="stop after this long (0: run forever)")
    train = run.add_argument_group("training (optional)")
    what = train.add_mutually_exclusive_group()
    what.add_argument(
        "--app",
        metavar="MODULE:ATTR",
        help="train with this DeviceApp (package.module:attribute; the current directory is importable)",
    )
    what.add_argument("--dataset", choices=("mnist", "fashion-mnist"), help="train the built-in app on this")
    train.add_argument(
        "--partition",
        "--partition-index",
        dest="partition",
        type=int,
        default=0,
        help="this device's partition, given to the app as task.context.partition",
    )
    train.add_argument(
        "--num-partitions", type=int, default=1, help="how many partitions the data is cut in (context too)"
    )
    train.add_argument(
        "--partitioner",
        choices=("iid", "pathological", "dirichlet"),
        default="iid",
        help="how the built-in app cuts --dataset",
    )
    train.add_argument("--seed", type=int, default=0, help="partitioning seed, the same on every device")
    train.add_argument(
        "--trusted-keys", type=Path, default=Path(".qflare/keys"), help="the service keys this device pins"
    )
    return p


def config(args: argparse.Namespace, scope: str) -> DeviceConfig:
    """The device's settings; the declared size defaults to its built-in training split's."""
    num_examples = args.num_examples
    if num_examples is None and args.dataset is not None:
        _, shards = builtin_shards(args.dataset, args.partitioner, args.num_partitions, args.seed, ALPHA)
        num_examples = train_size(shards[args.partition], VAL_FRACTION)
    return DeviceConfig(
        args.device_id,
        args.token,
        dict(args.label),
        args.heartbeat_s,
        scope=scope,
        num_examples=num_examples,
    )


async def run_device(args: argparse.Namespace) -> int:
    kafka = KafkaSettings()
    state: Path = args.state_dir
    state.mkdir(parents=True, exist_ok=True)
    key = load_or_create_key(state / "device.key")
    spool = Spool(state / "device.spool")
    link = Link(spool, lambda: make_producer(kafka, request_timeout_ms=10_000, linger_ms=20))
    await link.start()
    device = DeviceRuntime(config(args, kafka.deployment_id), key, link, kafka.topics)
    tasks = [asyncio.create_task(device.run())]
    if args.dataset is not None or args.app is not None:
        spec = WorkerSpec(
            index=0,
            devices=[(args.device_id, args.token or "")],
            state_dir=str(state),
            bootstrap=kafka.bootstrap,
            topic_prefix=kafka.topic_prefix,
            deployment_id=kafka.deployment_id,
            heartbeat_interval_s=args.heartbeat_s,
            seed=args.seed,
            keys_dir=str(args.trusted_keys),
            train=TrainSpec(
                args.dataset or "",
                args.partitioner,
                args.num_partitions,
                [args.partition],
                args.seed,
                app=args.app,
            ),
        )
        tasks.append(asyncio.create_task(train_forever(spec, {args.device_id: device}, kafka)))
    print(f"device {args.device_id} ({key.key_id.hex()}) running; prefix {kafka.topic_prefix!r}", flush=True)
    try:
        if args.duration_s > 0:
            deadline = time.monotonic() + args.duration_s
            while time.monotonic() < deadline and not any(t.done() for t in tasks):
                await asyncio.sleep(0.2)
        else:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        try:
            await link.stop()
        finally:
            # Also on Ctrl-C (the run is cancelled): the operator sees what the device did.
            left = len(spool)
            spool.close()
            print(
                f"device {args.device_id} stopped; {link.sent} records sent, {left} still spooled, "
                f"{device.failures} failed replies",
                flush=True,
            )
    return 0


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    if not 0 <= args.partition < args.num_partitions:
        p.error(f"--partition {args.partition} is not in [0, --num-partitions {args.num_partitions})")
    if args.num_examples is not None and args.num_examples < 1:
        p.error(f"--num-examples {args.num_examples} is not a positive number of examples")
    try:
        config(args, "").enrolment_labels()
    except QflareError as exc:  # a reserved or contradicting label, a dataset that will not load
        p.error(str(exc))
    configure_logging("edge", level="warning")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(run_device(args)))


if __name__ == "__main__":
    main()
