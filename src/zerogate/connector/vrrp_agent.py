"""keepalived as the connector's child, its notify FIFO, and the gateway messages.

One thread (:meth:`VrrpAgent.run`) owns the keepalived process: it starts it,
reloads it (SIGHUP) when the rendered config changes, restarts it with backoff
when it dies, and stops it when the group loses its virtual IP. It is started
with the parent-death signal set to SIGTERM, so a connector that dies (even by
SIGKILL) takes keepalived with it: keepalived then gives up the VIP and sends a
priority-0 advertisement, and the backup takes over at once. A keepalived
holding the VIP for a dead connector would be worse: the gateway would no
longer hear from it and the LAN would still send it the return traffic.

The same thread reads keepalived's notify FIFO. On every transition it logs
one line and sends :class:`~zerogate.model.vrrp.VrrpState` to each gateway's
tunnel address from our own tunnel address (so the gateway trusts it through
WireGuard's cryptokey routing), and repeats a master claim every
:data:`~zerogate.model.vrrp.REPEAT_EVERY` seconds.

The daemon writes the tunnel's health into a keepalived ``track_file``
(:meth:`VrrpAgent.set_tunnel`): a connector whose tunnel is down goes to
FAULT and gives up the VIP, since it could not forward anything anyway.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import select
import signal
import socket
import stat
import subprocess
import threading
import time
from datetime import UTC, datetime
from ipaddress import IPv4Address
from pathlib import Path
from typing import IO, Any

from zerogate.agent.backoff import Backoff
from zerogate.connector.vrrp import (
    CONF_NAME,
    FIFO_NAME,
    PID_NAME,
    STATE_NAME,
    TRACK_NAME,
    VRRP_PID_NAME,
    VrrpConfig,
    VrrpConfigError,
    VrrpOptions,
    build_config,
    parse_notify,
    render_keepalived,
)
from zerogate.model.vrrp import REPEAT_EVERY, STATE_PORT, VrrpState, VrrpStateName, encode
from zerogate.netops.command import CommandError, require, spawn
from zerogate.netops.files import write_private

log = logging.getLogger(__name__)

STOP_WAIT = 5.0  # seconds keepalived gets to release the VIP before SIGKILL
STEADY_AFTER = 30.0  # a keepalived that ran this long resets the restart backoff
TICK = 0.1  # supervision granularity; FIFO lines are read as they come
_LOG_PREFIX = re.compile(rb"^[A-Z][a-z]{2} [A-Z][a-z]{2} [ 0-9]{2} [0-9:]{8} [0-9]{4}: ")
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: the child only calls it


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class VrrpAgent:
    """keepalived for this connector's group (see the module docstring)."""

    def __init__(self, state_dir: Path, options: VrrpOptions) -> None:
        self.state_dir = Path(os.path.abspath(state_dir))  # keepalived's config wants absolute paths
        self.options = options
        self.lock = threading.Lock()  # the fields the daemon sets
        self.proc_lock = threading.RLock()  # the process: the loop and shutdown() both stop it
        self.group: str | None = None
        self.wanted: VrrpConfig | None = None
        self.problem: str | None = None  # why keepalived does not run although the group has a VIP
        self.source: IPv4Address | None = None  # our tunnel address
        self.gateways: tuple[IPv4Address, ...] = ()
        self.tunnel_ok: bool | None = None
        self.closed = False
        self.proc: subprocess.Popen[bytes] | None = None
        self.running: str | None = None  # the config text the running keepalived has
        self.started_at = 0.0
        self.next_start = 0.0
        self.backoff = Backoff(first=1.0, cap=30.0)
        self.state = "stopped"  # keepalived's own word: MASTER BACKUP FAULT STOP, or stopped
        self.seq = 0
        self.next_repeat = 0.0
        self.send_warned = False

    # -- called by the daemon

    def configure(
        self,
        group: str,
        vip: IPv4Address | None,
        tunnel_address: IPv4Address | None,
        gateways: tuple[IPv4Address, ...],
    ) -> None:
        """The group's VIP from a new snapshot (None: no VRRP); keepalived follows within a tick."""
        wanted, problem = None, None
        if vip is not None:
            try:
                wanted = build_config(group, vip, self.options, self.state_dir)
            except (VrrpConfigError, CommandError) as exc:
                problem = str(exc)
        with self.lock:
            if problem and problem != self.problem:
                log.error("VRRP for group %s cannot run: %s", group, problem)
            self.wanted, self.problem, self.group = wanted, problem, group
            self.source, self.gateways = tunnel_address, gateways

    def set_tunnel(self, up: bool) -> None:
        """The tunnel's health for keepalived's track file (down: FAULT, VIP given up)."""
        with self.lock:
            if up == self.tunnel_ok:
                return
            self.tunnel_ok = up
            if self.wanted is None:
                return  # written when keepalived starts
            self._write_track()
        if self.proc is not None:
            log.info("VRRP: tunnel %s: %s", "up" if up else "down", "eligible for master" if up else "FAULT")

    def _write_track(self) -> None:
        write_private(self.state_dir / TRACK_NAME, "0\n" if self.tunnel_ok else "1\n")

    def report(self) -> dict[str, Any] | None:
        """The ``vrrp`` part of the report's details (None: the group has no VIP)."""
        with self.lock:
            cfg = self.wanted
            if cfg is None and self.problem is None:
                return None
            state = {"STOP": "stopped", "DELETED": "stopped"}.get(self.state, self.state.lower())
            return {
                "state": state if cfg else "error",
                "virtual_ip": str(cfg.virtual_ip) if cfg else None,
                "interface": cfg.interface if cfg else None,
                "router_id": cfg.router_id if cfg else None,
                "problem": self.problem[:400] if self.problem else None,
            }

    def shutdown(self) -> None:
        """Stop keepalived (it releases the VIP) and withdraw a master claim; for
        a clean stop and a revocation. The agent stays stopped."""
        with self.lock:
            self.closed, self.wanted = True, None
        self._stop_process("connector stopping")

    def release(self) -> None:
        """No VRRP any more (revocation): like :meth:`shutdown` but the loop keeps
        running, and a later snapshot with a VIP starts keepalived again."""
        with self.lock:
            self.wanted = None
        self._stop_process("no virtual IP")

    # -- the thread

    def run(self, stop: threading.Event) -> None:
        fd = self._open_fifo()
        pending = b""
        try:
            while not stop.is_set() and not self.closed:
                self._supervise(time.monotonic())
                ready, _, _ = select.select([fd], [], [], TICK)
                if ready:
                    try:
                        chunk = os.read(fd, 4096)
                    except BlockingIOError:
                        chunk = b""
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    pending = pending[-512:]
                    for line in lines:
                        self._on_line(line)
                if self.state == "MASTER" and time.monotonic() >= self.next_repeat:
                    self._send("master")
        finally:
            os.close(fd)
            if stop.is_set() or self.closed:
                self._stop_process("connector stopping")

    def _open_fifo(self) -> int:
        """Our own FIFO (0600), held open read-write so it never reads end-of-file
        while keepalived restarts."""
        path = self.state_dir / FIFO_NAME
        try:
            if not stat.S_ISFIFO(path.lstat().st_mode):
                path.unlink()
                os.mkfifo(path, 0o600)
        except FileNotFoundError:
            os.mkfifo(path, 0o600)
        return os.open(path, os.O_RDWR | os.O_NONBLOCK)

    def _on_line(self, line: bytes) -> None:
        n = parse_notify(line)
        cfg = self.wanted
        if n is None or cfg is None or n.instance != cfg.instance or n.state == self.state:
            return
        before, self.state = self.state, n.state
        log.info(
            "VRRP group %s: %s -> %s, virtual IP %s on %s",
            cfg.group,
            before.upper(),
            n.state,
            cfg.virtual_ip,
            cfg.interface,
        )
        self.seq += 1
        self._save_state(cfg)
        self._send(n.vrrp_state)

    def _save_state(self, cfg: VrrpConfig | None) -> None:
        doc = {
            "state": self.state,
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
            "virtual_ip": str(cfg.virtual_ip) if cfg else None,
            "interface": cfg.interface if cfg else None,
            "router_id": cfg.router_id if cfg else None,
            "config": str(self.state_dir / CONF_NAME),
        }
        try:
            write_private(self.state_dir / STATE_NAME, json.dumps(doc) + "\n")
        except OSError as exc:
            log.warning("cannot record the VRRP state: %s", exc)

    def _send(self, state: VrrpStateName) -> None:
        """One datagram to each gateway, from our tunnel address."""
        self.next_repeat = time.monotonic() + REPEAT_EVERY
        with self.lock:
            group, source, gateways = self.group, self.source, self.gateways
        if group is None or source is None or not gateways:
            return
        body = encode(VrrpState(group, state, self.seq))
        for gw in gateways:
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind((str(source), 0))
                    s.sendto(body, (str(gw), STATE_PORT))
            except OSError as exc:
                (log.debug if self.send_warned else log.warning)(
                    "cannot send the VRRP state to gateway %s: %s", gw, exc
                )
                self.send_warned = True

    # -- the process

    def _supervise(self, now: float) -> None:
        with self.proc_lock:
            self._supervise_locked(now)

    def _supervise_locked(self, now: float) -> None:
        with self.lock:
            cfg = self.wanted
        proc = self.proc
        if cfg is None:
            if proc is not None:
                self._stop_process("no virtual IP")
            return
        text = render_keepalived(cfg)
        if proc is not None and proc.poll() is not None:
            log.warning("keepalived exited (%s); restarting it", proc.returncode)
            self.proc, self.running = None, None
            self._lost_state(cfg)
            if now - self.started_at >= STEADY_AFTER:
                self.backoff.reset()
            self.next_start = now + self.backoff.next()
            return
        if self.proc is None:
            if now >= self.next_start:
                self._start(cfg, text, now)
        elif text != self.running:
            write_private(self.state_dir / CONF_NAME, text)
            self.running = text
            log.info("keepalived config changed: reloading it (%s)", self.state_dir / CONF_NAME)
            with _suppress_gone():
                self.proc.send_signal(signal.SIGHUP)

    def _start(self, cfg: VrrpConfig, text: str, now: float) -> None:
        d = self.state_dir
        try:
            write_private(d / CONF_NAME, text)
            with self.lock:
                self._write_track()
            files = ["-f", d / CONF_NAME, "-p", d / PID_NAME, "-r", d / VRRP_PID_NAME]
            argv = [require("keepalived", "keepalived"), "-n", "-l", "-D", "--vrrp", *map(str, files)]
            self.proc = spawn(argv, stdout=subprocess.PIPE, preexec_fn=_die_with_parent)
        except (OSError, CommandError) as exc:
            log.error("cannot start keepalived: %s", exc)
            self.next_start = now + self.backoff.next()
            return
        self.running, self.started_at = text, now
        log.info(
            "keepalived started (pid %d) for group %s: virtual IP %s on %s, router id %d, priority %d",
            self.proc.pid,
            cfg.group,
            cfg.virtual_ip,
            cfg.interface,
            cfg.router_id,
            cfg.priority,
        )
        assert self.proc.stdout is not None
        threading.Thread(target=_pump, args=(self.proc.stdout,), name="keepalived-log", daemon=True).start()

    def _stop_process(self, why: str) -> None:
        with self.proc_lock:
            self._stop_locked(why)

    def _stop_locked(self, why: str) -> None:
        proc, self.proc, self.running = self.proc, None, None
        if proc is None:
            return
        with _suppress_gone():
            proc.terminate()
        try:
            proc.wait(timeout=STOP_WAIT)
        except subprocess.TimeoutExpired:
            log.warning("keepalived (pid %d) did not stop within %.0f s: killing it", proc.pid, STOP_WAIT)
            proc.kill()
            proc.wait(timeout=10)
        log.info("keepalived stopped (%s); virtual IP released", why)
        self._lost_state(self.wanted)

    def _lost_state(self, cfg: VrrpConfig | None) -> None:
        """keepalived is gone: whatever it held, we hold nothing now."""
        was_master = self.state == "MASTER"
        self.state = "stopped"
        self._save_state(cfg)
        if was_master:
            self.seq += 1
            self._send("backup")


class _suppress_gone:
    def __enter__(self) -> None:
        return None

    def __exit__(self, et: type[BaseException] | None, *_: object) -> bool:
        return et is not None and issubclass(et, ProcessLookupError)


def _pump(out: IO[bytes]) -> None:
    """keepalived's console log into ours, one line at a time, its date stripped."""
    for raw in out:
        line = _LOG_PREFIX.sub(b"", raw.rstrip()).decode("utf-8", errors="replace")
        if line:
            log.info("keepalived: %s", line[:500])
    out.close()
