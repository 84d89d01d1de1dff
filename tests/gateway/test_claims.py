"""The gateway's VRRP claim book: who may claim a group, repeats, withdrawal,
expiry and split brain. Pure: the sockets are in test_claims_socket.py."""

from __future__ import annotations

import logging

import pytest

from zerogate.gateway.claims import SERIES_GAP, ClaimBook, DropLog, Verdict
from zerogate.model.snapshot import ConnectorEntry
from zerogate.model.vrrp import CLAIM_TTL, MAX_BYTES, VrrpState, encode


def connector(name: str, n: int, group: str) -> ConnectorEntry:
    return ConnectorEntry(
        name=name,
        device_id=n,
        wg_public_key=f"{n:0>43}=",
        address=f"100.64.255.{n}",
        connector_group=group,
        subnets=(),
    )


CONNECTORS = [connector("cn-a", 10, "site"), connector("cn-b", 11, "site"), connector("cl-1", 12, "cloud")]
A, B, CLOUD = "100.64.255.10", "100.64.255.11", "100.64.255.12"


def msg(state: str = "master", seq: int = 1, group: str = "site") -> bytes:
    return encode(VrrpState(group, state, seq))  # type: ignore[arg-type]


def masters(book: ClaimBook, now: float) -> dict[str, str]:
    return {g: c.connector for g, c in book.masters(now).items()}


def test_a_master_claim_names_the_groups_connector_and_repeats_keep_it() -> None:
    book = ClaimBook()
    assert book.offer(A, msg(), CONNECTORS, 100.0) == (Verdict.NEW_MASTER, "site", "cn-a")
    assert masters(book, 100.0) == {"site": "cn-a"}
    assert book.offer(A, msg(), CONNECTORS, 102.0)[0] is Verdict.REFRESHED
    assert masters(book, 102.0 + CLAIM_TTL) == {"site": "cn-a"}  # the repeat restarted the clock


def test_a_claim_not_repeated_for_the_ttl_is_forgotten() -> None:
    book = ClaimBook()
    book.offer(A, msg(), CONNECTORS, 100.0)
    assert masters(book, 100.0 + CLAIM_TTL) == {"site": "cn-a"}
    assert masters(book, 100.0 + CLAIM_TTL + 0.01) == {}
    # an expired claim does not block another connector's repeat either
    book.offer(A, msg(), CONNECTORS, 200.0)
    assert book.offer(B, msg(seq=1), CONNECTORS, 200.0 + CLAIM_TTL + 1)[0] is Verdict.NEW_MASTER


def test_backup_or_fault_from_the_claimant_withdraws_its_claim_and_from_others_changes_nothing() -> None:
    book = ClaimBook()
    book.offer(A, msg(seq=1), CONNECTORS, 1.0)
    assert book.offer(B, msg("backup", 1), CONNECTORS, 1.1) == (Verdict.NOTED, "site", "cn-b")
    assert masters(book, 1.1) == {"site": "cn-a"}
    assert book.offer(A, msg("fault", 2), CONNECTORS, 1.2) == (Verdict.WITHDRAWN, "site", "cn-a")
    assert masters(book, 1.2) == {}


def test_a_new_master_takes_the_group_from_a_silent_one_at_once() -> None:
    book = ClaimBook()
    book.offer(A, msg(seq=1), CONNECTORS, 1.0)
    # cn-a died without a word; cn-b's keepalived became master (its transition: a new seq)
    assert book.offer(B, msg(seq=2), CONNECTORS, 1.5) == (Verdict.NEW_MASTER, "site", "cn-b")
    assert masters(book, 1.5) == {"site": "cn-b"}


def test_split_brain_repeats_do_not_flap_between_two_masters() -> None:
    book = ClaimBook()
    book.offer(B, msg(seq=1), CONNECTORS, 0.5)  # cn-b says master once: remembered seq 1
    book.offer(A, msg(seq=4), CONNECTORS, 1.0)  # cn-a's transition takes the group
    assert masters(book, 1.0) == {"site": "cn-a"}
    for t in (2.0, 3.0, 4.0):  # both repeat every second
        assert book.offer(B, msg(seq=1), CONNECTORS, t)[0] is Verdict.NOTED
        assert book.offer(A, msg(seq=4), CONNECTORS, t + 0.1)[0] is Verdict.REFRESHED
    assert masters(book, 4.1) == {"site": "cn-a"}
    # a real transition of cn-b (keepalived restarted: a new seq) does take it
    assert book.offer(B, msg(seq=2), CONNECTORS, 4.5)[0] is Verdict.NEW_MASTER


