"""The bounded hand-over between paho's thread and the worker, and the retry backoff."""

from __future__ import annotations

import threading
import time

from cloud.consumer.backoff import Backoff
from cloud.consumer.inbox import InboundMessage, Inbox, LinkEvent, LinkState, source_of


def message(mid: int, qos: int = 1, kiosk: str = "bar-1") -> InboundMessage:
    return InboundMessage(
        topic=f"festival/v1/kiosks/{kiosk}/{'tx' if qos else 'scan'}",
        payload=b"x",
        qos=qos,
        mid=mid,
        retain=False,
        generation=1,
        received_at=time.monotonic(),
        received_at_ms=0,
    )


def test_take_returns_messages_in_arrival_order_up_to_the_batch_size() -> None:
    inbox = Inbox(messages_max=10, scans_max=5, events_max=4)
    for mid in range(1, 6):
        assert inbox.put_message(message(mid))
    events, first = inbox.take(3, timeout_s=0.1)
    _, rest = inbox.take(10, timeout_s=0.1)
    assert events == []
    assert [m.mid for m in first] == [1, 2, 3]
    assert [m.mid for m in rest] == [4, 5]


def test_a_kiosk_draining_a_backlog_shares_each_batch_with_the_other_kiosks() -> None:
    inbox = Inbox(messages_max=1000, scans_max=5, events_max=4, source_share_max=16)
    for mid in range(1, 201):
        assert inbox.put_message(message(mid, kiosk="bar-1"))  # the returning kiosk's backlog
    for mid in (1001, 1002):
        assert inbox.put_message(message(mid, kiosk="bar-2"))
    assert inbox.put_message(message(2001, kiosk="bar-3"))
    _, first = inbox.take(64, timeout_s=0.1)
    # The other kiosks' orders are in the first batch, not behind 200 offline sales.
    assert [m.mid for m in first] == [*range(1, 17), 1001, 1002, 2001]
    # bar-1 alone again: still one share per batch (a short commit for whoever comes next).
    _, second = inbox.take(64, timeout_s=0.1)
    assert [m.mid for m in second] == list(range(17, 33))
    assert inbox.depth() == 200 - 32
    # A newcomer is served in the next batch, beside bar-1's next share.
    assert inbox.put_message(message(3001, kiosk="bar-4"))
    _, third = inbox.take(64, timeout_s=0.1)
    assert [m.mid for m in third] == [*range(33, 49), 3001]
    assert [m.mid for m in inbox.drain()] == list(range(49, 201))
    assert inbox.depth() == 0


def test_a_batch_being_built_counts_what_each_kiosk_has_in_it_already() -> None:
    inbox = Inbox(messages_max=1000, scans_max=5, events_max=4, source_share_max=4)
    for mid in range(1, 11):
        assert inbox.put_message(message(mid, kiosk="bar-1"))
    _, first = inbox.take(64, timeout_s=0.1)
    taken = {source_of(first[0]): len(first)}
    assert [m.mid for m in first] == [1, 2, 3, 4]
    # bar-1 has its share of this batch: a take for it waits (no busy loop) ...
    started = time.monotonic()
    assert inbox.take(64, timeout_s=0.05, taken=taken) == ([], [])
    assert time.monotonic() - started >= 0.05
    # ... but another kiosk's order joins it at once, and bar-1 stays next in line.
    assert inbox.put_message(message(101, kiosk="bar-2"))
    _, joined = inbox.take(60, timeout_s=5, taken=taken)
    assert [m.mid for m in joined] == [101]
    _, next_batch = inbox.take(64, timeout_s=0.1)
    assert [m.mid for m in next_batch] == [5, 6, 7, 8]


def test_wake_ends_a_waiting_take_at_once_and_only_once() -> None:
    inbox = Inbox(messages_max=10, scans_max=5, events_max=4)
    timer = threading.Timer(0.05, inbox.wake)
    timer.start()
    started = time.monotonic()
    assert inbox.take(10, timeout_s=5) == ([], [])
    timer.join()
    assert time.monotonic() - started < 4
    started = time.monotonic()
    assert inbox.take(10, timeout_s=0.05) == ([], [])  # the wake was used up
    assert time.monotonic() - started >= 0.05


def test_qos1_messages_beyond_the_cap_are_refused_and_counted() -> None:
    inbox = Inbox(messages_max=2, scans_max=5, events_max=4)
    assert inbox.put_message(message(1)) and inbox.put_message(message(2))
    assert not inbox.put_message(message(3))
    assert inbox.refused_messages == 1
    assert inbox.depth() == 2


def test_scans_have_their_own_cap_and_never_crowd_out_requests() -> None:
    inbox = Inbox(messages_max=2, scans_max=1, events_max=4)
    assert inbox.put_message(message(1, qos=0))
    assert not inbox.put_message(message(2, qos=0))
    assert inbox.dropped_scans == 1
    assert inbox.put_message(message(3)) and inbox.put_message(message(4))
    _, taken = inbox.take(10, timeout_s=0.1)
    assert [m.mid for m in taken] == [1, 3, 4]
    assert inbox.put_message(message(5, qos=0))  # the scan slot is free again


def test_take_waits_for_a_message_from_another_thread() -> None:
    inbox = Inbox(messages_max=10, scans_max=5, events_max=4)
    timer = threading.Timer(0.05, lambda: inbox.put_message(message(7)))
    timer.start()
    _, taken = inbox.take(10, timeout_s=5)
    timer.join()
    assert [m.mid for m in taken] == [7]


def test_take_returns_nothing_after_its_timeout() -> None:
    inbox = Inbox(messages_max=10, scans_max=5, events_max=4)
    started = time.monotonic()
    assert inbox.take(10, timeout_s=0.05) == ([], [])
    assert time.monotonic() - started >= 0.05


def test_events_are_delivered_with_messages_and_the_oldest_dropped_when_full() -> None:
    inbox = Inbox(messages_max=10, scans_max=5, events_max=2)
    for generation in range(3):
        inbox.put_event(LinkEvent(LinkState.CONNECTED, generation))
    inbox.put_message(message(1))
    events, taken = inbox.take(10, timeout_s=0.1)
    assert [e.generation for e in events] == [1, 2]
    assert len(taken) == 1


def test_a_closed_inbox_takes_no_more_messages_but_keeps_what_it_has() -> None:
    inbox = Inbox(messages_max=10, scans_max=5, events_max=2)
    inbox.put_message(message(1))
    inbox.close()
    assert not inbox.put_message(message(2))
    assert inbox.refused_messages == 0  # not an overflow: redelivered after the restart
    assert [m.mid for m in inbox.drain()] == [1]


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(0.1, 1.0)
    delays = [backoff.next_delay_s() for _ in range(8)]
    assert 0.08 <= delays[0] <= 0.12
    assert 0.16 <= delays[1] <= 0.24
    assert all(delay <= 1.0 for delay in delays)
    assert delays[-1] >= 0.8
    backoff.reset()
    assert backoff.next_delay_s() <= 0.12
