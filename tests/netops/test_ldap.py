"""The directory adapter against a real slapd, plus the pure membership diff and the sync loop."""

from __future__ import annotations

import dataclasses
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from zerogate.netops.directory_sync import DirectorySync, MembershipChange, diff_membership
from zerogate.netops.ldap import (
    Computer,
    Directory,
    DirectoryAuthFailed,
    DirectoryBadConfig,
    DirectoryConfig,
    DirectoryError,
    DirectoryRefused,
    DirectoryUnreachable,
    MonitoredRead,
    dn_key,
)
from zerogate.testbed.slapd import Slapd, computer_entry, group_entry

# One slapd for the module: keep its tests on one xdist worker.
pytestmark = pytest.mark.xdist_group("netops-ldap")

HOSTILE = "a*)(cn=*"
ODD = "db,2\\x"  # a comma and a backslash in the name


@pytest.fixture(scope="module")
def slapd() -> Iterator[Slapd]:
    server = Slapd()
    parent = f"ou=computers,{server.suffix}"
    computers = [
        computer_entry("web1", parent, address="10.1.0.11"),
        computer_entry("web2", parent, address="10.1.0.12"),
        computer_entry("abc", parent, address="10.1.0.13"),
        computer_entry(HOSTILE, parent, address="10.1.0.14"),
        computer_entry(ODD, parent, address="10.1.0.15"),
        computer_entry("ws7", parent, dns_host_name="ws7.corp.example"),  # the AD shape, no address
        computer_entry("broken-ip", parent, address="not-an-ip"),
    ]
    with server.start(computers):
        yield server


@dataclasses.dataclass
class Groups:
    slapd: Slapd
    monitored: str
    protected: str

    def config(self, *, dn: str | None = None, password: str | None = None, **kw: object) -> DirectoryConfig:
        fields: dict[str, object] = {
            "url": self.slapd.url,
            "bind_dn": dn or self.slapd.writer.dn,
            "password": password or self.slapd.writer.password,
            "base_dn": self.slapd.suffix,
            "monitored_group_dn": self.monitored,
            "protected_group_dn": self.protected,
            "connect_timeout": 3.0,
            "operation_timeout": 5.0,
        }
        return DirectoryConfig(**{**fields, **kw})  # type: ignore[arg-type]

    def directory(self, **kw: Any) -> Directory:
        return Directory(self.config(**kw))


def computer_dn(slapd: Slapd, name: str) -> str:
    return computer_entry(name, slapd.computers_dn)[0]


@pytest.fixture
def groups(slapd: Slapd) -> Groups:
    """A fresh monitored group (web1, web2, ws7, a missing DN, a non-computer) and an empty protected group."""
    tag = uuid.uuid4().hex[:8]
    members = [computer_dn(slapd, n) for n in ("web1", "web2", "ws7")]
    members += [f"cn=ghost-{tag},{slapd.computers_dn}", slapd.reader.dn]
    monitored = group_entry(f"monitored-{tag}", slapd.groups_dn, members)
    protected = group_entry(f"protected-{tag}", slapd.groups_dn)
    slapd.add_entries([monitored, protected])
    return Groups(slapd, monitored[0], protected[0])


def ldif_members(slapd: Slapd, group: str) -> set[str]:
    out = slapd.ldapsearch(group, "(objectClass=*)", "member", scope="base")
    return {line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("member: ")}


# -- reading the monitored group -------------------------------------------------


def test_monitored_computers_are_read_sorted_with_missing_and_non_computers_skipped(groups: Groups) -> None:
    read = groups.directory().read_monitored()
    assert [(c.name, c.address) for c in read.computers] == [
        ("web1", ip_address("10.1.0.11")),
        ("web2", ip_address("10.1.0.12")),
        ("ws7.corp.example", None),  # dNSHostName wins over cn
    ]
    assert read.members == 5 and len(read.skipped) == 2 and not read.truncated
    assert groups.slapd.reader.dn in read.skipped
    assert groups.directory().monitored_computers() == read.computers


def test_member_count_is_bounded_and_the_bound_is_reported(groups: Groups) -> None:
    read = groups.directory(max_members=2).read_monitored()
    assert read.truncated and read.members == 5
    assert len(read.computers) + len(read.skipped) == 2


