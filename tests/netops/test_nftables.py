"""nftables adapter: atomic table replacement with the real ``nft`` inside a
network namespace this test creates (the host's ruleset is never touched).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import pytest

from nstools import Netns
from zerogate.netops import nftables
from zerogate.netops.command import CommandError

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None, reason="needs root and the Debian package nftables"
)

GOOD = "  set blocked { type inet_service; elements = { 9999 }; }\n" + (
    "  chain forward { type filter hook forward priority 0; policy accept; tcp dport @blocked drop; }\n"
)
BETTER = GOOD.replace("9999", "9998")


def test_replace_table_script_declares_deletes_and_recreates_in_one_file() -> None:
    assert nftables.replace_table_script("inet", "zerogate", "  chain c { }\n") == (
        "table inet zerogate {}\ndelete table inet zerogate\ntable inet zerogate {\n  chain c { }\n}\n"
    )


@pytest.fixture
def ns(make_netns: Callable[[str], Netns]) -> Netns:
    return make_netns("nf")


def script(body: str) -> str:
    return nftables.replace_table_script("inet", nftables.TABLE, body)


def test_apply_creates_then_replaces_the_table(ns: Netns) -> None:
    assert ns.call(lambda: nftables.list_table("inet", nftables.TABLE)) is None
    ns.call(lambda: nftables.apply(script(GOOD)))
    first = ns.call(lambda: nftables.list_table("inet", nftables.TABLE))
    assert first is not None and "9999" in first
    ns.call(lambda: nftables.apply(script(BETTER)))
    second = ns.call(lambda: nftables.list_table("inet", nftables.TABLE))
    assert second is not None and "9998" in second and "9999" not in second


@pytest.mark.parametrize(
    "broken",
    [
        "  chain forward { type filter hook forward priority 0; nonsense here; }\n",  # syntax
        GOOD + "  chain x { ip saddr @no_such_set drop; }\n",  # only fails when evaluated
        GOOD.replace("{ 9999 }", "{ 10.0.0.0/8 }"),  # wrong element type
    ],
    ids=["syntax", "missing-set", "bad-element"],
)
def test_a_failing_apply_raises_and_leaves_the_previous_table_in_place(ns: Netns, broken: str) -> None:
    ns.call(lambda: nftables.apply(script(GOOD)))
    before = ns.call(lambda: nftables.list_table("inet", nftables.TABLE))
    with pytest.raises(CommandError) as info:
        ns.call(lambda: nftables.apply(script(broken)))
    assert info.value.returncode != 0 and "nft" in str(info.value) and info.value.stderr
    assert ns.call(lambda: nftables.list_table("inet", nftables.TABLE)) == before


def test_check_validates_without_changing_anything(ns: Netns) -> None:
    ns.call(lambda: nftables.check(script(GOOD)))
    assert ns.call(lambda: nftables.list_table("inet", nftables.TABLE)) is None
    with pytest.raises(CommandError):
        ns.call(lambda: nftables.check(script("  nonsense\n")))


def test_delete_table_says_whether_it_was_there(ns: Netns) -> None:
    assert ns.call(lambda: nftables.delete_table("inet", nftables.TABLE)) is False
    ns.call(lambda: nftables.apply(script(GOOD)))
    assert ns.call(lambda: nftables.delete_table("inet", nftables.TABLE)) is True
    assert ns.call(lambda: nftables.list_table("inet", nftables.TABLE)) is None
    assert ns.call(lambda: nftables.delete_table("inet", nftables.TABLE)) is False


def test_our_table_leaves_other_tables_alone(ns: Netns) -> None:
    other = "table ip theirs {\n  chain c { type filter hook input priority 0; policy accept; }\n}\n"
    ns.call(lambda: nftables.apply(other))
    ns.call(lambda: nftables.apply(script(GOOD)))
    ns.call(lambda: nftables.delete_table("inet", nftables.TABLE))
    assert ns.call(lambda: nftables.list_table("ip", "theirs")) is not None
