"""Commit-confirmed firewall apply to a target: snapshot, arm the rollback, apply, check, confirm.

``apply_ruleset`` works in this order, holding the state-directory lock throughout:
copy the file to the target and validate it there (``nft -c -f``), check the
management path, snapshot exactly the tables it touches into a restore script
(validated too), write the *pending* marker, arm the rollback *on the target*,
load the file (``nft -f``, atomic), check the management path again over a fresh
connection. A failed check restores the snapshot at once; a passing one moves the
rollback's deadline to the end of the confirm window, and ``confirm`` cancels it.
The rollback is armed before the new rules go live, so a controlling session that
dies mid-apply (or, for an SSH target, loses the connection) still rolls back.

A target's rollback that fired while nobody watched (an SSH target cannot tell the
controlling side) is noticed and recorded by the next apply, confirm or rollback.
Errors: see :mod:`zerogate.deploy.firewall.errors`.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from zerogate.deploy.firewall.backend import RulesetBackend, backend_for
from zerogate.deploy.firewall.checks import CheckResult, ManagementCheck
from zerogate.deploy.firewall.errors import (
    BackendError,
    CheckFailedRolledBack,
    ConfirmTooLate,
    FirewallApplyError,
    ManagementCheckError,
    NothingPendingError,
    PendingApplyError,
    RollbackLeftToTarget,
    RulesetError,
    TargetUnreachable,
)
from zerogate.deploy.firewall.scope import RulesetScope, TableRef, parse_nft_tables, render_nft_restore
from zerogate.deploy.firewall.ssh_batch import Staged
from zerogate.deploy.firewall.state import Outcome, PendingApply, StateStore
from zerogate.deploy.firewall.targets import StagingTarget, Target

MAX_CONFIRM_WINDOW = 86400.0
NOT_CONFIRMED = "rolled back: not confirmed"


@dataclass
class ApplyResult:
    id: str
    tables: list[str]
    snapshot_file: str
    check: str
    deadline: float | None = None
    confirm_within: float | None = None
    outcome: str = "awaiting-confirm"
    target: str = "local"


def _outcome(p: PendingApply, outcome: str, detail: str = "") -> Outcome:
    return Outcome(p.id, outcome, time.time(), p.tables, p.snapshot_file, p.backend, detail)


def restore(store: StateStore, target: Target, p: PendingApply, outcome: str, detail: str = "") -> None:
    """Load the snapshot, then forget the pending apply (kept pending if the restore fails)."""
    where = "" if target.name == "local" else f" on {target.name}"
    try:
        backend_for(p.backend, target).load(p.snapshot_file)
    except BackendError as exc:
        raise BackendError(
            f"rollback failed: {exc}; the snapshot is {p.snapshot_file}{where} (load it by hand: nft -f FILE)"
        ) from None
    store.clear_pending()
    store.set_last(_outcome(p, outcome, detail))


def _fired_behind_our_back(store: StateStore, target: Target, p: PendingApply) -> bool:
    """Record a rollback that already ran on the target; True if it did (``p`` is then forgotten)."""
    if target.timer_state(p) != "fired":
        return False
    store.clear_pending()
    store.set_last(_outcome(p, NOT_CONFIRMED, f"by the rollback armed on {target.name}"))
    return True


def _new_apply_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(3)}"


def _pre_check(check: ManagementCheck | None) -> None:
    if check is not None and not (pre := check.run()).ok:
        raise ManagementCheckError(
            f"management check fails before applying anything: {pre.detail}; fix it, point "
            "--check-ssh at a working SSH server, or pass --no-check if you have console access"
        )


def _snapshot_header(apply_id: str, scope: RulesetScope) -> str:
    return f"zerogate firewall snapshot before apply {apply_id}: {scope.describe()}"


def _prepare(
    target: Target,
    backend: RulesetBackend,
    source: Path,
    text: str,
    scope: RulesetScope,
    check: ManagementCheck | None,
) -> tuple[str, str, str]:
    """Validate, pre-check and snapshot (nothing changes yet); returns (id, ruleset copy, snapshot)."""
    apply_id = _new_apply_id()
    written: list[str] = []
    try:
        ruleset_file = target.write(f"applied-{apply_id}.nft", text)
        written.append(ruleset_file)
        try:  # the copy: later edits of the user's file cannot sneak in
            backend.validate(ruleset_file)
        except RulesetError as exc:  # nft names the copy; the user knows their own file
            raise RulesetError(str(exc).replace(ruleset_file, str(source))) from None
        _pre_check(check)
        snapshot = backend.snapshot(scope, _snapshot_header(apply_id, scope))
        snapshot_file = target.write(f"snapshot-{apply_id}.nft", snapshot)
        written.append(snapshot_file)
        try:
            backend.validate(snapshot_file)
        except RulesetError as exc:
            raise RulesetError(
                f"the current state would not restore cleanly, so not applying: {exc}"
            ) from None
    except FirewallApplyError:
        with contextlib.suppress(FirewallApplyError):
            target.remove(written)
        raise
    return apply_id, ruleset_file, snapshot_file


def _arm(store: StateStore, target: Target, p: PendingApply) -> PendingApply:
    """Arm the rollback before the rules go live: a killed session mid-apply still rolls back."""
    store.set_pending(p)
    try:
        armed = target.arm(p)
    except (OSError, FirewallApplyError) as exc:
        with contextlib.suppress(FirewallApplyError):  # it may have been armed after all
            target.disarm(p)
        store.clear_pending()
        raise FirewallApplyError(f"cannot arm the rollback ({exc}); nothing was changed") from None
    store.set_pending(armed)
    return armed


def _left_to_target(target: Target, p: PendingApply, what: str, exc: Exception) -> RollbackLeftToTarget:
    return RollbackLeftToTarget(
        f"lost {target.name} {what} ({exc}); the rollback armed there restores the previous state at "
        f"{utc_clock(p.deadline)}"
    )


def apply_ruleset(
    path: Path,
    store: StateStore,
    target: Target,
    check: ManagementCheck | None,
    confirm_within: float | None,
    check_timeout: float = 5.0,
    lock_wait: float = 30.0,
) -> ApplyResult:
    """Apply ``path`` commit-confirmed (``confirm_within=None``: no timer after the check)."""
    if confirm_within is not None and not 0 < confirm_within <= MAX_CONFIRM_WINDOW:
        raise FirewallApplyError(f"--confirm-within must be between 1 and {MAX_CONFIRM_WINDOW:g} seconds")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesetError(f"cannot read {path}: {exc}") from None
    backend = backend_for("nftables", target)
    scope = backend.scope(text)  # parse errors before touching any state
    with store.lock(lock_wait):
        if (p := store.pending()) is not None and not _fired_behind_our_back(store, target, p):
            raise PendingApplyError(
                f"apply {p.id} ({', '.join(p.tables)}) is still pending: run 'zerogate firewall confirm' "
                "or 'zerogate firewall rollback' first"
            )
        if isinstance(target, StagingTarget) and backend.name == "nftables" and not scope.whole_ruleset:
            p = _staged_apply(store, target, path, text, scope, check, check_timeout)
        else:
            apply_id, ruleset_file, snapshot_file = _prepare(target, backend, path, text, scope, check)
            p = _new_pending(
                target, backend.name, apply_id, scope, ruleset_file, snapshot_file, check_timeout
            )
            p = _arm(store, target, p)
            try:
                backend.load(ruleset_file)
            except BackendError as exc:
                target.disarm(p)
                store.clear_pending()
                raise BackendError(f"{exc}; nothing was changed") from None
            except TargetUnreachable as exc:
                raise _left_to_target(target, p, "while loading the rules", exc) from None
        post = check.run() if check is not None else CheckResult(True, "not checked (--no-check)")
        if not post.ok:
            try:
                restore(store, target, p, "rolled back: management check failed", post.detail)
            except TargetUnreachable as exc:
                raise _left_to_target(target, p, f"after the check failed ({post.detail})", exc) from None
            target.disarm(p)
            raise CheckFailedRolledBack(
                f"management check failed after applying ({post.detail}); rolled back to the previous state"
            )
        try:
            return _settle_apply(store, target, p, post.detail, confirm_within)
        except TargetUnreachable as exc:
            raise _left_to_target(target, p, "after the check passed", exc) from None


def _new_pending(
    target: Target, backend: str, apply_id: str, scope: RulesetScope, ruleset_file: str, snapshot_file: str,
    check_timeout: float,
) -> PendingApply:  # fmt: skip
    tables = [str(t) for t in scope.tables] or ["(whole ruleset)"]
    now, token = time.time(), secrets.token_hex(16)
    return PendingApply(
        apply_id, token, backend, tables, scope.whole_ruleset, ruleset_file, snapshot_file,
        now, deadline=now + check_timeout + target.check_grace, target=target.name,
    )  # fmt: skip


def _nft_failed(args: str, output: str, returncode: int) -> str:
    """nft's complaint as :class:`~zerogate.deploy.firewall.backend.NftBackend` words it."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip(" \t^~")]  # drop caret lines
    return f"nft {args} failed: {' | '.join(lines[:3]) or f'exit {returncode}'}"


