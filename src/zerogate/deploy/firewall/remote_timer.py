"""The rollback an SSH target arms for itself: command lines to arm, cancel and probe it (pure).

The target needs no zerogate, only ``nft``, a POSIX ``sh`` and either systemd or
``setsid``. Where systemd is PID 1 *and* the SSH session shares its network
namespace, the rollback is a transient timer unit (``systemd-run --on-active``);
anywhere else it is a detached shell in its own session (``setsid -f sh -c 'sleep N
&& nft -f SNAPSHOT'``) that writes its PID to a file. Either way it runs on the target,
so it fires even if the controlling side dies or loses the connection.

Each armed rollback has a name, ``zerogate-firewall-rollback-<apply id>-<phase>``
(phase ``check`` while the management check runs, ``confirm`` while the apply awaits
confirmation): the unit name, or the detached shell's ``$0`` (checked in
``/proc/PID/cmdline`` before it is signalled). When it fires it writes nft's exit
status to the apply's marker file, which is how the controlling side learns, later,
that it fired. The scripts are constants; every value reaches them as an argument.

A login that may run only ``sudo -n nft -f -`` (the segment server's dedicated
account) arms the detached form with a *loader* argv instead: at fire time the
snapshot is fed to it on stdin (``arm_argv(..., loader=...)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

TimerMode = Literal["systemd", "detached"]
# armed: will fire; fired: restored the snapshot; failed: fired, but nft failed;
# gone: neither armed nor fired (e.g. the target rebooted); cancelled: stopped before firing.
TimerState = Literal["armed", "fired", "failed", "gone", "cancelled"]

NAME_PREFIX = "zerogate-firewall-rollback-"

DETECT_SCRIPT = (
    "if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null 2>&1 && "
    '[ "$(readlink /proc/1/ns/net)" = "$(readlink /proc/self/ns/net)" ]; '
    "then echo systemd; else echo detached; fi"
)

# $1 seconds, $2 snapshot, $3 marker, $4 pid file. Once the snapshot starts loading it
# ignores SIGTERM, so a cancel racing the deadline waits for the marker instead of
# interrupting nft halfway.
_DETACHED_ARM = (
    'echo "$$" > "$4" && echo "$$" && exec </dev/null >/dev/null 2>&1 && sleep "$1" && '
    '{ trap "" HUP INT TERM; nft -f "$2"; echo "$?" > "$3.tmp"; mv -f -- "$3.tmp" "$3"; rm -f -- "$4"; }'
)

# The same, for an account that may only run ``sudo -n nft -f -``: $5... is that loader
# argv, fed the snapshot on stdin at fire time (the segment server's non-root login).
_DETACHED_ARM_STDIN = (
    'd=$1 s=$2 m=$3 p=$4; shift 4; echo "$$" > "$p" && echo "$$" && exec </dev/null >/dev/null 2>&1 && '
    'sleep "$d" && { trap "" HUP INT TERM; "$@" < "$s"; echo "$?" > "$m.tmp"; mv -f -- "$m.tmp" "$m"; '
    'rm -f -- "$p"; }'
)

_MARKER = 'if [ -e "$marker" ]; then echo "fired $(cat -- "$marker")"; exit 0; fi\n'

_OURS = (
    'pid=$(cat -- "$f" 2>/dev/null) || continue\n'
    "name=${f##*/}; name=${name%.pid}\n"
    "ours() { tr '\\000' '\\n' < \"/proc/$pid/cmdline\" 2>/dev/null | grep -qxF -e \"$name\"; }\n"
)

# $1 marker, then the pid files. "kill -TERM -PGID" without "--": dash's kill refuses "--".
# Polled every 20 ms (up to 10 s): a cancel is on every apply's path, most end at once.
_DETACHED_CANCEL = (
    "marker=$1; shift\nfor f do\n" + _OURS + 'i=0\nwhile ours && [ "$i" -lt 500 ]; do\n'
    '[ "$i" = 0 ] && kill -TERM "-$pid" 2>/dev/null\ni=$((i + 1)); sleep 0.02\ndone\n'
    'rm -f -- "$f"\ndone\n' + _MARKER + "echo cancelled\n"
)

_DETACHED_PROBE = (
    "marker=$1; shift\n"
    + _MARKER
    + "for f do\n"
    + _OURS
    + 'ours && { echo "armed $pid"; exit 0; }\ndone\necho gone\n'
)

# $1 snapshot, $2 marker.
_SYSTEMD_FIRE = 'trap "" HUP INT TERM; nft -f "$1"; echo "$?" > "$2.tmp"; mv -f -- "$2.tmp" "$2"'

# $1 marker, then the unit names.
_SYSTEMD_CANCEL = (
    "marker=$1; shift\nfor u do\n"
    'systemctl stop -- "$u.timer" >/dev/null 2>&1\n'
    'i=0\nwhile systemctl is-active --quiet -- "$u.service" && [ "$i" -lt 500 ]; do i=$((i + 1)); sleep 0.02; done\n'
    "done\n" + _MARKER + "echo cancelled\n"
)

_SYSTEMD_PROBE = (
    "marker=$1; shift\n"
    + _MARKER
    + 'for u do\nif systemctl is-active --quiet -- "$u.timer" || systemctl is-active --quiet -- "$u.service"; '
    "then echo armed; exit 0; fi\ndone\necho gone\n"
)


def timer_name(apply_id: str, phase: str) -> str:
    """The armed rollback's name for an apply phase (``applying`` -> check, else confirm)."""
    return f"{NAME_PREFIX}{apply_id}-{'check' if phase == 'applying' else 'confirm'}"


