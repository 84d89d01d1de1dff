"""Tables for controllers (see the migration of the same name, schema 0011).

``controller_join_secrets``: one row per one-time join secret. Only the
secret's SHA-256 is stored, with the deployment's CA key and certificate
sealed (AES-256-GCM) under a key derived from the secret, so a reader of the
database learns neither. ``used_at`` makes a secret one-time: a join marks it
with a conditional UPDATE, so of two joins with one secret exactly one wins.

``controllers``: one row per controller name, refreshed by its heartbeat; an
admin sees which controllers are up. Bounded: rows unseen for a long time are
deleted, and at most a fixed number of rows is kept.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from zerogate.store.models import Base


class ControllerJoinSecret(Base):
    __tablename__ = "controller_join_secrets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(8))
    salt: Mapped[bytes] = mapped_column(LargeBinary(32))
    nonce: Mapped[bytes] = mapped_column(LargeBinary(12))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary(16384))
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None] = mapped_column(default=None)
    used_by: Mapped[str] = mapped_column(String(255), default="")


class ControllerRow(Base):
    __tablename__ = "controllers"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    url: Mapped[str] = mapped_column(String(300))
    version: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime]
    last_seen: Mapped[datetime] = mapped_column(index=True)