def _listings(scope: RulesetScope, staged: Staged) -> dict[TableRef, str | None]:
    existing = parse_nft_tables(staged.tables)
    found: dict[TableRef, str | None] = {}
    for ref in scope.tables:
        got = (staged.listings or {}).get((ref.family, ref.name))
        if ref in existing and (got is None or got.rc != 0):
            raise BackendError(_nft_failed(f"list table {ref}", got.text if got else "no answer", -1))
        found[ref] = got.text if ref in existing and got is not None else None
    return found


def _staged_apply(
    store: StateStore, target: StagingTarget, source: Path, text: str, scope: RulesetScope,
    check: ManagementCheck | None, check_timeout: float,
) -> PendingApply:  # fmt: skip
    """The same steps as ``_prepare`` + ``_arm`` + load, in two round trips to the target:
    stage (copy, validate, list), the pre-check, then commit (snapshot, validate it, arm,
    and only once armed load). The pending marker is written before the commit is sent."""
    apply_id = _new_apply_id()
    staged = target.stage(f"applied-{apply_id}.nft", text, [(t.family, t.name) for t in scope.tables])
    rfile, sfile = staged.ruleset_file, target.path_of(f"snapshot-{apply_id}.nft")
    try:
        if staged.invalid is not None:
            failed = _nft_failed(f"-c -f {rfile}", staged.invalid, 1)
            raise RulesetError(f"{failed}; nothing was changed".replace(rfile, str(source)))
        _pre_check(check)
        snapshot = render_nft_restore(scope, _listings(scope, staged), _snapshot_header(apply_id, scope))
    except FirewallApplyError:
        with contextlib.suppress(FirewallApplyError):
            target.remove([rfile])
        raise
    p = target.armed(_new_pending(target, "nftables", apply_id, scope, rfile, sfile, check_timeout), None)
    store.set_pending(p)  # the rollback's name before it is armed: a killed server still finds it
    try:
        done = target.commit(p, snapshot, staged.stale)
    except TargetUnreachable as exc:  # armed and loaded or not: the armed rollback decides
        raise _left_to_target(target, p, "while arming the rollback and loading the rules", exc) from None
    except FirewallApplyError:  # the snapshot could not be written: nothing armed
        store.clear_pending()
        with contextlib.suppress(FirewallApplyError):
            target.remove([rfile, sfile])
        raise
    if done.snapshot_invalid is not None:
        store.clear_pending()
        with contextlib.suppress(FirewallApplyError):
            target.remove([rfile, sfile])
        failed = _nft_failed(f"-c -f {sfile}", done.snapshot_invalid, 1)
        raise RulesetError(f"the current state would not restore cleanly, so not applying: {failed}")
    if done.arm is None or done.arm.rc != 0:
        with contextlib.suppress(FirewallApplyError):  # it may have been armed after all
            target.disarm(p)
        store.clear_pending()
        reason = (done.arm.text.strip().splitlines() or ["no answer"])[-1] if done.arm else "no answer"
        raise FirewallApplyError(f"cannot arm the rollback ({reason}); nothing was changed")
    with contextlib.suppress(BackendError):  # no PID we could read: cancel and probe find it by name
        p = target.armed(p, done.arm.text)
    store.set_pending(p)
    if done.load is None:
        raise _left_to_target(target, p, "while loading the rules", TargetUnreachable("no answer")) from None
    if done.load.rc != 0:
        target.disarm(p)
        store.clear_pending()
        raise BackendError(f"{_nft_failed(f'-f {rfile}', done.load.text, done.load.rc)}; nothing was changed")
    return p


