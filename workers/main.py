"""Process entry points: ``python -m workers.main worker --host NAME [--beat]`` and ``... beat``.

``worker`` is the host's lifecycle worker (prefork pool on ``corral.host.<id>`` and ``corral.fleet``);
it starts and supervises the host's reads lane, ``... reads --host NAME`` (a threads pool on
``corral.host.<id>.reads``, ``workers.reads``), which is not meant to be started by hand.

The ``corral worker`` and ``corral beat`` CLI commands exec this module, so the library package
never imports the consumer side.
"""

from __future__ import annotations

import argparse
import os
import sys

from corral.celeryconf import FLEET_QUEUE, fleet_queue, queue_for_host
from corral.contract.errors import AgentError
from workers.reads import die_with_parent, raise_priority, reads_argv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="workers.main")
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker")
    worker.add_argument("--host", required=True)
    worker.add_argument("--concurrency", type=int, default=4)
    worker.add_argument("--beat", action="store_true", help="embed the beat scheduler (single-host stacks)")
    worker.add_argument("--no-fleet", action="store_true", help="do not consume the fleet queue")
    worker.add_argument("--loglevel", default="INFO")
    worker.add_argument("--slots", type=int, default=None, help="sandboxes admission places here at once")
    worker.add_argument(
        "--read-concurrency", type=int, default=8, help="threads of the reads lane (0: no reads lane, tests only)"
    )
    reads = sub.add_parser("reads")
    reads.add_argument("--host", required=True)
    reads.add_argument("--concurrency", type=int, default=8)
    reads.add_argument("--loglevel", default="INFO")
    reads.add_argument("--no-fleet", action="store_true", help="do not consume the fleet's reads queue")
    beat = sub.add_parser("beat")
    beat.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)

    if args.command == "reads":
        if not die_with_parent():
            return 0  # the worker that started this lane is gone already
        raise_priority()  # before any thread exists: threads inherit it
    if args.command in ("worker", "reads"):
        # The host id must be settled before settings are first loaded anywhere in this process.
        os.environ["CORRAL_HOST__ID"] = args.host
        if args.command == "worker" and args.slots is not None:
            os.environ["CORRAL_HOST__SLOTS"] = str(args.slots)
    from corral.settings import load_settings
    from corral.trust.signing import signing_ready
    from workers.app import create_app

    try:
        security = load_settings().security
    except AgentError as exc:  # a bad setting: one line, not a traceback
        print(f"workers.main: {exc.message}", file=sys.stderr)
        return 78
    if not signing_ready(load_settings()) or not security.component_certs:
        # A worker or beat signs what it publishes and a worker verifies what it runs: no keys, no start.
        print(
            "workers.main: security.key_file, security.cert_file and security.component_certs are required "
            "(create them with `corral keys`, see README: Security)",
            file=sys.stderr,
        )
        return 78  # EX_CONFIG: systemd's RestartPreventExitStatus can stop the restart loop

    if args.command == "reads":
        reads_app = create_app(lane="reads")
        reads_app.worker_main(
            [
                "worker",
                "-Q",
                ",".join([queue_for_host(args.host, "reads")] + ([] if args.no_fleet else [fleet_queue("reads")])),
                "-n",
                f"corral-reads@{args.host}",
                "-P",
                "threads",
                f"--concurrency={args.concurrency}",
                f"--loglevel={args.loglevel}",
                # no -E: the reads lane sends worker events (Flower lists it), not task events (workers.app)
            ]
        )
        return 0
    app = create_app()
    if args.command == "worker":
        if args.read_concurrency > 0:
            app.conf.corral_reads_argv = reads_argv(
                args.host, args.read_concurrency, args.loglevel, fleet=not args.no_fleet
            )
        queues = [queue_for_host(args.host)] + ([] if args.no_fleet else [FLEET_QUEUE])
        celery_argv = [
            "worker",
            "-Q",
            ",".join(queues),
            "-n",
            f"corral@{args.host}",
            f"--loglevel={args.loglevel}",
            f"--concurrency={args.concurrency}",
            "-E",
        ]
        if args.beat:
            celery_argv += ["-B"]
        app.worker_main(celery_argv)
    else:
        app.start(["beat", f"--loglevel={args.loglevel}", "-S", "redbeat.RedBeatScheduler"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
