"""Alerts over a real store, sent to a real SMTP server and a real webhook receiver.

The checks raise one alert per condition (errors of a channel, a destination's
queue too old, AI timeouts), never again while it lasts unless it re-arms, and
every notifier gets each alert once: a failing one gets it at a later check.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, update

from engine.ai_timeouts import alerts, list_alerts
from engine.alert_config import AlertSettings
from engine.alert_tables import create_tables
from engine.alerting import AlertJob, AlertRun
from engine.store.db import open_engine
from engine.store.group_commit import GroupCommitter
from engine.store.tables import messages, queue_entries
from tests.support.alert_peers import Mailbox, WebhookReceiver, smtp_server, webhook_server
from tests.support.databases import store_url
from tests.support.tls import self_signed_certificate

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
PHI = ("Doe^Jane", "PID-4711", "ACC-99")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Engine, GroupCommitter]]:
    url = next(store_url("sqlite", tmp_path))
    engine = open_engine(url)
    create_tables(engine)
    committer = GroupCommitter(engine)
    committer.start()
    yield engine, committer
    committer.stop()
    engine.dispose()


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    with webhook_server() as receiver:
        yield receiver


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    with smtp_server() as box:
        yield box


class Clock:
    """The job's 'now', moved by the test."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += timedelta(minutes=minutes)


def settings(webhook: WebhookReceiver, mailbox: Mailbox, **rules: Any) -> AlertSettings:
    return AlertSettings.model_validate(
        {
            "queue_age_minutes": 30,
            "rearm_minutes": 60,
            **rules,
            "notifiers": [
                {"type": "log"},
                {"type": "webhook", "url": webhook.url,
                 "auth": {"type": "bearer", "token": "hook-secret"}},
                {"type": "email", "host": "127.0.0.1", "port": mailbox.port,
                 "sender": "meridian@hospital.test", "recipients": ["pacs-admin@hospital.test"]},
            ],
        }
    )  # fmt: skip


def add_message(engine: Engine, channel: str, status: str, at: datetime) -> int:
    with engine.begin() as conn:
        key = conn.execute(
            insert(messages).values(
                channel=channel, status=status, received_at=at, updated_at=at, origin="test",
                patient_id=PHI[1], accession=PHI[2], raw=f"PID|||{PHI[1]}||{PHI[0]}",
            )
        ).inserted_primary_key  # fmt: skip
    assert key is not None
    return int(key[0])


def add_entry(
    engine: Engine, message_id: int, *, destination: str, status: str, at: datetime
) -> int:
    with engine.begin() as conn:
        key = conn.execute(
            insert(queue_entries).values(
                message_id=message_id, channel="orders", destination=destination, status=status,
                payload=PHI[0], attempts=1, next_attempt_at=at, created_at=at, updated_at=at,
            )
        ).inserted_primary_key  # fmt: skip
    assert key is not None
    return int(key[0])


def run(job: AlertJob) -> AlertRun:
    return asyncio.run(job.run_once())


def sent_alerts(webhook: WebhookReceiver) -> list[dict[str, Any]]:
    return [alert for body in webhook.bodies for alert in body["alerts"]]


