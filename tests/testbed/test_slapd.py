"""The private slapd harness: it starts, answers on loopback only, enforces its ACL, and cleans up."""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import ldap3
import pytest
from ldap3.core.exceptions import LDAPSocketOpenError

from zerogate.testbed.slapd import (
    Slapd,
    SlapdError,
    computer_entry,
    group_entry,
    render_ldif,
    ssha,
)

# One slapd for the module: keep its tests on one xdist worker.
pytestmark = pytest.mark.xdist_group("testbed-slapd")


@pytest.fixture(scope="module")
def slapd() -> Iterator[Slapd]:
    server = Slapd()
    computers = f"ou=computers,{server.suffix}"
    web = computer_entry("web1", computers, address="10.1.0.11")
    server.start([web, group_entry("monitored", f"ou=groups,{server.suffix}", [web[0]])])
    try:
        yield server
    finally:
        server.stop()


def _bind(slapd: Slapd, dn: str, password: str) -> ldap3.Connection:
    conn = ldap3.Connection(
        ldap3.Server("127.0.0.1", port=slapd.port, get_info=ldap3.NONE), dn, password, raise_exceptions=False
    )
    assert conn.bind(), conn.result
    return conn


def _modify(conn: ldap3.Connection, dn: str, changes: dict[str, list[tuple[str, list[str]]]]) -> bool:
    return bool(conn.modify(dn, changes))  # type: ignore[no-untyped-call]  # untyped in types-ldap3


def test_ssha_is_the_salted_sha1_that_slapd_verifies() -> None:
    hashed = ssha("s3cret")
    raw = base64.b64decode(hashed.removeprefix("{SSHA}"))
    digest, salt = raw[:20], raw[20:]
    assert hashed.startswith("{SSHA}") and len(salt) == 8
    assert hashlib.sha1(b"s3cret" + salt).digest() == digest
    assert ssha("s3cret") != hashed  # salted


def test_render_ldif_base64_encodes_values_ldif_cannot_carry() -> None:
    text = render_ldif([("cn=x,dc=t", {"cn": ["x"], "description": [" leading space", "héllo", "plain"]})])
    assert "dn: cn=x,dc=t\n" in text
    assert "description:: " + base64.b64encode(b" leading space").decode() in text
    assert "description:: " + base64.b64encode("héllo".encode()).decode() in text
    assert "description: plain" in text


def test_seeded_entries_are_there_and_visible_to_the_real_ldapsearch(slapd: Slapd) -> None:
    out = slapd.ldapsearch(slapd.suffix, "(objectClass=device)", "cn", "ipHostNumber")
    assert "cn: web1" in out
    groups = slapd.ldapsearch(slapd.groups_dn, "(cn=monitored)", "member")
    assert f"member: cn=web1,{slapd.computers_dn}" in groups


def test_listens_on_loopback_only_and_runs_as_our_own_child(slapd: Slapd) -> None:
    assert slapd.url == f"ldap://127.0.0.1:{slapd.port}/"
    assert slapd.pid is not None
    cmdline = Path(f"/proc/{slapd.pid}/cmdline").read_bytes().split(b"\0")
    assert b"-d" in cmdline and f"ldap://127.0.0.1:{slapd.port}/".encode() in cmdline
    assert Path(f"/proc/{slapd.pid}/status").read_text().count(f"PPid:\t{os.getpid()}") == 1
    if os.geteuid() == 0:
        uid = int(Path(f"/proc/{slapd.pid}/status").read_text().split("Uid:\t")[1].split()[0])
        assert uid == pwd.getpwnam("openldap").pw_uid  # dropped root
    # Only the one loopback listener: no ldapi socket, nothing on other addresses.
    assert not list(Path(slapd.base_dir or "/nonexistent").glob("*ldapi*"))
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.2", slapd.port), timeout=2).close()