def test_a_member_added_with_ldapmodify_shows_up_at_the_next_sync(groups: Groups) -> None:
    changes: list[MembershipChange] = []
    sync = DirectorySync(
        groups.directory().read_monitored, interval=60, on_change=lambda ch, _r: changes.append(ch)
    )
    sync.poll()
    assert {c.name for c in changes[0].added} == {"web1", "web2", "ws7.corp.example"}
    sync.poll()
    assert len(changes) == 1  # nothing changed, nothing reported

    new = computer_dn(groups.slapd, "abc")
    groups.slapd.ldapmodify(f"dn: {groups.monitored}\nchangetype: modify\nadd: member\nmember: {new}\n")
    change = sync.poll()
    assert change is not None and [c.name for c in change.added] == ["abc"] and not change.removed
    groups.slapd.ldapmodify(f"dn: {groups.monitored}\nchangetype: modify\ndelete: member\nmember: {new}\n")
    change = sync.poll()
    assert change is not None and [c.name for c in change.removed] == ["abc"]


def test_an_invalid_ip_host_number_gives_a_computer_without_address(groups: Groups) -> None:
    groups.slapd.ldapmodify(
        f"dn: {groups.monitored}\nchangetype: modify\nadd: member\nmember: {computer_dn(groups.slapd, 'broken-ip')}\n"
    )
    found = {c.name: c.address for c in groups.directory().monitored_computers()}
    assert found["broken-ip"] is None


# -- the protected group -----------------------------------------------------------


def test_add_and_remove_protected_are_idempotent_and_visible_to_ldapsearch(groups: Groups) -> None:
    directory = groups.directory()
    web1 = computer_dn(groups.slapd, "web1")
    assert directory.add_protected(web1) is True
    assert directory.add_protected(web1) is False  # already a member: success
    # The same DN spelled differently is the same member.
    assert directory.add_protected(web1.upper().replace(",", ", ")) is False
    assert web1 in ldif_members(groups.slapd, groups.protected)
    assert directory.protected_members() == (web1,)

    assert directory.remove_protected(web1) is True
    assert directory.remove_protected(web1) is False  # not a member: success
    assert web1 not in ldif_members(groups.slapd, groups.protected)
    assert directory.protected_members() == ()


def test_removing_the_last_member_of_a_group_without_placeholder_says_what_to_do(slapd: Slapd) -> None:
    web1 = computer_dn(slapd, "web1")
    group = group_entry(f"strict-{uuid.uuid4().hex[:8]}", slapd.groups_dn, [web1])
    slapd.add_entries([group])
    cfg = Groups(slapd, group[0], group[0]).config()
    with pytest.raises(DirectoryRefused, match="placeholder"):
        Directory(cfg).remove_protected(web1)


def test_a_read_only_account_is_refused_on_add_protected(groups: Groups) -> None:
    reader = groups.directory(dn=groups.slapd.reader.dn, password=groups.slapd.reader.password)
    assert len(reader.monitored_computers()) == 3  # it may read
    with pytest.raises(DirectoryRefused, match="insufficient") as refused:
        reader.add_protected(computer_dn(groups.slapd, "web1"))
    assert groups.slapd.reader.dn in str(refused.value)
    assert groups.slapd.reader.password not in str(refused.value)
    assert computer_dn(groups.slapd, "web1") not in ldif_members(groups.slapd, groups.protected)


# -- failures ---------------------------------------------------------------------


def test_wrong_password_is_auth_failed_without_the_password(groups: Groups) -> None:
    wrong = "Wr0ng-" + uuid.uuid4().hex
    with pytest.raises(DirectoryAuthFailed, match="check the bind DN and password") as failed:
        groups.directory(password=wrong).monitored_computers()
    assert wrong not in str(failed.value) and wrong not in repr(failed.value)


def test_closed_port_is_unreachable_within_the_timeout(groups: Groups) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        directory = groups.directory(url=f"ldap://127.0.0.1:{port}", connect_timeout=2.0)
        began = time.monotonic()
        with pytest.raises(DirectoryUnreachable, match=f"port {port}"):
            directory.monitored_computers()
    assert time.monotonic() - began < 2.0 + 1.0


