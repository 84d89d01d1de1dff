"""Who is calling, and the sign-in flows.

Bootstrap: ``controller init`` prints a one-time code; whoever holds it
creates the first admin with a password, then confirms TOTP. Every later
account gets an activation code from an admin and goes the same way. After
that, sign-in is password + TOTP and yields a session token. Tokens (session,
API, device credentials) are random 256-bit strings stored only as SHA-256.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from sqlalchemy import select

from zerogate.controller import schemas as s
from zerogate.controller.metrics import outcome
from zerogate.controller.state import (
    ApiProblem,
    ControllerState,
    Forbidden,
    Principal,
    TooManyAttempts,
    Unauthorized,
    Unprocessable,
)
from zerogate.controller.throttle import retry_after, sharing
from zerogate.pki.credentials import (
    check_password_strength,
    hash_password,
    new_token,
    normalize_code,
    token_digest,
    token_hint,
    verify_password,
)
from zerogate.pki.totp import new_totp_secret, provisioning_uri, verify_totp
from zerogate.store.db import utcnow
from zerogate.store.models import Account, ApiToken, Device

# The throttle is shared through the database while the app runs (controller/throttle.py).
router = APIRouter(prefix="/v1/auth", tags=["auth"], lifespan=sharing)


def get_state(request: Request) -> ControllerState:
    state: ControllerState = request.app.state.zg
    return state


State = Annotated[ControllerState, Depends(get_state)]


def client_source(request: Request) -> str:
    """The caller's address: the peer of the connection, or what a configured
    trusted proxy says (uvicorn applies X-Forwarded-For only from those)."""
    return request.client.host if request.client else ""


async def principal(request: Request, state: State) -> Principal:
    """Resolve the bearer token; anonymous when there is none."""
    resolved = getattr(request.state, "principal", None)  # by the body limit (limits.py)
    if isinstance(resolved, Principal):
        return resolved
    return await resolve_credential(state, request.headers.get("authorization", ""), client_source(request))


async def resolve_credential(state: ControllerState, header: str, source: str) -> Principal:
    """Who an ``Authorization`` header names (raises Unauthorized for a bad one)."""
    if not header:
        return Principal(kind="anonymous", source=source)
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("use 'Authorization: Bearer <token>'")
    digest = token_digest(token.strip())
    now = utcnow()
    async with state.db.read() as session:
        if token.startswith("zgd_"):
            device = await session.scalar(select(Device).where(Device.credential_digest == digest))
            if device is None:
                raise Unauthorized("device credential not recognised; enroll the device again")
            if device.status != "active":
                raise Unauthorized(f"device {device.name} was revoked")
            return Principal(kind="device", id=device.id, name=device.name, role=device.role, source=source)
        row = await session.scalar(select(ApiToken).where(ApiToken.digest == digest))
        if row is None:
            raise Unauthorized("token not recognised; sign in again")
        if row.revoked_at is not None:
            raise Unauthorized("token was revoked; sign in again")
        if row.expires_at <= now:
            raise Unauthorized("token expired; sign in again")
        account = row.account
        if account.status != "active":
            raise Unauthorized(f"account {account.username} is {account.status}")
        # A metrics token reads /metrics and nothing else: every other check wants admin or user.
        return Principal(
            kind="metrics" if row.kind == "metrics" else account.kind,
            id=account.id,
            name=account.username,
            token_id=row.id,
            mfa=row.mfa,
            source=source,
        )


Caller = Annotated[Principal, Depends(principal)]


async def require_admin(who: Caller) -> Principal:
    if who.kind == "anonymous":
        raise Unauthorized("sign in first: zerogate admin login")
    if who.kind != "admin":
        raise Forbidden("this needs an admin account")
    return who


async def require_account(who: Caller) -> Principal:
    if who.kind not in ("admin", "user"):
        raise Unauthorized("sign in first")
    return who


async def require_metrics(who: Caller) -> Principal:
    if who.kind == "anonymous":
        raise Unauthorized("use a metrics token: zerogate admin token create NAME --metrics")
    if who.kind not in ("metrics", "admin"):
        raise Forbidden("this needs a metrics token or an admin account")
    return who


async def require_device(who: Caller) -> Principal:
    if who.kind != "device":
        raise Unauthorized("this endpoint is for enrolled devices (bearer device credential)")
    return who


async def require_segment(who: Annotated[Principal, Depends(require_device)]) -> Principal:
    if who.role != "segment":
        raise Forbidden("this endpoint is for enrolled segment servers")
    return who


Admin = Annotated[Principal, Depends(require_admin)]
AnyAccount = Annotated[Principal, Depends(require_account)]
DeviceCaller = Annotated[Principal, Depends(require_device)]
MetricsReader = Annotated[Principal, Depends(require_metrics)]
SegmentCaller = Annotated[Principal, Depends(require_segment)]


def _enrollment(account: Account) -> s.TotpEnrollment:
    assert account.totp_secret is not None
    return s.TotpEnrollment(
        username=account.username,
        totp_secret=account.totp_secret,
        otpauth_uri=provisioning_uri(account.totp_secret, account.username),
    )


def _strong(password: str) -> None:
    weakness = check_password_strength(password)
    if weakness:
        raise Unprocessable(f"password: {weakness}")


@router.post("/bootstrap", response_model=s.TotpEnrollment)
async def bootstrap(body: s.BootstrapRequest, request: Request, state: State) -> s.TotpEnrollment:
    """Create the first admin with the one-time code printed by 'controller init'."""
    who = Principal(kind="anonymous", name=body.username, source=client_source(request))
    _strong(body.password)
    async with (
        state.key_attempt(who, "bootstrap", "admin"),
        state.mutation(who, "bootstrap", "admin", aggregate=True) as m,
    ):
        st = m.tx.state
        if st.bootstrap_digest is None:
            raise Forbidden("the bootstrap code was already used; sign in as an admin instead")
        if st.bootstrap_expires_at is not None and st.bootstrap_expires_at <= utcnow():
            raise Forbidden(
                "the bootstrap code expired; run 'zerogate controller reset-bootstrap' on the controller host"
            )
        if token_digest(normalize_code(body.code)) != st.bootstrap_digest:
            raise Unauthorized("wrong bootstrap code")
        now = utcnow()
        account = Account(
            kind="admin",
            username=body.username,
            status="pending",
            password_hash=hash_password(body.password),
            totp_secret=new_totp_secret(),
            created_at=now,
            updated_at=now,
        )
        m.tx.session.add(account)
        st.bootstrap_digest = None
        await m.tx.session.flush()
        m.object_id = account.id
        m.config_change = False
        return _enrollment(account)


@router.post("/activate", response_model=s.TotpEnrollment)
async def activate(body: s.ActivateRequest, request: Request, state: State) -> s.TotpEnrollment:
    """Set the password of an account created by an admin, using its activation code."""
    who = Principal(kind="anonymous", name=body.username, source=client_source(request))
    _strong(body.password)
    async with (
        state.key_attempt(who, "activate", "account"),
        state.mutation(who, "activate", "account", aggregate=True) as m,
    ):
        account = await m.tx.session.scalar(select(Account).where(Account.username == body.username))
        if (
            account is None
            or account.activation_digest is None
            or account.activation_digest != token_digest(body.activation_code.strip())
        ):
            raise Unauthorized("unknown account or wrong activation code")
        if account.activation_expires_at and account.activation_expires_at <= utcnow():
            raise Forbidden("the activation code expired; ask an admin for a new one")
        account.password_hash = hash_password(body.password)
        account.totp_secret = new_totp_secret()
        account.totp_confirmed = False
        account.activation_digest = None
        account.updated_at = utcnow()
        m.object_id = account.id
        m.config_change = False
        return _enrollment(account)


_PASSWORD_CHECKS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="password-check")


@functools.cache
def dummy_password_hash() -> str:
    """A hash of a password nobody knows, made with today's parameters."""
    return hash_password(secrets.token_urlsafe(32))


