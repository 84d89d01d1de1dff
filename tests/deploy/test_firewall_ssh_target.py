"""``zerogate firewall apply|confirm|rollback|status --target ssh://...``: commit-confirm on another host.

Pure parts (the target URL, the pinned ``ssh`` command line, the rollback's command
lines and answers) are checked as text. The rest runs the real CLI in one network
namespace (the controlling side) against a real OpenSSH server in another (the
target), joined by a veth pair; nftables state is the target namespace's own.

systemd is not PID 1 on the machines these tests run on (``systemctl
is-system-running`` says ``offline``), and a target in a network namespace other
than PID 1's never uses systemd anyway (a transient unit would run in PID 1's
namespace, the wrong firewall): so the rollback exercised here is the *detached
process* one (``setsid -f sh -c 'sleep N && nft -f SNAPSHOT'``), as the test names say.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from zerogate.deploy.firewall.remote_timer import (
    NAME_PREFIX,
    TimerMode,
    all_timer_names,
    arm_argv,
    cancel_argv,
    detect_argv,
    parse_armed_pid,
    parse_state,
    probe_argv,
    timer_name,
)
from zerogate.deploy.firewall.ssh import DEFAULT_TARGET_DIR, SshAddress, parse_ssh_url, ssh_argv, state_key_of
from zerogate.deploy.firewall.state import stale_files
from zerogate.deploy.firewall.targets import open_target
from zerogate.testbed.apps import launch_sshd, netns_launcher
from zerogate.testbed.lab import wait_for

ZEROGATE = str(Path(sys.executable).with_name("zerogate"))
SSHD = shutil.which("sshd", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/sshd"
CONTROLLER_IP, TARGET_IP = IPv4Address("10.255.5.1"), IPv4Address("10.255.5.2")

# ---------------------------------------------------------------------------
# Pure: target URL, ssh command line, rollback command lines
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ssh://root@192.0.2.10", SshAddress("root", "192.0.2.10", 22, DEFAULT_TARGET_DIR)),
        ("ssh://admin@gw1.example:2222/srv/zg/", SshAddress("admin", "gw1.example", 2222, "/srv/zg")),
        ("ssh://[2001:db8::7]:22", SshAddress("", "2001:db8::7", 22, DEFAULT_TARGET_DIR)),
    ],
)
def test_target_url_parses(text: str, expected: SshAddress) -> None:
    assert parse_ssh_url(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ssh://root@host:99999", "out of range"),
        ("ssh://root:secret@host", "no password"),
        ("ssh://root@-oProxyCommand=x", "no usable host"),
        ("ssh://ro;ot@host", "not a user name"),
        ("ssh://root@host?x=1", "no password, query"),
    ],
)
def test_target_url_rejects_nonsense(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ssh_url(text)


def test_target_names_and_state_dirs() -> None:
    v6 = parse_ssh_url("ssh://root@[2001:db8::7]:2222")
    assert v6.url == "ssh://root@[2001:db8::7]:2222"
    assert state_key_of(v6) == "root@2001_db8__7-2222"


def test_open_target_needs_a_pinned_key_and_a_known_scheme(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--known-hosts"):
        open_target("ssh://root@192.0.2.10", tmp_path)
    with pytest.raises(ValueError, match="use 'local' or ssh://"):
        open_target("root@192.0.2.10", tmp_path)
    with pytest.raises(ValueError, match="no such file"):
        open_target("ssh://root@192.0.2.10", tmp_path, known_hosts=tmp_path / "missing")
    with pytest.raises(ValueError, match="ssh:// --target only"):
        open_target("local", tmp_path, known_hosts=tmp_path / "kh")
    (tmp_path / "kh").write_text("")
    target, store = open_target("ssh://root@192.0.2.10:2222", tmp_path, known_hosts=tmp_path / "kh")
    assert target.name == "ssh://root@192.0.2.10:2222"
    assert store.root == tmp_path.absolute() / "targets" / "root@192.0.2.10-2222"


def test_ssh_command_line_pins_the_host_key_and_quotes_the_command(tmp_path: Path) -> None:
    address = parse_ssh_url("ssh://root@192.0.2.10:2222")
    kh, key = tmp_path / "known hosts", tmp_path / "id"
    argv = ssh_argv(address, kh, key, ["nft", "-f", "/var/lib/x y.nft"])
    pairs = {argv[i + 1] for i, a in enumerate(argv) if a == "-o"}
    assert {"BatchMode=yes", "StrictHostKeyChecking=yes", "GlobalKnownHostsFile=/dev/null"} <= pairs
    assert f'UserKnownHostsFile="{kh}"' in pairs  # quoted: the path has a space
    assert argv[:3] == ["ssh", "-F", "/dev/null"]  # no ssh_config can loosen the pin
    assert argv[argv.index("-i") + 1] == str(key) and "IdentitiesOnly=yes" in pairs
    assert argv[-3:] == ["--", "192.0.2.10", "nft -f '/var/lib/x y.nft'"]


def test_rollback_command_lines() -> None:
    assert timer_name("A1", "applying") == f"{NAME_PREFIX}A1-check"
    assert all_timer_names("A1") == [f"{NAME_PREFIX}A1-check", f"{NAME_PREFIX}A1-confirm"]
    detached = arm_argv("detached", "n", 13, "/d/snap.nft", "/d/m.fired", "/d/n.pid")
    assert detached[:4] == ["setsid", "-f", "sh", "-c"]
    assert detached[5:] == ["n", "13", "/d/snap.nft", "/d/m.fired", "/d/n.pid"]  # data only as arguments
    assert 'sleep "$1"' in detached[4] and 'nft -f "$2"' in detached[4]
    systemd = arm_argv("systemd", "n", 13, "/d/snap.nft", "/d/m.fired", "/d/n.pid")
    assert systemd[0] == "systemd-run" and "--unit=n" in systemd and "--on-active=13s" in systemd
    assert "--timer-property=AccuracySec=100ms" in systemd  # the default (1 min) would fire late
    assert systemd[-3:] == ["n", "/d/snap.nft", "/d/m.fired"]
    assert cancel_argv("detached", "/d", ["n"], "/d/m.fired")[-2:] == ["/d/m.fired", "/d/n.pid"]


@pytest.mark.parametrize("mode", ["detached", "systemd"])
def test_rollback_scripts_are_valid_posix_shell(mode: TimerMode) -> None:
    """``sh -n`` parses every script (the systemd ones cannot run here: no systemd as PID 1)."""
    argvs = [
        arm_argv(mode, "n", 1, "/d/s.nft", "/d/m.fired", "/d/n.pid"),
        cancel_argv(mode, "/d", ["n"], "/d/m.fired"),
        probe_argv(mode, "/d", ["n"], "/d/m.fired"),
        detect_argv(),
    ]
    for argv in argvs:
        script = argv[argv.index("-c") + 1]
        r = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True, check=False)
        assert r.returncode == 0, (script, r.stderr)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("armed 123\n", ("armed", 123)),
        ("armed\n", ("armed", None)),
        ("fired 0\n", ("fired", None)),
        ("fired 1\n", ("failed", None)),
        ("gone\n", ("gone", None)),
        ("cancelled\n", ("cancelled", None)),
    ],
)
def test_rollback_answers_parse(answer: str, expected: tuple[str, int | None]) -> None:
    assert parse_state(answer) == expected


def test_rollback_answers_that_make_no_sense_are_refused() -> None:
    with pytest.raises(ValueError, match="unexpected answer"):
        parse_state("bash: sh: not found")
    with pytest.raises(ValueError, match="did not report"):
        parse_armed_pid("")


def test_stale_files_keep_the_newest_per_kind() -> None:
    names = [f"snapshot-{i}.nft" for i in range(4)] + ["applied-1.nft", "rollback-0.fired", "pending.json"]
    assert stale_files(names, keep=2) == ["snapshot-0.nft", "snapshot-1.nft"]


# ---------------------------------------------------------------------------
# Real: two namespaces, sshd in the target, the CLI in the controlling one
# ---------------------------------------------------------------------------

needs_root_tools = pytest.mark.skipif(
    os.geteuid() != 0
    or not all(shutil.which(t) for t in ("ip", "nft", "ssh", "ssh-keygen", "setsid"))
    or not Path(SSHD).exists(),
    reason="needs root, ip, nft, ssh, ssh-keygen, setsid and sshd",
)


def run(*argv: str, stdin: str | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def descendants(root: int) -> list[int]:
    """PIDs below ``root`` (children first found, then theirs), from /proc's parent links."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        kids = [pid for pid, ppid in parent.items() if ppid in frontier]
        found += kids
        frontier = kids
    return found


