"""``zerogate firewall apply|confirm|rollback|status``: commit-confirmed nftables changes.

The pure parts (which tables a file touches, the restore script) are checked as
text. The rest runs the real CLI under ``ip netns exec`` in a network namespace
per test, with a real OpenSSH server inside it as the management path, so each
test has its own nftables state and nothing touches the host's firewall.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import typer

from zerogate.cli.firewall_apply import EXIT_ROLLED_BACK, _errors
from zerogate.deploy.firewall import RollbackLeftToTarget
from zerogate.deploy.firewall.checks import SshBannerCheck, parse_check_target
from zerogate.deploy.firewall.errors import RulesetError, StateLockedError
from zerogate.deploy.firewall.scope import (
    RulesetScope,
    TableRef,
    nft_scope,
    parse_nft_tables,
    render_nft_restore,
)
from zerogate.deploy.firewall.state import StateStore
from zerogate.deploy.firewall.targets import TIMER_MODULE, is_timer_cmdline
from zerogate.testbed.apps import launch_sshd, netns_launcher
from zerogate.testbed.lab import wait_for

ZEROGATE = str(Path(sys.executable).with_name("zerogate"))
SSHD = "/usr/sbin/sshd"

# ---------------------------------------------------------------------------
# Pure: scope of a ruleset file, restore script, check targets
# ---------------------------------------------------------------------------

RENDERED = """\
# zerogate host firewall
table inet zerogate_host {}
delete table inet zerogate_host
table inet zerogate_host {
  chain input {
    type filter hook input priority 0; policy drop;
    iif "lo" accept comment "loopback { table ip nope }"
    tcp dport 22 accept  # table ip6 alsonope {
  }
}
"""


def test_scope_of_a_rendered_file_is_its_own_table() -> None:
    assert nft_scope(RENDERED) == RulesetScope((TableRef("inet", "zerogate_host"),))


def test_scope_collects_every_table_a_statement_touches() -> None:
    text = (
        "define PORT = 22\n"
        "add table filter\n"  # family omitted: ip
        "add chain filter input { type filter hook input priority 0; }\n"
        "add rule ip6 t6 c tcp dport $PORT accept; delete table bridge old\n"
        'add ct helper inet cth ftp-std { type "ftp" protocol tcp; }\n'
        "table netdev ingress {\n  chain c {}\n}\n"
        "add rule filter input counter\n"
    )
    assert nft_scope(text).tables == (
        TableRef("ip", "filter"),
        TableRef("ip6", "t6"),
        TableRef("bridge", "old"),
        TableRef("inet", "cth"),
        TableRef("netdev", "ingress"),
    )


def test_flush_ruleset_widens_the_scope_to_everything() -> None:
    scope = nft_scope("flush ruleset\ntable inet a { }\n")
    assert scope.whole_ruleset and scope.tables == (TableRef("inet", "a"),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('include "/etc/nftables.d/*.nft"\n', "'include' is not supported"),
        ("# only a comment\n", "defines no table"),
        ("define T = x\ntable inet $T {}\n", "variable ($T)"),
        ("list ruleset\n", "not a ruleset statement"),
        ("table inet a {\n}\n}\n", "without a matching"),
        ('table inet a { comment "open\n', "unterminated string"),
        ("add bogus inet a\n", "unknown object 'bogus'"),
    ],
)
def test_scope_refuses_what_it_cannot_snapshot(text: str, message: str) -> None:
    with pytest.raises(
        RulesetError, match=message.replace("(", r"\(").replace(")", r"\)").replace("$", r"\$")
    ):
        nft_scope(text)


def test_restore_script_recreates_existing_tables_and_deletes_new_ones() -> None:
    scope = RulesetScope((TableRef("inet", "kept"), TableRef("ip", "new")))
    listing = "table inet kept {\n\tchain c {\n\t}\n}\n"
    script = render_nft_restore(
        scope, {TableRef("inet", "kept"): listing, TableRef("ip", "new"): None}, "hdr"
    )
    assert script == (
        "# hdr\n"
        "table inet kept {}\n"
        "delete table inet kept\n"
        "table inet kept {\n\tchain c {\n\t}\n}\n"
        "table ip new {}\n"
        "delete table ip new\n"
    )


def test_restore_script_for_the_whole_ruleset_flushes_first() -> None:
    scope = RulesetScope((), whole_ruleset=True)
    assert (
        render_nft_restore(scope, {TableRef("", ""): "table ip x {\n}\n"})
        == "flush ruleset\ntable ip x {\n}\n"
    )


def test_table_listing_is_parsed() -> None:
    assert parse_nft_tables("table inet zerogate\ntable ip nat\n\n") == {
        TableRef("inet", "zerogate"),
        TableRef("ip", "nat"),
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:22", ("127.0.0.1", 22)), ("[::1]:2222", ("::1", 2222)), ("host", ("host", 22))],
)
def test_check_target_parses(text: str, expected: tuple[str, int]) -> None:
    assert parse_check_target(text) == expected


@pytest.mark.parametrize("text", ["", "h:0", "h:x", "[::1", "h:70000"])
def test_check_target_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="bad check target"):
        parse_check_target(text)


def test_timer_cmdline_must_carry_module_flag_and_token() -> None:
    ours = b"/v/python\0-m\0" + TIMER_MODULE.encode() + b"\0--rollback-timer\0/s\0tok123\0"
    assert is_timer_cmdline(ours, "tok123")
    assert not is_timer_cmdline(ours, "other")
    assert not is_timer_cmdline(b"/usr/bin/sleep\x00tok123\x00", "tok123")


# ---------------------------------------------------------------------------
# Management check and lock against real sockets / files
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def one_shot_server(greeting: bytes) -> Iterator[int]:
    """A TCP server on 127.0.0.1 that sends ``greeting`` to one client, then closes."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(5)

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = srv.accept()
            with conn:
                conn.sendall(greeting)
                time.sleep(0.3)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        srv.close()
        t.join(5)