def test_acl_anonymous_sees_nothing_reader_reads_only_writer_writes_members(slapd: Slapd) -> None:
    anonymous = ldap3.Connection(ldap3.Server("127.0.0.1", port=slapd.port, get_info=ldap3.NONE))
    anonymous.bind()
    anonymous.search(slapd.suffix, "(objectClass=*)")
    assert anonymous.entries == []

    group = f"cn=monitored,{slapd.groups_dn}"
    extra = f"cn=extra,{slapd.computers_dn}"
    reader = _bind(slapd, slapd.reader.dn, slapd.reader.password)
    reader.search(group, "(objectClass=*)", ldap3.BASE, attributes=["member"])
    assert len(reader.entries) == 1
    assert not _modify(reader, group, {"member": [(ldap3.MODIFY_ADD, [extra])]})
    assert reader.result["result"] == 50  # insufficientAccessRights

    writer = _bind(slapd, slapd.writer.dn, slapd.writer.password)
    assert _modify(writer, group, {"member": [(ldap3.MODIFY_ADD, [extra])]}), writer.result
    assert _modify(writer, group, {"member": [(ldap3.MODIFY_DELETE, [extra])]}), writer.result
    # ... but only group members: not other attributes, not other entries.
    assert not _modify(writer, group, {"description": [(ldap3.MODIFY_REPLACE, ["x"])]})
    assert not _modify(
        writer, f"cn=web1,{slapd.computers_dn}", {"ipHostNumber": [(ldap3.MODIFY_ADD, ["10.9.9.9"])]}
    )


def test_ldapmodify_changes_entries_online(slapd: Slapd) -> None:
    name = "a*)(cn=*"
    slapd.add_entries([computer_entry(name, slapd.computers_dn, address="10.1.0.99")])
    out = slapd.ldapsearch(slapd.computers_dn, "(ipHostNumber=10.1.0.99)", "cn")
    assert f"cn: {name}" in out and out.count("dn: ") == 1
    with pytest.raises(SlapdError, match="ldapmodify"):
        slapd.add_entries([computer_entry(name, slapd.computers_dn, address="10.1.0.99")])  # exists


def test_stop_ends_the_process_frees_the_port_and_removes_the_directory() -> None:
    server = Slapd().start()
    pid, port, base = server.pid, server.port, server.base_dir
    assert base is not None and base.is_dir()
    server.stop()
    server.stop()  # idempotent
    assert base is not None and not base.exists()
    assert pid is not None and not Path(f"/proc/{pid}").exists()
    with pytest.raises(LDAPSocketOpenError):
        ldap3.Connection(ldap3.Server("127.0.0.1", port=port, connect_timeout=2, get_info=ldap3.NONE)).open()
    with pytest.raises(SlapdError, match="not running"):
        _ = server.url


def test_a_failed_start_says_why_and_leaves_nothing_behind(tmp_path: Path) -> None:
    before = set(Path("/tmp").glob("zerogate-slapd-*"))
    bad = ("cn=x,ou=nowhere,dc=zerogate,dc=test", {"objectClass": ["device"], "cn": ["x"]})
    with pytest.raises(SlapdError, match="slapadd"):
        Slapd().start([bad])
    assert set(Path("/tmp").glob("zerogate-slapd-*")) == before


def test_repr_shows_no_password() -> None:
    server = Slapd()
    assert server.root.password not in repr(server)


def test_when_slapd_cannot_start_the_error_carries_its_log(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: slapd's bind fails, probes are refused
        port = taken.getsockname()[1]
        monkeypatch.setattr("zerogate.testbed.slapd.free_port", lambda: port)
        before = set(Path("/tmp").glob("zerogate-slapd-*"))
        with pytest.raises(SlapdError, match="did not start") as failed:
            Slapd().start()
    assert "Address already in use" in str(failed.value)  # the log tail
    assert set(Path("/tmp").glob("zerogate-slapd-*")) == before


def test_a_killed_test_process_leaves_no_slapd_and_no_directory() -> None:
    program = "from zerogate.testbed.slapd import Slapd; s = Slapd().start(); print(s.pid, s.base_dir, flush=True); input()"
    owner = subprocess.Popen(
        [sys.executable, "-c", program], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        pid_text, base_text = owner.stdout.readline().split()
        pid, base = int(pid_text), Path(base_text)
        assert Path(f"/proc/{pid}").exists() and base.is_dir()
    finally:
        owner.kill()  # SIGKILL: no atexit, no finally in that process
        owner.wait()
    deadline = time.monotonic() + 20
    while (Path(f"/proc/{pid}").exists() or base.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling interval, bounded by the deadline
    assert not base.exists()
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
