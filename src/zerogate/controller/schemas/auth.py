"""Sign-in: bootstrap, activation, TOTP enrollment, login and API tokens."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from zerogate.controller.fields import ObjectName, Password, TotpCode, Username
from zerogate.controller.schemas.base import Strict


class BootstrapRequest(Strict):
    code: str = Field(min_length=4, max_length=64)
    username: Username
    password: Password


class ActivateRequest(Strict):
    username: Username
    activation_code: str = Field(min_length=8, max_length=128)
    password: Password


class TotpEnrollment(BaseModel):
    username: str
    totp_secret: str
    otpauth_uri: str
    next_step: str = "confirm TOTP: POST /v1/auth/totp/confirm with a code from your authenticator"


class TotpConfirmRequest(Strict):
    username: Username
    password: Password
    totp: TotpCode


class LoginRequest(Strict):
    username: Username
    password: Password
    totp: TotpCode


class LoginResponse(BaseModel):
    token: str
    token_id: int
    kind: str
    username: str
    expires_at: datetime


class TokenCreate(Strict):
    name: ObjectName
    ttl_days: int = Field(default=30, ge=1, le=3650)
    # "metrics": good for GET /metrics only (a Prometheus server's credential), nothing else
    kind: Literal["api", "metrics"] = "api"


class TokenOut(BaseModel):
    id: int
    name: str
    kind: str
    hint: str
    username: str
    expires_at: datetime
    revoked_at: datetime | None
    created_at: datetime


class TokenCreated(TokenOut):
    token: str
