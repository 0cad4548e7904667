"""What task messages say about their arguments outside the body (``corral.celeryconf.QuietAMQP``):
worker logs, task events and Flower read ``argsrepr``/``kwargsrepr``, which name only the shape."""

from __future__ import annotations

from celery import Celery

from corral.celeryconf import QuietAMQP, argument_summary

SECRET = "hunter2-env-value"
REQUEST = {"process": {"argv": ["echo"], "env": {"TOKEN": SECRET}}, "environment": {"environment_id": "e1"}}


def test_summary_names_count_size_host_and_caller_only() -> None:
    argsrepr, kwargsrepr = argument_summary([REQUEST], {"host": "h1", "caller": "alice", "extra": SECRET})
    assert argsrepr.startswith("<1 argument hidden, ") and argsrepr.endswith(" bytes>")
    assert kwargsrepr == "{'host': 'h1', 'caller': 'alice'} <1 hidden>"
    assert SECRET not in argsrepr + kwargsrepr


def test_task_message_headers_and_sent_event_never_carry_argument_values() -> None:
    app = Celery("t", broker="memory://", set_as_current=False, amqp=QuietAMQP)
    # Positional up to ``create_sent_event``, as ``Celery.send_task`` calls it.
    rest = (None, None, None, None, None, 0, None, None, None, None, None, None, True)
    message = app.amqp.create_task_message(
        "id-1", "corral.start_process", [REQUEST], {"host": "h1", "caller": "alice"}, *rest
    )
    shown = [message.headers["argsrepr"], message.headers["kwargsrepr"]]
    shown += [message.sent_event["args"], message.sent_event["kwargs"]]
    assert all(SECRET not in text and "TOKEN" not in text for text in shown), shown
    assert "'host': 'h1'" in message.sent_event["kwargs"]
    # An explicit repr from the caller does not bypass it (a retry re-sends the request's reprs).
    message = app.amqp.create_task_message("id-2", "corral.x", [REQUEST], {}, argsrepr=repr(REQUEST))
    assert SECRET not in message.headers["argsrepr"]


def test_a_task_sent_through_send_task_is_summarized() -> None:
    app = Celery("t", broker="memory://", set_as_current=False, amqp=QuietAMQP)
    app.conf.task_serializer = "json"
    app.send_task("corral.start_process", args=[REQUEST], kwargs={"host": "h1"}, queue="q")
    with app.connection_for_write() as conn:
        message = conn.SimpleQueue("q").get(timeout=5)
    assert SECRET not in message.headers["argsrepr"] + message.headers["kwargsrepr"]
    assert message.payload[0] == [REQUEST]  # the body itself is untouched


def test_the_shipped_flower_conf_shows_the_columns_corral_dev_shows() -> None:
    from pathlib import Path

    from corral.client.devstack import FLOWER_TASKS_COLUMNS

    conf = Path(__file__).resolve().parents[2] / "config" / "flower.conf"
    lines = [line for line in conf.read_text().splitlines() if line.startswith("FLOWER_TASKS_COLUMNS=")]
    assert lines == [f"FLOWER_TASKS_COLUMNS={FLOWER_TASKS_COLUMNS}"]
    assert "args" not in FLOWER_TASKS_COLUMNS.split(",")


def test_reads_send_no_task_sent_event_so_flower_never_lists_them_as_pending() -> None:
    app = Celery("t", broker="memory://", set_as_current=False, amqp=QuietAMQP)
    rest = (None, None, None, None, None, 0, None, None, None, None, None, None, True)  # create_sent_event=True

    def sent_event(name: str, request: dict[str, object]) -> object:
        return app.amqp.create_task_message("id-1", name, [request], {"host": "h1"}, *rest).sent_event

    frame = {"process_ref": "p1", "stream": "stdout"}
    assert sent_event("corral.collect_stats", {"process_ref": "p1"}) is None
    assert sent_event("corral.stream_io", frame) is None
    assert sent_event("corral.list_sessions", {}) is None  # a fleet view, served by the reads lanes
    # Lifecycle work is followed: a launch, a stdin write (an effect, in the lifecycle lane).
    assert sent_event("corral.launch", REQUEST) is not None
    assert sent_event("corral.stream_io", {**frame, "stream": "stdin", "data_b64": ""}) is not None
    # Passed as a keyword (not as send_task does), the same.
    message = app.amqp.create_task_message("id-2", "corral.collect_stats", [{}], {}, create_sent_event=True)
    assert message.sent_event is None
