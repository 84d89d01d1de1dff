"""The audit log's anchor outside the database: the MAC key and the checkpoint file.

The key is derived (HKDF-SHA256) from the deployment CA's private key, which
lives in the data directory and never in the database. Every controller of a
deployment holds the same CA key, so records written by any of them verify
on all of them, and an attacker with only database access cannot make a MAC.

After every committed write that appended records, the controller appends a
checkpoint line ``{"id", "hash", "mac", "at"}`` to ``audit-anchor.jsonl`` in
its data directory (0600, opened O_APPEND, one write per line). Verification
then knows how long the log was and what its records were, whatever the
database says now. Each controller keeps its own file; the checkpoints of one
controller cover the writes it made.

Errors: :class:`AnchorError` when the CA key cannot give a key; OSError from
file access is left to the caller (a write that committed must not fail
because its checkpoint could not be written: the caller logs it).
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from zerogate.model.audit import Checkpoint, record_mac

ANCHOR_FILE = "audit-anchor.jsonl"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class AnchorError(Exception):
    """The CA key cannot be used to derive the audit key."""


def audit_key_from_ca_key(ca_key_pem: bytes) -> bytes:
    """32 bytes for the audit MAC, from the CA private key's scalar (not its PEM
    text, so re-encoding the key file does not change the key)."""
    try:
        key = serialization.load_pem_private_key(ca_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise AnchorError(f"the CA key cannot be read: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise AnchorError("the CA key is not an EC key")
    scalar = key.private_numbers().private_value.to_bytes((key.curve.key_size + 7) // 8, "big")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"zerogate audit-log MAC v1").derive(
        scalar
    )


class AuditAnchor:
    """One controller's audit key and checkpoint file."""

    def __init__(self, key: bytes, path: Path) -> None:
        self.key = key
        self.path = path

    @classmethod
    def for_data_dir(cls, data_dir: Path, ca_key_pem: bytes) -> AuditAnchor:
        return cls(audit_key_from_ca_key(ca_key_pem), data_dir / ANCHOR_FILE)

    def mac(self, record_hash: str) -> str:
        return record_mac(self.key, record_hash)

    def checkpoint(self, record_id: int, record_hash: str) -> None:
        """Append one checkpoint. A single write() to an O_APPEND file: lines from
        concurrent writers never interleave, and a crash loses at most the
        newest lines (the log is then longer than the anchor, which is fine)."""
        line = json.dumps(
            {
                "id": record_id,
                "hash": record_hash,
                "mac": self.mac(record_hash),
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
            separators=(",", ":"),
        )
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def read_checkpoints(self) -> tuple[list[Checkpoint], list[str]]:
        """(checkpoints, warnings). No file means no checkpoints yet; a line that
        is not a checkpoint is a warning (a torn last line after a power loss)."""
        try:
            text = self.path.read_text(errors="replace")
        except FileNotFoundError:
            return [], [f"{self.path} does not exist: this controller has written no checkpoint yet"]
        checkpoints: list[Checkpoint] = []
        warnings: list[str] = []
        for number, line in enumerate(text.splitlines(), 1):
            checkpoint = _parse(line)
            if checkpoint is None:
                warnings.append(f"{self.path} line {number} is not a checkpoint; it was ignored")
            else:
                checkpoints.append(checkpoint)
        return checkpoints, warnings


def _parse(line: str) -> Checkpoint | None:
    try:
        raw = json.loads(line)
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    record_id, digest, mac, at = raw.get("id"), raw.get("hash"), raw.get("mac"), raw.get("at")
    if type(record_id) is not int or record_id < 1 or not isinstance(at, str):
        return None
    if not (isinstance(digest, str) and _HEX64.fullmatch(digest)):
        return None
    if not (isinstance(mac, str) and _HEX64.fullmatch(mac)):
        return None
    return Checkpoint(id=record_id, hash=digest, mac=mac, at=at)
