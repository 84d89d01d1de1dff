"""Errors of commit-confirmed apply; every message is one line that says what to do.

``FirewallApplyError`` is the base. ``RulesetError`` (bad file, nothing changed),
``PendingApplyError``, ``NothingPendingError`` (and ``ConfirmTooLate``: the rollback
armed on the target already fired), ``StateLockedError``, ``ManagementCheckError``
(path already broken, nothing changed), ``CheckFailedRolledBack`` (and
``RollbackLeftToTarget``: the target cannot be reached, the rollback armed there
restores it at its deadline), ``BackendError`` (the firewall tool failed) and
``TargetUnreachable`` (no answer from an SSH target; whether a command ran is unknown).
"""

from __future__ import annotations


class FirewallApplyError(Exception):
    """Base of every error the commit-confirm engine raises; the message is one line for the user."""


class RulesetError(FirewallApplyError):
    pass


class PendingApplyError(FirewallApplyError):
    pass


class NothingPendingError(FirewallApplyError):
    pass


class ConfirmTooLate(NothingPendingError):
    pass


class StateLockedError(FirewallApplyError):
    pass


class ManagementCheckError(FirewallApplyError):
    pass


class CheckFailedRolledBack(FirewallApplyError):
    pass


class RollbackLeftToTarget(CheckFailedRolledBack):
    pass


class BackendError(FirewallApplyError):
    pass


class TargetUnreachable(FirewallApplyError):
    pass
