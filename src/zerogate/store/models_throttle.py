"""Tables of the sign-in throttle shared by the controllers of a deployment (schema 0010).

One narrow row per failed attempt (which source, which account, whether it
counts against the account from every source) and one row per known source of
an account; never the password or code that was tried. Each controller
replays the other controllers' rows into its own in-memory log
(:mod:`zerogate.controller.throttle`), so an attacker spreading guesses over
several controllers is slowed as if there were one, and a restart reloads the
counts. Rows older than the throttle window (known sources: 30 days) are
deleted in the background, and the failure rows are capped overall.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from zerogate.store.models import Base

# 64-bit ids on PostgreSQL; SQLite's rowid alias must be declared INTEGER to autoincrement.
FailureId = BigInteger().with_variant(Integer(), "sqlite")


class ThrottleFailure(Base):
    """One failed sign-in (``kind`` "login") or refused key or code ("key")."""

    __tablename__ = "throttle_failures"
    __table_args__ = (Index("ix_throttle_failures_at", "at"),)
    id: Mapped[int] = mapped_column(FailureId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(8))
    source: Mapped[str] = mapped_column(String(64))
    account: Mapped[str] = mapped_column(String(255), default="")
    account_wide: Mapped[bool] = mapped_column(default=False)  # counts for the account from any source
    at: Mapped[float] = mapped_column()  # wall clock (seconds since the epoch) of the controller
    origin: Mapped[str] = mapped_column(String(32))  # the controller process that wrote it


class ThrottleKnownSource(Base):
    """A source that signed in to an account: exempt from the account-wide limit."""

    __tablename__ = "throttle_known_sources"
    account: Mapped[str] = mapped_column(String(255), primary_key=True)
    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    at: Mapped[float] = mapped_column(index=True)