def all_timer_names(apply_id: str) -> list[str]:
    """Every name an apply's rollback can have had: a cancel stops all, orphans included."""
    return [timer_name(apply_id, "applying"), timer_name(apply_id, "awaiting-confirm")]


def marker_path(directory: str, apply_id: str) -> str:
    return f"{directory.rstrip('/')}/rollback-{apply_id}.fired"


def pid_path(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}.pid"


def detect_argv() -> list[str]:
    """Prints ``systemd`` or ``detached``: which way this target arms its rollback."""
    return ["sh", "-c", DETECT_SCRIPT]


def arm_argv(
    mode: TimerMode,
    name: str,
    seconds: int,
    snapshot: str,
    marker: str,
    pidfile: str,
    loader: Sequence[str] = (),
) -> list[str]:
    """Arm ``nft -f snapshot`` to run on the target in ``seconds``; the detached form prints its PID.

    ``loader`` (detached only): the argv that loads a script from stdin instead, e.g.
    ``sudo -n /usr/sbin/nft -f -`` for an account allowed nothing wider.
    """
    if loader:
        if mode != "detached":
            raise ValueError("a stdin loader needs the detached rollback (systemd-run needs root)")
        return ["setsid", "-f", "sh", "-c", _DETACHED_ARM_STDIN, name, str(seconds), snapshot, marker,
                pidfile, *loader]  # fmt: skip
    if mode == "systemd":
        return [
            "systemd-run", "--quiet", "--collect", f"--unit={name}",
            f"--description=zerogate firewall rollback ({name})",
            f"--on-active={seconds}s", "--timer-property=AccuracySec=100ms",
            "--", "sh", "-c", _SYSTEMD_FIRE, name, snapshot, marker,
        ]  # fmt: skip
    return ["setsid", "-f", "sh", "-c", _DETACHED_ARM, name, str(seconds), snapshot, marker, pidfile]


def cancel_argv(mode: TimerMode, directory: str, names: Sequence[str], marker: str) -> list[str]:
    """Stop the named rollbacks (waiting out one that is firing); prints ``cancelled`` or ``fired N``."""
    if mode == "systemd":
        return ["sh", "-c", _SYSTEMD_CANCEL, "zerogate-cancel", marker, *names]
    pidfiles = [pid_path(directory, n) for n in names]
    return ["sh", "-c", _DETACHED_CANCEL, "zerogate-cancel", marker, *pidfiles]


def probe_argv(mode: TimerMode, directory: str, names: Sequence[str], marker: str) -> list[str]:
    """Prints ``armed [PID]``, ``fired N`` or ``gone``."""
    if mode == "systemd":
        return ["sh", "-c", _SYSTEMD_PROBE, "zerogate-probe", marker, *names]
    pidfiles = [pid_path(directory, n) for n in names]
    return ["sh", "-c", _DETACHED_PROBE, "zerogate-probe", marker, *pidfiles]


def parse_armed_pid(output: str) -> int:
    """The PID the detached arm printed; ``ValueError`` if it printed none."""
    text = output.strip()
    if not text.isdigit() or int(text) <= 1:
        raise ValueError(f"the target did not report the rollback's PID (got {text[:60]!r})")
    return int(text)


def parse_state(output: str) -> tuple[TimerState, int | None]:
    """A cancel's or probe's answer: the state and, if armed detached, the PID."""
    words = output.split()
    head = words[0] if words else ""
    arg = words[1] if len(words) > 1 else ""
    if head == "fired":
        return ("fired" if arg == "0" else "failed"), None
    if head == "armed":
        return "armed", int(arg) if arg.isdigit() else None
    if head in ("gone", "cancelled"):
        return ("gone" if head == "gone" else "cancelled"), None
    raise ValueError(f"unexpected answer from the target: {output.strip()[:80]!r}")