def kill_pids(pids: list[int], looks_like: str) -> None:
    """SIGKILL each PID that is still the process we mean (its command line names ``looks_like``)."""
    for pid in pids:
        if any(looks_like in arg for arg in cmdline(pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class Site:
    """The controlling namespace, the target namespace with sshd, and the CLI's options."""

    controller: str
    target: str
    tmp: Path
    key: Path
    known_hosts: Path
    sshd: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ssh://root@{TARGET_IP}:22{self.remote_dir}"

    @property
    def remote_dir(self) -> Path:
        return self.tmp / "on-target"

    @property
    def state(self) -> Path:
        return self.tmp / "state"

    def target_nft(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.target, "nft", *args, stdin=stdin)

    def listing(self) -> str | None:
        r = self.target_nft("-s", "list", "table", "inet", "zgtest")
        return r.stdout if r.returncode == 0 else None

    def zg_argv(self, *args: str) -> list[str]:
        return [
            "ip", "netns", "exec", self.controller, ZEROGATE, "firewall", *args,
            "--target", self.url, "--known-hosts", str(self.known_hosts), "--identity", str(self.key),
            "--state-dir", str(self.state),
        ]  # fmt: skip

    def zg(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(*self.zg_argv(*args))

    def rules_file(self, rules: str) -> Path:
        path = self.tmp / f"rules-{secrets.token_hex(3)}.nft"
        path.write_text(rules)
        return path

    def pending(self) -> dict[str, object] | None:
        path = self.state / "targets" / f"root@{TARGET_IP}-22" / "pending.json"
        try:
            data: dict[str, object] = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        return data

    def status(self) -> dict[str, object]:
        r = self.zg("status", "--json")
        assert r.returncode == 0, r.stderr
        data: dict[str, object] = json.loads(r.stdout)
        return data

    def armed_rollbacks(self) -> list[int]:
        """PIDs of detached rollbacks on the target that are still running (from their pid files)."""
        pids = []
        for pidfile in self.remote_dir.glob(f"{NAME_PREFIX}*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text())
                if pidfile.name.removesuffix(".pid") in cmdline(pid):
                    pids.append(pid)
        return pids


def ip(*args: str) -> None:
    r = run("ip", *args)
    assert r.returncode == 0, f"ip {' '.join(args)}: {r.stderr}"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """Two namespaces joined by a veth pair; sshd with a fresh host key in the target one."""
    sfx = secrets.token_hex(3)
    controller, target = f"zgfw5c{sfx}", f"zgfw5t{sfx}"
    base = tmp_path / "sshd"
    base.mkdir(mode=0o700)
    s = Site(controller, target, tmp_path, base / "client_ed25519", tmp_path / "known_hosts")
    created: list[str] = []
    try:
        for ns in (controller, target):
            ip("netns", "add", ns)
            created.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", controller, "link", "add", f"zgfw5a{sfx}", "type", "veth", "peer", "name", f"zgfw5b{sfx}")
        ip("-n", controller, "link", "set", f"zgfw5b{sfx}", "netns", target)
        for ns, dev, addr in (
            (controller, f"zgfw5a{sfx}", CONTROLLER_IP),
            (target, f"zgfw5b{sfx}", TARGET_IP),
        ):
            ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
        s.sshd = start_sshd(s, base)
        yield s
    finally:
        kill_pids(s.armed_rollbacks(), NAME_PREFIX)
        pending = s.pending()
        if pending and pending.get("timer_pid"):
            kill_pids([int(str(pending["timer_pid"]))], NAME_PREFIX)
        if s.sshd is not None:
            kill_pids(descendants(s.sshd.pid), "sshd")  # sessions of clients that were killed
            s.sshd.terminate()
            try:
                s.sshd.wait(5)
            except subprocess.TimeoutExpired:
                s.sshd.kill()
                s.sshd.wait(5)
        for ns in created:
            run("ip", "netns", "del", ns)


def start_sshd(s: Site, base: Path) -> subprocess.Popen[bytes]:
    """The testbed's sshd (zerogate.testbed.apps): key-only root login, paths below ``base``."""
    r = run(
        "ssh-keygen",
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        "zgfw5-client",
        "-f",
        str(base / "client_ed25519"),
    )
    assert r.returncode == 0, r.stderr
    client = (base / "client_ed25519.pub").read_text()
    started = launch_sshd(netns_launcher(s.target), base, TARGET_IP, client, timeout=10)
    key_type, blob = started.host_public_key.split()[:2]
    s.known_hosts.write_text(f"{TARGET_IP} {key_type} {blob}\n")
    return started.process


def table(*rules: str) -> str:
    body = "\n".join(f"    {r}" for r in rules)
    return (
        "table inet zgtest {}\ndelete table inet zgtest\n"
        "table inet zgtest {\n  chain input {\n"
        f"    type filter hook input priority 0; policy accept;\n{body}\n  }}\n}}\n"
    )


PREVIOUS = 'table inet zgtest {\n  chain input {\n    type filter hook input priority 0; policy accept;\n    counter comment "before"\n  }\n}\n'
KEEP_SSH = table("tcp dport 22 accept", 'tcp dport 9 drop comment "new rules"')
CUT_SSH = table('tcp dport 22 drop comment "cuts ssh"')


def with_previous(s: Site) -> str:
    assert s.target_nft("-f", "-", stdin=PREVIOUS).returncode == 0
    before = s.listing()
    assert before and '"before"' in before
    return before


@needs_root_tools
def test_detached_rollback_fires_on_the_target_after_the_controlling_process_is_killed(site: Site) -> None:
    """SIGKILL the `zerogate firewall apply` mid-window: the detached rollback on the target still fires."""
    before = with_previous(site)
    argv = site.zg_argv("apply", str(site.rules_file(CUT_SSH)), "--check-timeout", "3")
    # ip netns exec execs zerogate, so this PID is the apply process itself.
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[int] = []
    try:
        wait_for(lambda: '"cuts ssh"' in (site.listing() or ""), 30, "the rules to go live on the target")
        live = time.monotonic()
        assert proc.poll() is None, "the apply ended before it could be killed"
        children = descendants(proc.pid)  # its ssh clients, stuck on the cut connection
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(5) == -signal.SIGKILL
        kill_pids(children, "ssh")
        pending = site.pending()
        assert pending is not None and pending["timer"] == "detached" and pending["phase"] == "applying"
        assert site.armed_rollbacks() == [pending["timer_pid"]]  # armed on the target, still waiting

        wait_for(lambda: site.listing() == before, 60, "the target's rollback to restore the snapshot")
        # check timeout 3 s + the SSH target's grace of 10 s, counted from before the rules went live
        assert time.monotonic() - live < 3 + 10 + 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        kill_pids(children, "ssh")
    # The rollback on the target writes nft's exit status once the snapshot is loaded, then ends.
    marker = site.remote_dir / f"rollback-{pending['id']}.fired"
    wait_for(lambda: marker.exists() and site.armed_rollbacks() == [], 5, "the rollback to finish")
    assert marker.read_text().strip() == "0"

    st = site.status()  # the controlling side learns it from the target
    assert st["pending"] is True and st["timer_running"] is False and "already restored" in str(st["warning"])
    late = site.zg("confirm")
    assert late.returncode == 1 and "too late" in late.stderr
    st = site.status()
    assert st["pending"] is False and st["last_outcome"] == "rolled back: not confirmed"


@needs_root_tools
def test_confirm_over_ssh_cancels_the_detached_rollback(site: Site) -> None:
    window = 20  # a loaded CI machine took more than 5 s from apply to status
    r = site.zg(
        "apply", str(site.rules_file(KEEP_SSH)), "--confirm-within", str(window), "--check-timeout", "5"
    )
    applied = time.monotonic()
    assert r.returncode == 0, r.stderr
    assert f"within {window} s or it rolls back" in r.stdout and "SSH login to ssh://root@" in r.stdout
    assert 'comment "new rules"' in (site.listing() or "")
    st = site.status()
    assert st["pending"] is True and st["timer_running"] is True and st["timer"] == "detached"
    armed = site.armed_rollbacks()
    assert armed == [st["timer_pid"]]

    c = site.zg("confirm")
    assert c.returncode == 0, c.stderr
    assert "confirmed" in c.stdout
    assert site.armed_rollbacks() == []
    wait_for(lambda: not any(NAME_PREFIX in arg for arg in cmdline(armed[0])), 5, "the rollback to exit")
    time.sleep(max(0.0, applied + window + 2 - time.monotonic()))  # past the deadline
    assert 'comment "new rules"' in (site.listing() or "")
    assert not list(site.remote_dir.glob("rollback-*.fired"))
    st = site.status()
    assert st["pending"] is False and st["last_outcome"] == "confirmed"


@needs_root_tools
def test_rollback_over_ssh_restores_now_and_cancels_the_detached_rollback(site: Site) -> None:
    before = with_previous(site)
    r = site.zg("apply", str(site.rules_file(KEEP_SSH)), "--confirm-within", "300")
    assert r.returncode == 0, r.stderr
    assert 'comment "new rules"' in (site.listing() or "")
    assert len(site.armed_rollbacks()) == 1
    snapshots = list(site.remote_dir.glob("snapshot-*.nft"))  # kept on the target, 0600
    assert len(snapshots) == 1 and snapshots[0].stat().st_mode & 0o777 == 0o600

    rb = site.zg("rollback")
    assert rb.returncode == 0, rb.stderr
    assert "rolled back" in rb.stdout
    assert site.listing() == before
    assert site.armed_rollbacks() == []
    assert site.status()["last_outcome"] == "rolled back"


@needs_root_tools
def test_a_different_host_key_is_refused_and_nothing_changes(site: Site) -> None:
    other = site.tmp / "other_ed25519"
    assert run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)).returncode == 0
    key_type, blob = other.with_suffix(".pub").read_text().split()[:2]
    site.known_hosts.write_text(f"{TARGET_IP} {key_type} {blob}\n")
    before = with_previous(site)
    r = site.zg("apply", str(site.rules_file(KEEP_SSH)))
    assert r.returncode == 1
    assert "Host key verification failed" in r.stderr
    assert site.listing() == before and site.pending() is None
