"""The consumer process's composition root: settings -> adapters -> worker -> main loop."""

from __future__ import annotations

import logging
import signal
import sys

from cloud.consumer import limits
from cloud.consumer.backoff import Backoff
from cloud.consumer.decisions import RequestPolicy
from cloud.consumer.inbox import Inbox
from cloud.consumer.lifecycle import Lifecycle
from cloud.consumer.metrics import ConsumerMetrics
from cloud.consumer.mqtt_link import MqttLink, Subscription, TlsFiles
from cloud.consumer.publishing import LEADER_LOCK_KEY, NOTIFY_CHANNELS, PublishingLoop
from cloud.consumer.service import ConsumerService
from cloud.consumer.signing_key import load_signing_key
from cloud.consumer.worker import Worker
from cloud.logs import configure_logging
from cloud.settings import CloudSettings
from protocol.topics import TopicKind, shared_subscription

log = logging.getLogger("cloud.consumer")


def run(settings: CloudSettings) -> int:
    configure_logging()
    settings.require("database_url", "mqtt_url", "cloud_signing_key_file")
    assert settings.cloud_signing_key_file is not None and settings.database_url is not None
    signing_key = load_signing_key(settings.cloud_signing_key_file)
    # (1.1) FESTIVAL_CARD_AUTH=sun: the card master key, read once (SettingsError when absent)
    sun_master_key = settings.card_master_key()
    endpoint = settings.mqtt_endpoint

    # Imported here: `festival-cloud --help` and the kiosk extra need no database driver.
    from cloud.database import NotificationListener, TransientDatabaseError, make_engine
    from cloud.ledger import Ledger
    from cloud.ledger_records import LedgerRequest

    engine = make_engine(
        settings.database_url,
        pool_size=2,
        application_name=f"festival-consumer {settings.consumer_id}"[:63],
        pre_ping=False,  # every transaction of the worker is retried on a dead connection
    )
    # The one root whose requests FESTIVAL_STAFF_REQUIRED applies to: the kiosks'.
    ledger = Ledger.from_settings(engine, settings, staff_required=settings.festival_staff_required)
    # PROTOCOL.md 1.1: no kiosk's credentials may use a cloud process's client id. The broker binds
    # each kiosk to the client id = its kiosk id, and `kiosk add` refuses the cloud's prefixes;
    # a CONSUMER_ID that is nevertheless a registered kiosk's id would let that kiosk take over
    # this consumer's durable session: refuse to start. Best effort: a database that is away at
    # start is not a reason to stop (it is checked again by nobody; the broker rule still holds).
    try:
        if any(kiosk.kiosk_id == settings.consumer_id for kiosk in ledger.kiosks()):
            print(
                f"festival-cloud consumer: CONSUMER_ID {settings.consumer_id!r} is a registered "
                "kiosk's id: that kiosk could take over this consumer's MQTT session; choose "
                "another CONSUMER_ID (e.g. consumer-<host>-<n>)",
                file=sys.stderr,
            )
            engine.dispose()
            return 2
    except TransientDatabaseError as error:
        log.warning(
            "kiosk registry not checked at start", extra={"context": {"reason": str(error)}}
        )
    metrics = ConsumerMetrics.create()
    # Never fatal: a consumer does not stop processing payments because of its metrics port.
    serving_metrics = metrics.serve(settings.metrics_port, settings.consumer_metrics_host)
    metrics.database_available.set(1)

    batch_max = settings.consumer_batch_max
    inbox = Inbox(
        messages_max=limits.INBOX_MESSAGES_MAX,
        scans_max=limits.INBOX_SCANS_MAX,
        events_max=limits.INBOX_EVENTS_MAX,
    )
    prefix = settings.festival_topic_prefix
    link = MqttLink(
        endpoint=endpoint,
        client_id=settings.consumer_id,
        inbox=inbox,
        subscriptions=[
            Subscription(shared_subscription(prefix, TopicKind.TX), 1),
            # Shared too: with two consumers each scan and status is recorded once. (A shared
            # subscription gets no retained messages; statuses arrive live and are kept in the
            # database.)
            Subscription(shared_subscription(prefix, TopicKind.SCAN), 0),
            Subscription(shared_subscription(prefix, TopicKind.STATUS), 1),
        ],
        receive_maximum=limits.receive_maximum_for(batch_max),
        tls=TlsFiles(settings.mqtt_ca_file, settings.mqtt_cert_file, settings.mqtt_key_file),
    )
    lifecycle = Lifecycle(grace_s=limits.SHUTDOWN_GRACE_S)
    signal.signal(signal.SIGTERM, lifecycle.request_stop)
    signal.signal(signal.SIGINT, lifecycle.request_stop)
    worker = Worker(
        ledger=ledger,
        ledger_request=LedgerRequest,
        transient_errors=(TransientDatabaseError,),
        link=link,
        signing_key=signing_key,
        policy=RequestPolicy(
            currency=settings.festival_currency,
            stale_after_s=settings.festival_stale_after_s,
            future_skew_s=settings.festival_future_skew_s,
            topup_cents_max=settings.festival_max_topup_cents,
        ),
        prefix=prefix,
        metrics=metrics,
        lifecycle=lifecycle,
        backoff_factory=lambda: Backoff(
            limits.DATABASE_RETRY_DELAY_MIN_S, limits.DATABASE_RETRY_DELAY_MAX_S
        ),
        sun_master_key=sun_master_key,
    )
    # (1.1) The configs and deny-lists any process issued, sent from here: a thread and a
    # database connection pair of its own (one LISTENs and holds the leader lock), so
    # publishing never waits for the payment pipeline nor the other way round.
    from cloud.publisher import Publisher

    publishing_engine = make_engine(
        settings.database_url,
        pool_size=2,
        application_name=f"festival-publisher {settings.consumer_id}"[:63],
    )
    publishing = PublishingLoop(
        Publisher(
            Ledger(publishing_engine, currency=settings.festival_currency),
            link,
            signing_key,
            prefix,
            transient_errors=(TransientDatabaseError,),
            metrics=metrics,
        ),
        NotificationListener(publishing_engine, NOTIFY_CHANNELS, LEADER_LOCK_KEY),
        transient_errors=(TransientDatabaseError,),
    )
    service = ConsumerService(
        inbox=inbox,
        link=link,
        worker=worker,
        lifecycle=lifecycle,
        metrics=metrics,
        batch_max=batch_max,
        publishing=publishing,
    )
    log.info(
        "consumer starting",
        extra={
            "context": {
                "consumer_id": settings.consumer_id,
                "broker": repr(endpoint),
                "batch_max": batch_max,
                "metrics": f"{settings.consumer_metrics_host}:{settings.metrics_port}"
                if serving_metrics
                else None,
            }
        },
    )
    try:
        return service.run()
    finally:
        engine.dispose()
        publishing_engine.dispose()