def _settle_apply(
    store: StateStore, target: Target, p: PendingApply, check_detail: str, confirm_within: float | None
) -> ApplyResult:
    """The check passed: keep the rules (no confirm) or move the rollback to the confirm deadline."""
    result = ApplyResult(p.id, p.tables, p.snapshot_file, check_detail, target=target.name)
    try:
        if confirm_within is None:
            if target.disarm(p) in ("fired", "failed"):
                raise ConfirmTooLate(f"the rollback armed on {target.name} fired before the apply finished")
            store.clear_pending()
            store.set_last(_outcome(p, "applied (no confirm)", check_detail))
            result.outcome = "applied"
        else:
            deadline = time.time() + confirm_within
            moved = target.rearm(p, replace(p, phase="awaiting-confirm", deadline=deadline))
            store.set_pending(moved)
            result.deadline, result.confirm_within = moved.deadline, confirm_within
    except ConfirmTooLate as exc:
        store.clear_pending()
        store.set_last(_outcome(p, NOT_CONFIRMED, str(exc)))
        raise CheckFailedRolledBack(f"{exc}; the previous state is back") from None
    if not isinstance(target, StagingTarget):  # a staging target pruned while staging
        with contextlib.suppress(FirewallApplyError):
            target.prune()
    return result


def confirm(store: StateStore, target: Target, lock_wait: float = 30.0) -> PendingApply:
    """Keep the pending apply: cancel its rollback on the target and drop the marker."""
    with store.lock(lock_wait):
        p = store.pending()
        if p is None:
            raise NothingPendingError(_nothing_pending(store))
        if target.disarm(p) == "fired":
            store.clear_pending()
            store.set_last(_outcome(p, NOT_CONFIRMED, f"by the rollback armed on {target.name}"))
            raise ConfirmTooLate(
                f"too late: the rollback armed on {target.name} already restored {', '.join(p.tables)} "
                f"(deadline {utc_clock(p.deadline)}); apply the ruleset again"
            )
        store.clear_pending()
        store.set_last(_outcome(p, "confirmed"))
        return p