def password_matches(stored: str | None, password: str) -> bool:
    """Check ``password`` against ``stored``. Without a stored hash (unknown
    username, account not activated) a dummy hash is verified all the same,
    so the answer takes as long and does not tell which usernames exist."""
    if not stored:
        verify_password(dummy_password_hash(), password)
        return False
    return verify_password(stored, password)


async def check_password(
    state: ControllerState, username: str, password: str, source: str, action: str
) -> Account:
    """Throttled password check; failures are counted and audited (aggregated)."""
    who = Principal(kind="anonymous", name=username, source=source)
    wait = state.throttle.login_wait(username, source)
    if wait > 0:
        await state.refused(who, action, "account", username, "rate limited")
        raise TooManyAttempts(
            f"too many failed sign-ins; try again in {retry_after(wait)} s",
            headers={"Retry-After": retry_after(wait)},
        )
    async with state.db.read() as session:
        account = await session.scalar(select(Account).where(Account.username == username))
    # argon2 takes ~0.1 s and 64 MiB: run it on a small pool of its own, so a
    # flood of guesses neither stalls the event loop nor grows memory unbounded.
    matches = await asyncio.get_running_loop().run_in_executor(
        _PASSWORD_CHECKS, password_matches, account.password_hash if account else None, password
    )
    if not matches or account is None:
        state.throttle.login_failed(username, source)
        await state.refused(who, action, "account", username, "wrong username or password")
        raise Unauthorized("wrong username, password or code")
    return account


