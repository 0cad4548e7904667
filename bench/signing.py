"""What message signing costs per task, against a JSON baseline measured in the same run.

    .venv/bin/python bench/signing.py [--runs 300]

Starts a private redis-server (loopback, the ACL users of ``corral.trust.credentials``) and two Celery
workers of a one-task app (``bench.noop``, which returns its argument): one configured like corral
before signing (JSON), one like corral now (``corral-signed`` + the guard consumer). Then it measures,
for a realistic request body (the ``start_process`` request of a job, ~1.7 KB of JSON):

* serialize and deserialize of one task message (client signs; worker verifies and stamps the caller)
* a publish + execute + result round trip of ``bench.noop``, sequentially, through the real worker

and prints a table with the signed figure as a ratio of the JSON one. The worker decodes a task body
twice (the consumer to route it, the pool child to run it), so a signed task is verified twice.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from kombu.serialization import dumps, loads

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from corral.celeryconf import celery_config  # noqa: E402
from corral.client.devstack import free_port  # noqa: E402
from corral.contract.models import dump  # noqa: E402
from corral.fleet.job import JobSpec  # noqa: E402
from corral.settings import Settings  # noqa: E402
from corral.trust import signing  # noqa: E402
from corral.trust.credentials import init_fleet  # noqa: E402

CLIENT, WORKER = "bench-client", "corral-host-bench"


def queue_for(mode: str) -> str:
    return f"corral.host.bench-{mode}"  # a host queue name: the ACL users may use it


def make_app(mode: str, settings: Settings) -> Celery:
    """The bench app as a worker or a producer: ``json`` (the baseline) or ``signed``."""
    app = Celery(f"bench-{mode}", set_as_current=False)
    app.conf.update(celery_config(settings))
    app.conf.task_default_queue = queue_for(mode)
    app.conf.task_routes = None
    if mode == "json":
        app.conf.task_serializer = "json"
        app.conf.accept_content = ["json"]
    else:
        signing.register(settings)
        app.conf.worker_consumer = "workers.guard:GuardedConsumer"

    @app.task(name="bench.noop")
    def noop(request: Any = None, *, host: str | None = None, caller: str | None = None) -> Any:
        return {"caller": caller, "size": len(str(request))}

    return app


def worker_main() -> None:
    """``python bench/signing.py --worker MODE``: run the bench app's worker for MODE."""
    mode = sys.argv[2]
    app = make_app(mode, Settings())
    app.worker_main(["worker", "-Q", queue_for(mode), "--concurrency", "1", "--loglevel", "WARNING", "-n", mode])


def per_call_us(fn: Callable[[], object], runs: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(runs):
        fn()
    return (time.perf_counter() - start) / runs * 1e6


def round_trips_ms(app: Celery, mode: str, body: dict[str, Any], runs: int) -> list[float]:
    out = []
    for i in range(runs + 5):
        start = time.perf_counter()
        result = app.send_task(
            "bench.noop", args=[body], kwargs={"host": "bench", "caller": CLIENT}, queue=queue_for(mode)
        )
        value = result.get(timeout=30)
        elapsed = (time.perf_counter() - start) * 1000
        result.forget()
        assert value["caller"] == CLIENT, value
        if i >= 5:  # warm-up: connections, first imports
            out.append(elapsed)
    return out


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker_main()
        return 0
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server is not installed", file=sys.stderr)
        return 1
    root = Path(tempfile.mkdtemp(prefix="corral-bench-signing-"))
    fleet = init_fleet(root / "fleet", [CLIENT, WORKER])
    port = free_port()
    server = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(root),
            "--aclfile",
            str(fleet.acl_file),
        ],
        stdout=subprocess.DEVNULL,
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    base["CORRAL_REDIS__URL"] = f"redis://127.0.0.1:{port}"
    workers = []
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=port, username="admin", password=fleet.password("admin")).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        worker_env = {**base, **fleet.role_env("worker", WORKER), "PYTHONPATH": str(REPO)}
        for mode in ("json", "signed"):
            workers.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--worker", mode],
                    env=worker_env,
                    cwd=REPO,
                    stdout=(root / f"worker-{mode}.log").open("wb"),
                    stderr=subprocess.STDOUT,
                )
            )
        os.environ.update({**base, **fleet.role_env("client", CLIENT)})
        client_settings = Settings()
        worker_settings = Settings(
            **{
                "security": {
                    k.removeprefix("CORRAL_SECURITY__").lower(): v
                    for k, v in fleet.role_env("worker", WORKER).items()
                    if k.startswith("CORRAL_SECURITY__")
                }
            }
        )
        body = dump(JobSpec(image="corral/busybox:latest", argv=["true"]).requests("bench")[-1][1])
        message = [
            [body],
            {"host": "bench", "caller": CLIENT},
            {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
        ]
        client_signer, worker_signer = signing.build_signer(client_settings), signing.build_signer(worker_settings)
        signed = client_signer.serialize(message)
        _, _, plain = dumps(message, serializer="json")  # what Celery sends without signing
        micro = {
            "serialize": (
                per_call_us(lambda: dumps(message, serializer="json"), 5000),
                per_call_us(lambda: client_signer.serialize(message), 5000),
            ),
            "deserialize": (
                per_call_us(lambda: loads(plain, "application/json", "utf-8"), 5000),
                per_call_us(lambda: worker_signer.deserialize(signed), 5000),
            ),
        }
        apps = {mode: make_app(mode, client_settings) for mode in ("json", "signed")}
        trips = {mode: round_trips_ms(apps[mode], mode, body, args.runs) for mode in ("json", "signed")}
        rows = [
            ("message bytes", f"{len(plain)}", f"{len(signed)}", f"{len(signed) / len(plain):.2f}x"),
            *[(f"{name} (µs)", f"{j:.1f}", f"{s:.1f}", f"{s / j:.2f}x") for name, (j, s) in micro.items()],
        ]
        for label, stat in (("round trip median (ms)", statistics.median), ("round trip mean (ms)", statistics.fmean)):
            j, s = stat(trips["json"]), stat(trips["signed"])
            rows.append((label, f"{j:.2f}", f"{s:.2f}", f"{s / j:.2f}x"))
        j95 = statistics.quantiles(trips["json"], n=20)[18]
        s95 = statistics.quantiles(trips["signed"], n=20)[18]
        rows.append(("round trip p95 (ms)", f"{j95:.2f}", f"{s95:.2f}", f"{s95 / j95:.2f}x"))
        print(f"signing cost per task ({args.runs} sequential round trips of bench.noop, one worker each)")
        print(f"| {'measure':<24} | {'json':>8} | {'signed':>8} | {'ratio':>6} |")
        print(f"|{'-' * 26}|{'-' * 10}|{'-' * 10}|{'-' * 8}|")
        for row in rows:
            print(f"| {row[0]:<24} | {row[1]:>8} | {row[2]:>8} | {row[3]:>6} |")
        for app in apps.values():
            app.close()
    finally:
        for proc in workers:
            proc.terminate()
        for proc in workers:
            proc.wait(30)
        server.terminate()
        server.wait(10)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