def rollback(
    store: StateStore,
    target: Target,
    token: str | None = None,
    last: bool = False,
    lock_wait: float = 30.0,
) -> str | None:
    """Restore the pending apply's snapshot now (or, with ``last``, the last apply's).

    With ``token`` only the pending apply holding it is rolled back; returns ``None`` when it
    is gone (already confirmed or rolled back) instead of raising.
    """
    with store.lock(lock_wait):
        p = store.pending()
        if p is not None and (token is None or p.token == token):
            restore(store, target, p, "rolled back" if token is None else NOT_CONFIRMED)
            target.disarm(p)
            return f"rolled back apply {p.id}: {', '.join(p.tables)} restored from {p.snapshot_file}"
        if token is not None:
            return None
        o = store.last()
        if o is None or not last:
            hint = "; pass --last to restore the state from before the last apply" if o else ""
            raise NothingPendingError(_nothing_pending(store) + hint)
        backend_for(o.backend, target).load(o.snapshot_file)
        store.set_last(replace(o, outcome="rolled back (--last)", at=time.time()))
        return f"restored the state from before apply {o.id}: {', '.join(o.tables)} from {o.snapshot_file}"


def _nothing_pending(store: StateStore) -> str:
    o = store.last()
    tail = f" (last apply {o.id}: {o.outcome} at {utc_clock(o.at)})" if o else ""
    return f"no apply is pending in {store.root}{tail}"


def utc_clock(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def status(store: StateStore, target: Target) -> dict[str, object]:
    """What is pending (if anything), its deadline and rollback, and the last outcome."""
    p = store.pending() if store.root.exists() else None
    o = store.last() if store.root.exists() else None
    data: dict[str, object] = {"state_dir": str(store.root), "pending": p is not None, "target": target.name}
    if p is not None:
        data.update(
            id=p.id, phase=p.phase, tables=p.tables, applied_at=utc_clock(p.applied_at),
            deadline=utc_clock(p.deadline), seconds_left=max(0, round(p.deadline - time.time())),
            timer_pid=p.timer_pid, snapshot_file=p.snapshot_file, ruleset_file=p.ruleset_file,
        )  # fmt: skip
        if p.timer != "process":
            data.update(timer=p.timer, timer_unit=p.timer_unit)
        data.update(_timer_report(target, p))
    if o is not None:
        data.update(
            last_id=o.id, last_outcome=o.outcome, last_at=utc_clock(o.at), last_tables=o.tables,
            previous_snapshot=o.snapshot_file,
        )  # fmt: skip
    return data


def _timer_report(target: Target, p: PendingApply) -> dict[str, object]:
    try:
        state = target.timer_state(p)
    except FirewallApplyError as exc:
        return {"timer_running": None, "warning": f"cannot ask the target about the rollback: {exc}"}
    report: dict[str, object] = {"timer_running": state == "armed"}
    if state == "fired":
        report["warning"] = (
            f"the rollback armed on {target.name} already restored the previous state (not confirmed "
            "in time); the next apply, confirm or rollback records it"
        )
    elif state == "failed":
        report["warning"] = (
            f"the rollback armed on {target.name} ran but nft failed: load {p.snapshot_file} there by "
            "hand (nft -f FILE), then run 'zerogate firewall rollback' or 'confirm'"
        )
    elif state != "armed":
        report["warning"] = "the rollback timer is not running: run 'zerogate firewall confirm' or 'rollback'"
    return report
