"""The steps of one SSH apply as two constant scripts, one SSH round trip each (pure).

Over SSH the cost of an apply is the number of ``ssh`` runs (each one a client
process here and a session, a shell and PAM on the target), not the work done on
the target. So the engine (:mod:`zerogate.deploy.firewall.commit`) asks an SSH
target for two batched steps instead of one command per step:

1. *stage* (stdin: the ruleset): write the ruleset copy, validate it (``nft -c``),
   detect how the rollback is armed (when not known yet), list the tables the apply
   touches and the target directory (for pruning). Changes nothing but files.
2. *commit* (stdin: the snapshot): write the snapshot, validate it (``nft -c``), remove
   stale files, arm the rollback, and -- only once the rollback is armed -- load the
   ruleset (``nft -f``, atomic). Each step runs only if the one before succeeded.

The scripts print sections (``@name`` ... ``@rc N``) that :func:`parse_sections`
reads; every value reaches them as an argument. ``$1`` is 1 when nft runs as
``sudo -n NFT ... -f -`` fed from the file (a non-root login allowed nothing wider),
``$2`` the nft command. The check stays outside, over a fresh connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from zerogate.deploy.firewall.remote_timer import DETECT_SCRIPT

_NFT_HELPERS = (
    'nftf() { f=$1; shift; if [ "$z" = 1 ]; then sudo -n "$n" "$@" -f - < "$f"; else "$n" "$@" -f "$f"; fi; }\n'
    'nftp() { if [ "$z" = 1 ]; then sudo -n "$n" "$@"; else "$n" "$@"; fi; }\n'
)

# $1 sudo flag, $2 nft, $3 directory, $4 ruleset copy, $5 1 = detect the timer mode, then
# family/name pairs of the tables to list. stdin: the ruleset.
STAGE_SCRIPT = (
    "z=$1 n=$2 d=$3 r=$4 m=$5; shift 5\n" + _NFT_HELPERS + "echo @write\n"
    '{ umask 077 && mkdir -p -- "$d" && cat > "$r.tmp" && mv -f -- "$r.tmp" "$r"; } 2>&1\n'
    'rc=$?; echo "@rc $rc"; [ "$rc" = 0 ] || exit 0\n'
    'echo @check; nftf "$r" -c 2>&1; rc=$?; echo "@rc $rc"; [ "$rc" = 0 ] || exit 0\n'
    'if [ "$m" = 1 ]; then echo @mode; ' + DETECT_SCRIPT + '; echo "@rc 0"; fi\n'
    'echo @tables; nftp list tables 2>&1; echo "@rc $?"\n'
    'while [ "$#" -ge 2 ]; do echo "@table $1 $2"; nftp list table "$1" "$2" 2>&1; echo "@rc $?"; shift 2; done\n'
    'echo @ls; ls -1 -- "$d" 2>&1; echo "@rc $?"\n'
)

# $1 sudo flag, $2 nft, $3 snapshot, $4 ruleset copy, $5 how many stale files follow, then
# those files, then the argv that arms the rollback. stdin: the snapshot. The arm's output
# is taken whole ($(...) waits until the detached rollback closed its stdout) so its PID
# lands in its own section.
COMMIT_SCRIPT = (
    "z=$1 n=$2 s=$3 r=$4 k=$5; shift 5\n" + _NFT_HELPERS + "echo @write\n"
    '{ umask 077 && cat > "$s.tmp" && mv -f -- "$s.tmp" "$s"; } 2>&1\n'
    'rc=$?; echo "@rc $rc"; [ "$rc" = 0 ] || exit 0\n'
    'echo @check; nftf "$s" -c 2>&1; rc=$?; echo "@rc $rc"; [ "$rc" = 0 ] || exit 0\n'
    'while [ "$k" -gt 0 ]; do rm -f -- "$1"; shift; k=$((k - 1)); done\n'
    'echo @arm; out=$("$@" 2>&1); rc=$?; printf "%s\\n@rc %s\\n" "$out" "$rc"; [ "$rc" = 0 ] || exit 0\n'
    'echo @load; nftf "$r" 2>&1; echo "@rc $?"\n'
)


def stage_argv(
    sudo: bool, nft: str, directory: str, ruleset: str, detect: bool, tables: Sequence[tuple[str, str]]
) -> list[str]:
    pairs = [word for family, name in tables for word in (family, name)]
    flags = ["1" if sudo else "0", nft, directory, ruleset, "1" if detect else "0"]
    return ["sh", "-c", STAGE_SCRIPT, "zerogate-stage", *flags, *pairs]


def commit_argv(
    sudo: bool, nft: str, snapshot: str, ruleset: str, stale: Sequence[str], arm: Sequence[str]
) -> list[str]:
    flags = ["1" if sudo else "0", nft, snapshot, ruleset, str(len(stale))]
    return ["sh", "-c", COMMIT_SCRIPT, "zerogate-commit", *flags, *stale, *arm]


@dataclass(frozen=True)
class Section:
    text: str
    rc: int


def parse_sections(output: str) -> dict[str, Section]:
    """``@name`` ... ``@rc N`` blocks by name (the rest of the ``@`` line); an unfinished
    block (the script was cut off) is left out."""
    found: dict[str, Section] = {}
    name: str | None = None
    lines: list[str] = []
    for line in output.splitlines():
        if name is None:
            if line.startswith("@") and not line.startswith("@rc "):
                name, lines = line[1:].strip(), []
            continue
        if line.startswith("@rc "):
            rc = line[4:].strip()
            found[name] = Section("\n".join(lines) + ("\n" if lines else ""), int(rc) if rc.isdigit() else -1)
            name = None
        else:
            lines.append(line)
    return found


@dataclass(frozen=True)
class Staged:
    """What the stage step found: the ruleset copy's path, nft's complaint about it (``None``:
    valid), ``nft list tables``, each requested table's listing and the stale files to prune."""

    ruleset_file: str
    invalid: str | None
    tables: str = ""
    listings: dict[tuple[str, str], Section] | None = None
    stale: tuple[str, ...] = ()


@dataclass(frozen=True)
class Committed:
    """How the commit step ended; each later field is only set when the step before succeeded.

    ``snapshot_invalid``: nft refused the snapshot (nothing armed, nothing loaded);
    ``arm``: the arm's section (``None``: no answer); ``load``: the load's (``None``: no answer,
    so whether the rules went live is unknown)."""

    snapshot_invalid: str | None
    arm: Section | None = None
    load: Section | None = None