def test_conditions_raise_one_alert_each_reach_every_notifier_and_clear(
    store: tuple[Engine, GroupCommitter],
    webhook: WebhookReceiver,
    mailbox: Mailbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine, committer = store
    clock = Clock()
    job = AlertJob(engine, committer, settings(webhook, mailbox), clock=clock)
    errored = add_message(engine, "orders", "ERROR", T0 - timedelta(seconds=20))
    waiting = add_message(engine, "orders", "QUEUED", T0 - timedelta(minutes=45))
    add_entry(engine, waiting, destination="ris", status="QUEUED", at=T0 - timedelta(minutes=45))
    add_entry(engine, waiting, destination="pacs", status="QUEUED", at=T0 - timedelta(minutes=5))
    add_entry(engine, errored, destination="pacs", status="ERROR", at=T0 - timedelta(seconds=10))

    with caplog.at_level(logging.WARNING, logger="engine.alert_notify"):
        first = run(job)

    assert first.raised == ["errors:orders", "queue_age:orders/ris"]
    assert first.sent == {"log": 2, "webhook": 2, "email": 2}
    # The admin UI's list shows them (same table as AI timeouts).
    assert sorted(a.kind for a in list_alerts(engine)) == ["errors", "queue_age"]
    posted = {a["kind"]: a for a in sent_alerts(webhook)}
    assert posted["errors"]["channel"] == "orders"
    assert posted["errors"]["detail"]["errored_messages"] == 1
    assert posted["errors"]["detail"]["failed_deliveries"] == 1
    assert (posted["queue_age"]["channel"], posted["queue_age"]["destination"]) == ("orders", "ris")
    assert posted["queue_age"]["detail"]["queued"] == 1
    assert posted["queue_age"]["detail"]["oldest_age_minutes"] == 45.0
    assert webhook.authorizations == ["Bearer hook-secret"]
    [mail] = mailbox.messages
    assert mail["Subject"] == "[Meridian] 2 alert(s), error"
    assert mailbox.recipients == [["pacs-admin@hospital.test"]]
    text = mail.get_payload()
    assert "channel orders: 1 message(s) in ERROR" in text
    assert "orders/ris: oldest queued entry waits 45 min" in text
    assert "queue_age" in caplog.text
    for leaked in PHI:
        assert leaked not in json.dumps(webhook.bodies) + text + caplog.text

    # A minute later: the queue is still old, no new errors. Nothing new is raised or sent.
    clock.advance(1)
    second = run(job)
    assert (second.raised, second.cleared, second.sent) == ([], ["errors:orders"], {})
    assert len(webhook.bodies) == 1 and len(mailbox.messages) == 1

    # New errors later: the channel's condition is raised afresh.
    clock.advance(1)
    add_message(engine, "orders", "ERROR", clock.now - timedelta(seconds=15))
    assert run(job).raised == ["errors:orders"]

    # An hour later: ris still too old an hour after its alert, sent again (re-armed) with
    # its new age; pacs's entry is now too old as well (raised for the first time).
    clock.advance(60)
    rearmed = run(job)
    assert rearmed.raised == ["queue_age:orders/pacs", "queue_age:orders/ris"]
    assert rearmed.cleared == ["errors:orders"]
    ages = {a["destination"]: a["detail"]["oldest_age_minutes"] for a in sent_alerts(webhook)[-2:]}
    assert ages == {"pacs": 67.0, "ris": 107.0}

    # Delivered: the condition clears.
    with engine.begin() as conn:
        conn.execute(update(queue_entries).values(status="SENT"))
    clock.advance(1)
    assert run(job).cleared == ["queue_age:orders/pacs", "queue_age:orders/ris"]


def test_a_failing_webhook_gets_its_alerts_after_it_recovers(
    store: tuple[Engine, GroupCommitter],
    webhook: WebhookReceiver,
    mailbox: Mailbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine, committer = store
    clock = Clock()
    job = AlertJob(
        engine, committer, settings(webhook, mailbox, queue_age_minutes=None), clock=clock
    )
    add_message(engine, "adt", "ERROR", T0 - timedelta(seconds=30))
    webhook.status = 503

    with caplog.at_level(logging.WARNING, logger="engine.alerting"):
        down = run(job)

    assert down.failed == ["webhook"]
    assert down.sent == {"log": 1, "email": 1}  # the others are not held up
    assert webhook.failures == 1 and webhook.bodies == []
    assert "notifier webhook failed (webhook webhook: HTTP 503)" in caplog.text

    clock.advance(1)
    still_down = run(job)
    assert still_down.failed == ["webhook"] and webhook.failures == 2

    webhook.status = 200
    clock.advance(1)
    recovered = run(job)
    assert recovered.sent == {"webhook": 1}
    [alert] = sent_alerts(webhook)
    assert (alert["kind"], alert["channel"]) == ("errors", "adt")
    assert len(mailbox.messages) == 1  # e-mail had it already: not sent twice

    clock.advance(1)
    assert run(job).sent == {}


def test_a_webhook_nobody_listens_on_is_retried(
    store: tuple[Engine, GroupCommitter], mailbox: Mailbox
) -> None:
    engine, committer = store
    clock = Clock()
    with webhook_server() as gone:
        url = gone.url
    config = AlertSettings.model_validate(
        {"notifiers": [{"type": "webhook", "url": url, "timeout_seconds": 2}]}
    )
    job = AlertJob(engine, committer, config, clock=clock)
    add_message(engine, "adt", "ERROR", T0 - timedelta(seconds=30))
    assert run(job).failed == ["webhook"]
    clock.advance(1)
    assert run(job).failed == ["webhook"]  # still pending, tried again


def test_ai_timeouts_are_notified_once_and_acknowledged_ones_not_at_all(
    store: tuple[Engine, GroupCommitter], webhook: WebhookReceiver, mailbox: Mailbox
) -> None:
    engine, committer = store
    clock = Clock()
    job = AlertJob(engine, committer, settings(webhook, mailbox), clock=clock)
    with engine.begin() as conn:
        for acknowledged in (False, True):
            conn.execute(
                insert(alerts).values(
                    at=T0 - timedelta(minutes=1), kind="ai_timeout", severity="error",
                    message="AI model ich 2.1 via images/ai-ich: no result within 300 s",
                    acknowledged=acknowledged,
                )
            )  # fmt: skip

    assert run(job).sent == {"log": 1, "webhook": 1, "email": 1}
    clock.advance(1)
    assert run(job).sent == {}
    [alert] = sent_alerts(webhook)
    assert alert["kind"] == "ai_timeout"
    assert alert["message"].startswith("AI model ich 2.1")
    assert mailbox.messages[0]["Subject"] == "[Meridian] 1 alert(s), error"


def test_email_over_starttls_with_login(
    store: tuple[Engine, GroupCommitter], tmp_path: Path
) -> None:
    engine, committer = store
    cert, key = self_signed_certificate(tmp_path)
    with smtp_server(tls=(cert, key), login=("hub", "s3cret")) as box:
        config = AlertSettings.model_validate(
            {
                "notifiers": [
                    {"type": "email", "host": "localhost", "port": box.port, "starttls": True,
                     "verify_tls": str(cert), "username": "hub", "password": "s3cret",
                     "sender": "meridian@hospital.test", "recipients": ["a@x.test", "b@x.test"],
                     "subject_prefix": "[RAD]"},
                ]
            }
        )  # fmt: skip
        job = AlertJob(engine, committer, config, clock=Clock())
        add_message(engine, "adt", "ERROR", T0 - timedelta(seconds=30))
        assert run(job).sent == {"email": 1}
    assert box.logins == ["hub"]
    assert box.recipients == [["a@x.test", "b@x.test"]]
    assert box.messages[0]["Subject"] == "[RAD] 1 alert(s), error"


def test_a_wrong_smtp_password_keeps_the_alert_pending(
    store: tuple[Engine, GroupCommitter], tmp_path: Path
) -> None:
    engine, committer = store
    cert, key = self_signed_certificate(tmp_path)
    with smtp_server(tls=(cert, key), login=("hub", "s3cret")) as box:
        base = {"type": "email", "host": "localhost", "port": box.port, "starttls": True,
                "verify_tls": str(cert), "username": "hub", "sender": "m@h.test",
                "recipients": ["a@x.test"]}  # fmt: skip
        wrong = AlertSettings.model_validate({"notifiers": [{**base, "password": "nope"}]})
        clock = Clock()
        add_message(engine, "adt", "ERROR", T0 - timedelta(seconds=30))
        assert run(AlertJob(engine, committer, wrong, clock=clock)).failed == ["email"]
        right = AlertSettings.model_validate({"notifiers": [{**base, "password": "s3cret"}]})
        clock.advance(1)
        assert run(AlertJob(engine, committer, right, clock=clock)).sent == {"email": 1}
    assert len(box.messages) == 1


def test_two_notifiers_of_one_type_need_names() -> None:
    hook = {"type": "webhook", "url": "http://127.0.0.1:9/x"}
    with pytest.raises(ValueError, match="different names"):
        AlertSettings.model_validate({"notifiers": [hook, hook]})
    named = AlertSettings.model_validate({"notifiers": [hook, {**hook, "name": "oncall"}]})
    assert [n.key for n in named.notifiers] == ["webhook", "oncall"]
    assert [n.type for n in AlertSettings().notifiers] == ["log"]
