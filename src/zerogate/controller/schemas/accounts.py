"""Admin and user accounts (``/v1/admins``, ``/v1/users``)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from zerogate.controller.fields import DisplayName, Email, ObjectName, Username
from zerogate.controller.schemas.base import Strict


class AccountCreate(Strict):
    username: Username
    display_name: DisplayName = ""
    email: Email = ""
    groups: list[ObjectName] = Field(default_factory=list, max_length=100)


class AccountUpdate(Strict):
    display_name: DisplayName | None = None
    email: Email | None = None
    groups: list[ObjectName] | None = Field(default=None, max_length=100)
    disabled: bool | None = None


class AccountOut(BaseModel):
    id: int
    kind: str
    username: str
    display_name: str
    email: str
    status: str
    totp_enrolled: bool
    groups: list[str]
    created_at: datetime


class AccountCreated(AccountOut):
    activation_code: str
    activation_expires_at: datetime