def test_a_restarted_connectors_claim_is_news_though_its_seq_starts_again() -> None:
    book = ClaimBook()
    book.offer(B, msg(seq=2), CONNECTORS, 10.0)  # cn-b was master once, with seq 2
    book.offer(B, msg("backup", 1), CONNECTORS, 20.0)  # restarted: backup, seq 1
    book.offer(A, msg(seq=2), CONNECTORS, 21.0)  # cn-a is master, repeating every second
    for t in (22.0, 23.0):
        assert book.offer(A, msg(seq=2), CONNECTORS, t)[0] is Verdict.REFRESHED
    # cn-a dies; cn-b becomes master with seq 2 again after 1.2 s of silence from it
    assert book.offer(B, msg(seq=2), CONNECTORS, 23.5)[0] is Verdict.NEW_MASTER
    assert masters(book, 23.5) == {"site": "cn-b"}


def test_a_rivals_repeat_within_the_series_gap_is_no_news() -> None:
    book = ClaimBook()
    book.offer(B, msg(seq=2), CONNECTORS, 10.0)
    book.offer(A, msg(seq=5), CONNECTORS, 10.1)
    assert book.offer(B, msg(seq=2), CONNECTORS, 10.0 + SERIES_GAP)[0] is Verdict.NOTED
    for t in (11.1, 12.1, 13.1):  # cn-a keeps repeating: its claim stays fresh
        assert book.offer(A, msg(seq=5), CONNECTORS, t)[0] is Verdict.REFRESHED
    # cn-b silent for longer than the gap: its message is news (a restart), not a repeat
    assert book.offer(B, msg(seq=2), CONNECTORS, 10.0 + 2 * SERIES_GAP + 0.1)[0] is Verdict.NEW_MASTER


@pytest.mark.parametrize(
    ("source", "data", "verdict"),
    [
        ("100.64.0.2", msg(), Verdict.UNKNOWN_SOURCE),  # a client's address
        ("192.0.2.10", msg(), Verdict.UNKNOWN_SOURCE),
        (A, msg(group="cloud"), Verdict.OTHER_GROUP),  # cn-a is not in cloud
        (CLOUD, msg(), Verdict.OTHER_GROUP),
        (A, b"\xff\xfe garbage", Verdict.MALFORMED),
        (A, b'{"v": 1, "group": "site", "state": "master", "seq": -1}', Verdict.MALFORMED),
        (A, b'{"v": 2, "group": "site", "state": "master", "seq": 1}', Verdict.MALFORMED),
        (A, b" " * (MAX_BYTES + 1), Verdict.OVERSIZED),
    ],
)
def test_datagrams_from_strangers_for_other_groups_or_malformed_are_dropped(
    source: str, data: bytes, verdict: Verdict
) -> None:
    book = ClaimBook()
    got, _, _ = book.offer(source, data, CONNECTORS, 1.0)
    assert got is verdict and not got.accepted
    assert masters(book, 1.0) == {}


def test_connectors_that_left_the_snapshot_lose_their_claims() -> None:
    book = ClaimBook()
    book.offer(A, msg(), CONNECTORS, 1.0)
    book.offer(CLOUD, msg(group="cloud"), CONNECTORS, 1.0)
    book.forget_except([CONNECTORS[1], CONNECTORS[2]])
    assert masters(book, 1.0) == {"cloud": "cl-1"}
    # cl-1 moved to another group: its claim for cloud is gone too
    book.forget_except([connector("cl-1", 12, "site")])
    assert masters(book, 1.0) == {}


def test_drops_are_logged_rate_limited_and_without_what_the_datagram_carried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    drops = DropLog(every=10.0)
    drops.drop(Verdict.MALFORMED, A, 100.0)
    for i in range(50):
        drops.drop(Verdict.UNKNOWN_SOURCE, "192.0.2.7", 100.0 + i * 0.1)
    assert len(caplog.records) == 1
    drops.drop(Verdict.OTHER_GROUP, A, 110.5)
    assert len(caplog.records) == 2
    last = caplog.records[1].getMessage()
    assert "50 from 192.0.2.7 (not from a connector's tunnel address)" in last
    assert "1 from 100.64.255.10 (names a group not the sender's own)" in last