def test_a_missing_group_is_bad_config_naming_the_setting(groups: Groups) -> None:
    missing = f"cn=nope,{groups.slapd.groups_dn}"
    with pytest.raises(DirectoryBadConfig, match="monitored group DN"):
        groups.directory(monitored_group_dn=missing).monitored_computers()
    with pytest.raises(DirectoryBadConfig, match="protected group DN"):
        groups.directory(protected_group_dn=missing).add_protected(computer_dn(groups.slapd, "web1"))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"url": "http://127.0.0.1:389"}, "ldap://"),
        ({"url": "ldap://:389"}, "no host"),
        ({"url": "ldap://127.0.0.1:99999"}, "port"),
        ({"url": "ldap://127.0.0.1/dc=x"}, "only scheme"),
        ({"password": ""}, "password is empty"),
        ({"base_dn": "not a dn"}, "base DN"),
        ({"monitored_group_dn": ""}, "monitored group DN"),
        ({"ca_file": Path("/nonexistent/ca.pem"), "url": "ldaps://127.0.0.1"}, "does not exist"),
        ({"ca_file": Path("/etc/hostname")}, "only used with ldaps"),
        ({"connect_timeout": 0}, "positive"),
        ({"max_members": 0}, "max_members"),
    ],
)
def test_bad_settings_are_rejected_up_front(groups: Groups, change: dict[str, object], match: str) -> None:
    fields = {**dataclasses.asdict(groups.config()), **change}
    with pytest.raises(DirectoryBadConfig, match=match):
        DirectoryConfig(**fields)


def test_the_password_appears_in_no_repr_and_no_error(groups: Groups) -> None:
    secret = groups.slapd.writer.password
    cfg = groups.config()
    assert secret not in repr(cfg) and secret not in str(cfg)
    assert secret not in repr(Directory(cfg))
    messages = []
    for call in (
        lambda: groups.directory(url="ldap://127.0.0.1:1").monitored_computers(),
        lambda: groups.directory(
            monitored_group_dn=f"cn=nope,{groups.slapd.groups_dn}"
        ).monitored_computers(),
        lambda: groups.directory(dn=f"cn=nobody,{groups.slapd.suffix}").protected_members(),
    ):
        with pytest.raises(DirectoryError) as failed:
            call()
        messages.append(f"{failed.value!s} {failed.value!r}")
    assert all(secret not in m for m in messages)


# -- hostile names ---------------------------------------------------------------


def test_filter_values_are_escaped(groups: Groups) -> None:
    directory = groups.directory()
    assert [c.name for c in directory.find_computers(HOSTILE)] == [HOSTILE]
    assert [c.name for c in directory.find_computers(ODD)] == [ODD]
    assert [c.name for c in directory.find_computers("web1")] == ["web1"]
    assert directory.find_computers("*") == ()
    assert directory.find_computers("a*") == ()  # "abc" exists; * is not a wildcard here
    assert directory.find_computers("web1)(|(cn=*") == ()


def test_members_with_special_characters_in_their_dn_are_read(groups: Groups) -> None:
    for name in (HOSTILE, ODD):
        groups.slapd.ldapmodify(
            f"dn: {groups.monitored}\nchangetype: modify\nadd: member\nmember: {computer_dn(groups.slapd, name)}\n"
        )
    names = {c.name for c in groups.directory().monitored_computers()}
    assert {HOSTILE, ODD} <= names
    directory = groups.directory()
    assert directory.add_protected(computer_dn(groups.slapd, ODD)) is True
    # slapd keeps its own spelling of the DN (\2C for the comma): compare as DNs.
    assert [dn_key(m) for m in directory.protected_members()] == [dn_key(computer_dn(groups.slapd, ODD))]


# -- pure: DN keys and the membership diff ------------------------------------------


def test_dn_key_ignores_case_spaces_and_escape_style() -> None:
    assert dn_key("cn=db\\2C2,ou=Computers, dc=x") == dn_key("CN=DB\\,2,OU=computers,DC=X")
    assert dn_key("cn=a,dc=x") != dn_key("cn=b,dc=x")
    with pytest.raises(DirectoryBadConfig):
        dn_key("not a dn")