def test_ssh_check_accepts_a_banner_and_rejects_other_services() -> None:
    with one_shot_server(b"SSH-2.0-Test_1.0\r\n") as port:
        good = SshBannerCheck("127.0.0.1", port, timeout=2).run()
    assert good.ok and "SSH-2.0-Test_1.0" in good.detail
    with one_shot_server(b"HTTP/1.1 400 Bad Request\r\n\r\n") as port:
        bad = SshBannerCheck("127.0.0.1", port, timeout=1).run()
    assert not bad.ok and "without an SSH banner" in bad.detail
    with one_shot_server(b"") as port:
        pass
    refused = SshBannerCheck("127.0.0.1", port, timeout=1).run()
    assert not refused.ok and "no SSH banner" in refused.detail


def test_lock_keeps_a_second_holder_out(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    with store.lock(wait=1):
        with pytest.raises(StateLockedError, match="holds"):
            with StateStore(tmp_path / "state").lock(wait=0.2):
                pass
    with store.lock(wait=0.2):  # released again
        pass
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700


# ---------------------------------------------------------------------------
# Real: the CLI inside a network namespace with sshd as the management path
# ---------------------------------------------------------------------------

needs_root_tools = pytest.mark.skipif(
    os.geteuid() != 0
    or not all(shutil.which(t) for t in ("ip", "nft", "ssh-keygen"))
    or not Path(SSHD).exists(),
    reason="needs root, ip, nft, ssh-keygen and sshd",
)


def run(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=60, check=False)


class Netns:
    """One namespace: nft and zerogate run inside it; the state dir is per test."""

    def __init__(self, name: str, state: Path) -> None:
        self.name, self.state = name, state
        self.ssh_port = 0

    def nft(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.name, "nft", *args, stdin=stdin)

    def listing(self, table: str = "inet zgtest") -> str | None:
        r = self.nft("-s", "list", "table", *table.split())  # -s: counters differ, rules must not
        return r.stdout if r.returncode == 0 else None

    def zg(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(
            "ip", "netns", "exec", self.name, ZEROGATE, "firewall", *args, "--state-dir", str(self.state)
        )

    def apply(self, rules: str, *args: str, check_timeout: str = "2") -> subprocess.CompletedProcess[str]:
        path = self.state.parent / f"rules-{uuid.uuid4().hex[:6]}.nft"
        path.write_text(rules)
        return self.zg(
            "apply",
            str(path),
            "--check-ssh",
            f"127.0.0.1:{self.ssh_port}",
            "--check-timeout",
            check_timeout,
            *args,
        )

    def status(self) -> dict[str, object]:
        r = self.zg("status", "--json")
        assert r.returncode == 0, r.stderr
        data: dict[str, object] = json.loads(r.stdout)
        return data

    def pending(self) -> dict[str, object] | None:
        try:
            data: dict[str, object] = json.loads((self.state / "pending.json").read_text())
        except FileNotFoundError:
            return None
        return data


def kill_timer(pending: dict[str, object] | None) -> None:
    """Teardown: stop a leftover rollback timer, by its recorded PID, if it is really ours."""
    if not pending or not pending.get("timer_pid"):
        return
    pid = int(str(pending["timer_pid"]))
    try:
        if is_timer_cmdline(Path(f"/proc/{pid}/cmdline").read_bytes(), str(pending["token"])):
            os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


@pytest.fixture
def ns(tmp_path: Path) -> Iterator[Netns]:
    """A fresh namespace with lo up and a real sshd on 127.0.0.1 inside it."""
    name = f"zgfa{os.getpid() % 100000}{uuid.uuid4().hex[:4]}"
    assert run("ip", "netns", "add", name).returncode == 0
    sshd: subprocess.Popen[bytes] | None = None
    netns = Netns(name, tmp_path / "state")
    try:
        assert run("ip", "-n", name, "link", "set", "lo", "up").returncode == 0
        sshd = start_sshd(name, tmp_path, port=2222)
        netns.ssh_port = 2222
        yield netns
    finally:
        kill_timer(netns.pending())
        if sshd is not None:
            sshd.terminate()
            try:
                sshd.wait(5)
            except subprocess.TimeoutExpired:
                sshd.kill()
                sshd.wait(5)
        run("ip", "netns", "del", name)


def start_sshd(ns: str, tmp: Path, port: int) -> subprocess.Popen[bytes]:
    """The testbed's sshd (no key accepted: the checks only want its banner) on 127.0.0.1:``port``."""
    return launch_sshd(netns_launcher(ns), tmp / "sshd", IPv4Address("127.0.0.1"), "", port=port).process


def ruleset(port: int, *rules: str, table: str = "zgtest") -> str:
    body = "\n".join(f"    {r}" for r in rules)
    return (
        f"table inet {table} {{}}\ndelete table inet {table}\n"
        f"table inet {table} {{\n  chain input {{\n"
        f"    type filter hook input priority 0; policy accept;\n{body}\n  }}\n}}\n"
    )


PREVIOUS = 'table inet zgtest {\n  chain input {\n    type filter hook input priority 0; policy accept;\n    counter comment "before"\n  }\n}\n'


def keep_ssh(port: int) -> str:
    return ruleset(port, f"tcp dport {port} accept", 'tcp dport 9 drop comment "new rules"')


@needs_root_tools
def test_confirmed_apply_stays_after_the_deadline(ns: Netns) -> None:
    # long enough that a loaded machine still confirms in time: CI saw a CLI start, status and
    # confirm take more than 6 s while other tests loaded both cores
    window = 20
    started = time.monotonic()
    r = ns.apply(keep_ssh(ns.ssh_port), "--confirm-within", str(window))
    assert r.returncode == 0, r.stderr
    assert f"run 'zerogate firewall confirm' within {window} s or it rolls back" in r.stdout
    assert 'comment "new rules"' in (ns.listing() or "")
    st = ns.status()
    assert st["pending"] is True and st["timer_running"] is True and st["tables"] == ["inet zgtest"]
    timer = timer_of(ns)

    c = ns.zg("confirm")
    assert c.returncode == 0, c.stderr
    assert "confirmed" in c.stdout
    wait_for(lambda: not timer_running(*timer), 5, "the timer to stop")
    time.sleep(
        max(0.0, started + window + 0.5 - time.monotonic())
    )  # past the deadline: nothing may roll back
    assert 'comment "new rules"' in (ns.listing() or "")
    st = ns.status()
    assert st["pending"] is False and st["last_outcome"] == "confirmed"
    assert ns.zg("confirm").returncode == 1  # nothing pending any more


@needs_root_tools
def test_unconfirmed_apply_rolls_back_to_the_previous_table(ns: Netns) -> None:
    assert ns.nft("-f", "-", stdin=PREVIOUS).returncode == 0
    before = ns.listing()
    assert before and '"before"' in before

    r = ns.apply(keep_ssh(ns.ssh_port), "--confirm-within", "2")
    assert r.returncode == 0, r.stderr
    applied = time.monotonic()
    assert 'comment "new rules"' in (ns.listing() or "")

    wait_for(lambda: ns.listing() == before, 10, "the timer to restore the previous table")
    assert time.monotonic() - applied > 1.5  # not before the deadline
    st = ns.status()
    assert st["pending"] is False and st["last_outcome"] == "rolled back: not confirmed"
    snapshot = Path(str(st["previous_snapshot"]))
    assert snapshot.stat().st_mode & 0o777 == 0o600
    assert "timer" in (ns.state / "timer.log").read_text()


@needs_root_tools
def test_rules_that_cut_ssh_roll_back_at_once(ns: Netns) -> None:
    other = "table ip bystander {\n  chain c {\n    counter\n  }\n}\n"
    assert ns.nft("-f", "-", stdin=other).returncode == 0
    before = ns.nft("list", "ruleset").stdout

    start = time.monotonic()
    r = ns.apply(ruleset(ns.ssh_port, f"tcp dport {ns.ssh_port} drop"), check_timeout="1")
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "management check failed" in r.stderr and "rolled back" in r.stderr
    # at once: well before the default 60 s confirm window, whatever the machine's load
    # (check timeout 1 s; CI saw 10.8 s for the whole CLI run on a loaded machine)
    assert time.monotonic() - start < 30
    assert ns.listing() is None  # the table did not exist before: it is gone again
    assert ns.nft("list", "ruleset").stdout == before
    st = ns.status()
    assert st["pending"] is False and st["last_outcome"] == "rolled back: management check failed"
    # sshd is reachable again: the same ruleset minus the drop goes through.
    assert ns.apply(keep_ssh(ns.ssh_port), "--no-confirm").returncode == 0


@needs_root_tools
def test_an_apply_killed_before_its_check_ends_still_rolls_back(ns: Netns) -> None:
    """The timer is armed before the rules go live: losing the session mid-apply is safe."""
    path = ns.state.parent / "cut.nft"
    path.write_text(ruleset(ns.ssh_port, f"tcp dport {ns.ssh_port} drop"))
    argv = ["ip", "netns", "exec", ns.name, ZEROGATE, "firewall", "apply", str(path)]
    argv += ["--check-ssh", f"127.0.0.1:{ns.ssh_port}", "--check-timeout", "3", "--state-dir", str(ns.state)]
    # ip netns exec execs zerogate, so this PID is the apply process itself.
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: ns.listing() is not None, 10, "the rules to go live")
        proc.kill()  # as if the SSH session died while the check hangs on the dropped port
        proc.wait(5)
        killed = time.monotonic()
        assert ns.pending() is not None and ns.listing() is not None
        wait_for(lambda: ns.listing() is None, 15, "the timer to roll back")
        assert time.monotonic() - killed < 8
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert ns.status()["last_outcome"] == "rolled back: not confirmed"


@needs_root_tools
@pytest.mark.parametrize(
    "bad",
    [
        "table inet zgtest {\n  chain input {\n    tcp dport 22 acept\n  }\n}\n",  # syntax
        "table inet zgtest {\n  chain input {\n    jump nowhere\n  }\n}\n",  # only the kernel check sees it
    ],
    ids=["syntax", "missing-chain"],
)
def test_invalid_ruleset_is_rejected_and_nothing_changes(ns: Netns, bad: str) -> None:
    assert ns.nft("-f", "-", stdin=PREVIOUS).returncode == 0
    before = ns.nft("list", "ruleset").stdout
    path = ns.state.parent / "bad.nft"
    path.write_text(bad)
    r = ns.zg("apply", str(path), "--check-ssh", f"127.0.0.1:{ns.ssh_port}")
    assert r.returncode == 1
    assert "nothing was changed" in r.stderr and "Error" in r.stderr
    assert f"{path}:3:" in r.stderr  # nft's complaint points at the user's file and line
    assert ns.nft("list", "ruleset").stdout == before
    assert ns.pending() is None
    assert not list(ns.state.glob("*.nft"))


@needs_root_tools
def test_a_pending_apply_blocks_the_next_until_rolled_back(ns: Netns) -> None:
    assert ns.apply(keep_ssh(ns.ssh_port), "--confirm-within", "60").returncode == 0
    second = ns.apply(ruleset(ns.ssh_port, "counter"))
    assert second.returncode == 1
    assert "still pending" in second.stderr and "zerogate firewall confirm" in second.stderr
    assert 'comment "new rules"' in (ns.listing() or "")  # the second one changed nothing

    timer = timer_of(ns)
    rb = ns.zg("rollback")
    assert rb.returncode == 0, rb.stderr
    assert "rolled back" in rb.stdout
    assert ns.listing() is None
    wait_for(lambda: not timer_running(*timer), 5, "the timer to stop")
    assert ns.status()["pending"] is False
    assert ns.apply(ruleset(ns.ssh_port, "counter"), "--no-confirm").returncode == 0


@needs_root_tools
def test_no_confirm_applies_without_a_timer_and_rollback_last_undoes_it(ns: Netns) -> None:
    assert ns.nft("-f", "-", stdin=PREVIOUS).returncode == 0
    before = ns.listing()
    r = ns.apply(keep_ssh(ns.ssh_port), "--no-confirm")
    assert r.returncode == 0, r.stderr
    assert "no confirm timer" in r.stdout
    assert ns.pending() is None and 'comment "new rules"' in (ns.listing() or "")
    plain = ns.zg("rollback")
    assert plain.returncode == 1 and "--last" in plain.stderr
    assert ns.zg("rollback", "--last").returncode == 0
    assert ns.listing() == before


@needs_root_tools
def test_apply_refuses_when_ssh_is_already_unreachable(ns: Netns) -> None:
    r = run(
        "ip", "netns", "exec", ns.name, ZEROGATE, "firewall", "apply", "/dev/null", "--state-dir", str(ns.state)
    )  # fmt: skip
    assert r.returncode == 1 and "defines no table" in r.stderr
    path = ns.state.parent / "ok.nft"
    path.write_text(keep_ssh(ns.ssh_port))
    r = ns.zg("apply", str(path), "--check-ssh", "127.0.0.1:2999", "--check-timeout", "1")
    assert r.returncode == 1
    assert "fails before applying anything" in r.stderr and "--no-check" in r.stderr
    assert ns.listing() is None and ns.pending() is None


def timer_of(ns: Netns) -> tuple[int, str]:
    pending = ns.pending()
    assert pending is not None
    pid, token = int(str(pending["timer_pid"])), str(pending["token"])
    assert timer_running(pid, token)
    return pid, token


def timer_running(pid: int, token: str) -> bool:
    try:
        return is_timer_cmdline(Path(f"/proc/{pid}/cmdline").read_bytes(), token)
    except OSError:
        return False


def test_a_lost_target_names_the_status_command_only_on_the_command_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The engine's message serves the segment server too; the CLI adds its own next step."""
    message = "lost db1 (timed out); the rollback armed there restores it"
    assert "zerogate" not in str(RollbackLeftToTarget(message))
    with pytest.raises(typer.Exit) as exited, _errors():
        raise RollbackLeftToTarget(message)
    assert exited.value.exit_code == EXIT_ROLLED_BACK
    err = " ".join(capsys.readouterr().err.split())
    assert message in err and "'zerogate firewall status' with the same --target shows it" in err