@router.post("/totp/confirm")
async def confirm_totp(body: s.TotpConfirmRequest, request: Request, state: State) -> dict[str, str]:
    """Prove the authenticator works; this activates the account."""
    source = client_source(request)
    account = await check_password(state, body.username, body.password, source, "totp-confirm")
    who = Principal(kind="anonymous", name=body.username, source=source)
    async with state.mutation(who, "totp-confirm", "account", account.id, aggregate=True) as m:
        acc = await m.tx.session.get(Account, account.id)
        assert acc is not None
        if acc.totp_confirmed or acc.totp_secret is None:
            raise Forbidden("TOTP is already confirmed for this account")
        step = verify_totp(acc.totp_secret, body.totp, time.time())
        if step is None:
            state.throttle.login_failed(body.username, source)
            raise Unauthorized("wrong TOTP code; check the authenticator's clock")
        acc.totp_confirmed = True
        acc.totp_last_step = step
        acc.status = "active"
        acc.updated_at = utcnow()
        m.config_change = True  # an active user may now have devices in policy
    return {"status": "active", "kind": acc.kind}


@router.post("/login", response_model=s.LoginResponse)
async def login(body: s.LoginRequest, request: Request, state: State) -> s.LoginResponse:
    try:
        answer = await _sign_in(body, request, state)
    except ApiProblem as exc:
        state.metrics.signins.labels(outcome(exc)).inc()
        raise
    state.metrics.signins.labels("success").inc()
    return answer


async def _sign_in(body: s.LoginRequest, request: Request, state: ControllerState) -> s.LoginResponse:
    source = client_source(request)
    account = await check_password(state, body.username, body.password, source, "login")
    who = Principal(kind=account.kind, id=account.id, name=account.username, source=source)
    if account.status != "active":
        await state.refused(who, "login", "account", account.id, f"account {account.status}")
        raise Forbidden(
            f"account {account.username} is {account.status}"
            + (" (confirm TOTP first)" if account.status == "pending" else "")
        )
    token = new_token("zgt")
    async with state.db.write() as tx:
        acc = await tx.session.get(Account, account.id)
        assert acc is not None and acc.totp_secret is not None
        step = verify_totp(acc.totp_secret, body.totp, time.time(), last_used_step=acc.totp_last_step)
        if step is None:
            ok = False
        else:
            ok = True
            acc.totp_last_step = step
            now = utcnow()
            row = ApiToken(
                digest=token_digest(token),
                hint=token_hint(token),
                name="session",
                kind="session",
                account_id=acc.id,
                mfa=True,
                expires_at=now + timedelta(hours=state.settings.session_ttl_hours),
                created_at=now,
            )
            tx.session.add(row)
            await tx.session.flush()
            tx.audit(actor=who.actor, source=source, action="login", object_type="account", object_id=acc.id)
    if not ok:
        state.throttle.login_failed(body.username, source)
        await state.refused(who, "login", "account", account.id, "wrong or reused TOTP code")
        raise Unauthorized("wrong username, password or code")
    state.throttle.login_succeeded(body.username, source)
    return s.LoginResponse(
        token=token, token_id=row.id, kind=account.kind, username=account.username, expires_at=row.expires_at
    )


@router.post("/logout", status_code=204)
async def logout(who: AnyAccount, state: State) -> None:
    async with state.mutation(who, "logout", "token", who.token_id) as m:
        row = await m.tx.session.get(ApiToken, who.token_id)
        if row is not None and row.revoked_at is None:
            row.revoked_at = utcnow()
        m.config_change = False


@router.get("/whoami")
async def whoami(who: Caller) -> dict[str, object]:
    return {"kind": who.kind, "id": who.id, "name": who.name, "role": who.role, "mfa": who.mfa}