def _c(name: str, address: str | None = None, dn: str | None = None) -> Computer:
    return Computer(dn or f"cn={name},dc=x", name, ip_address(address) if address else None)


def test_diff_membership_reports_added_removed_and_changed() -> None:
    before = [_c("a", "10.0.0.1"), _c("b", "10.0.0.2"), _c("c")]
    after = [_c("b", "10.0.0.2"), _c("c", "10.0.0.3"), _c("d"), _c("a2", dn="CN=A2,DC=X")]
    change = diff_membership(before, after)
    assert [c.name for c in change.added] == ["a2", "d"]
    assert [c.name for c in change.removed] == ["a"]
    assert change.changed == (_c("c", "10.0.0.3"),)
    assert not diff_membership(after, list(reversed(after)))
    # A DN spelled differently is the same member.
    assert not diff_membership([_c("a", dn="cn=a,dc=x")], [_c("a", dn="CN=A, DC=X")])


# -- DirectorySync with an injected clock ----------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _reader(results: list[MonitoredRead | DirectoryError], fake: FakeTime) -> Callable[[], MonitoredRead]:
    def read() -> MonitoredRead:
        fake.now += 2.0  # every read takes 2 s
        item = results.pop(0)
        if isinstance(item, DirectoryError):
            raise item
        return item

    return read


def _read(*computers: Computer) -> MonitoredRead:
    return MonitoredRead(tuple(computers), len(computers))


def test_sync_polls_every_interval_reports_changes_and_survives_errors() -> None:
    fake = FakeTime()
    a, b = _c("a", "10.0.0.1"), _c("b")
    outage = DirectoryUnreachable("down")
    results: list[MonitoredRead | DirectoryError] = [_read(a), _read(a), outage, _read(a, b), _read(b)]
    changes: list[MembershipChange] = []
    errors: list[DirectoryError] = []
    sync = DirectorySync(
        _reader(results, fake),
        interval=30,
        on_change=lambda ch, _r: changes.append(ch),
        on_error=errors.append,
        clock=fake.clock,
        sleep=fake.sleep,
    )
    sync.run(lambda: not results)
    assert sync.polls == 5
    assert fake.sleeps == [28.0] * 4  # interval measured from the start of each poll
    assert changes == [
        MembershipChange(added=(a,)),
        MembershipChange(added=(b,)),
        MembershipChange(removed=(a,)),
    ]
    assert errors == [outage]
    assert sync.computers == (b,) and sync.failures == 0


def test_sync_keeps_the_last_good_membership_while_the_directory_fails() -> None:
    fake = FakeTime()
    a = _c("a")
    results: list[MonitoredRead | DirectoryError] = [
        _read(a),
        DirectoryAuthFailed("no"),
        DirectoryAuthFailed("no"),
    ]
    sync = DirectorySync(
        _reader(results, fake), interval=10, on_change=lambda ch, _r: None, clock=fake.clock, sleep=fake.sleep
    )
    assert sync.poll() == MembershipChange(added=(a,))
    assert sync.poll() is None and sync.poll() is None
    assert sync.computers == (a,) and sync.failures == 2


def test_sync_does_not_sleep_when_a_poll_took_longer_than_the_interval() -> None:
    fake = FakeTime()
    results: list[MonitoredRead | DirectoryError] = [_read(), _read(), _read()]
    sync = DirectorySync(
        _reader(results, fake), interval=1, on_change=lambda ch, _r: None, clock=fake.clock, sleep=fake.sleep
    )
    sync.run(lambda: not results)
    assert sync.polls == 3 and fake.sleeps == []
    with pytest.raises(ValueError, match="positive"):
        DirectorySync(lambda: _read(), interval=0, on_change=lambda ch, _r: None)


def test_a_server_that_never_answers_is_unreachable_within_the_operation_timeout(groups: Groups) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts (kernel backlog), never answers
        port = silent.getsockname()[1]
        directory = groups.directory(url=f"ldap://127.0.0.1:{port}", operation_timeout=1.0)
        began = time.monotonic()
        with pytest.raises(DirectoryUnreachable):
            directory.monitored_computers()
    assert time.monotonic() - began < 1.0 + 2.0
