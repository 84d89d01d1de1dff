"""The operator's session for ``zerogate admin``: the profile file and signing in.

The signed-in session lives in a profile file (default
``~/.config/zerogate/admin.json``, mode 0600): the controller URL, its pinned
CA certificate and the session token. ``--profile`` or ``ZEROGATE_PROFILE``
picks another file (:func:`use_profile`). :func:`client` is how every other
admin command reaches the controller.

The commands here (bootstrap, activate, totp-confirm, login, logout, whoami) are
plain functions; :mod:`zerogate.cli.admin` registers them on its Typer app.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

from zerogate.cli.common import JsonOpt, ask, emit, errors_to_exit, fail, read_secret, say
from zerogate.netops.controller_api import ControllerClient, fetch_ca
from zerogate.pki.ca import ca_pin

_profile_path: list[Path] = []


def default_profile() -> Path:
    if env := os.environ.get("ZEROGATE_PROFILE"):
        return Path(env)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "zerogate" / "admin.json"


def use_profile(path: Path | None) -> None:
    """Make ``path`` (``--profile``; None: the default) the profile of this run."""
    _profile_path[:] = [path or default_profile()]


def profile_path() -> Path:
    return _profile_path[0] if _profile_path else default_profile()


def load_profile() -> dict[str, Any]:
    path = profile_path()
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        fail(f"not signed in ({path} does not exist): run 'zerogate admin login --url URL --pin PIN'")
    except (OSError, ValueError) as exc:
        fail(f"{path} is unreadable ({exc}); sign in again")
    return data


def _prior_profile() -> dict[str, Any]:
    """The profile as it is, or {} if there is none or it is unreadable (never fails)."""
    try:
        prior = json.loads(profile_path().read_text())
    except (OSError, ValueError):
        return {}
    return prior if isinstance(prior, dict) else {}


def save_profile(data: dict[str, Any]) -> None:
    path = profile_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def client(with_token: bool = True) -> ControllerClient:
    p = load_profile()
    if with_token and not p.get("token"):
        fail("not signed in: run 'zerogate admin login'")
    return ControllerClient(p["url"], p["ca_pem"].encode(), token=p.get("token") if with_token else None)


def _connect(url: str | None, pin: str | None) -> tuple[str, str]:
    """(url, ca_pem): from --url/--pin (checked against the pin) or from the profile."""
    if url:
        if not pin:
            fail("--pin is needed with --url (it is printed by 'zerogate controller init')")
        return url.rstrip("/"), fetch_ca(url, pin).decode()
    p = load_profile()
    return p["url"], p["ca_pem"]


UrlOpt = typer.Option(
    None, "--url", help="Controller URL, e.g. https://zt.example.com (default: from the profile)."
)
PinOpt = typer.Option(None, "--pin", help="CA pin (sha256/...) printed by 'controller init'.")
UserOpt = typer.Option(None, "--username", "-u", help="Account name.")
PwStdin = typer.Option(False, "--password-stdin", help="Read the password from one line of standard input.")
TotpOpt = typer.Option(None, "--totp", help="Current code from the authenticator.")


def _credentials(username: str | None, totp: str | None, password_stdin: bool) -> tuple[str, str, str]:
    """Username, password and TOTP code for a sign-in, asked for where not given."""
    username = ask("username", username)
    password = read_secret("password", password_stdin)
    totp = ask("TOTP code", totp)
    return username, password, totp


def _show_totp(enrollment: dict[str, Any], as_json: bool) -> None:
    # The API's next_step names the API call; the CLI user gets the command to type.
    next_step = f"zerogate admin totp-confirm --username {enrollment['username']} --totp CODE"
    if as_json:
        emit(enrollment | {"next_step": next_step}, True)
        return
    say(
        "Add this account to your authenticator app (TOTP, 6 digits, 30 s):\n"
        "  secret: [bold]{}[/]\n  uri:    {}\nThen confirm: {}",
        enrollment["totp_secret"],
        enrollment["otpauth_uri"],
        next_step,
    )


def _profile_is_free(base: str) -> bool:
    """May the profile be rewritten for a new account? Not while it holds a session:
    on the same controller it is kept as it is (totp-confirm needs only the URL and
    CA, which it has); on another one the command stops before using the code."""
    prior = _prior_profile()
    if not prior.get("token"):
        return True
    if prior.get("url") != base:
        fail(
            f"{profile_path()} holds the session of {prior.get('username')} on {prior.get('url')}; "
            "pass --profile with another file for this account"
        )
    return False


def _set_first_password(
    url: str | None,
    pin: str | None,
    username: str | None,
    code: str | None,
    code_name: str,
    endpoint: str,
    code_field: str,
    password_stdin: bool,
    as_json: bool,
) -> None:
    """Bootstrap and activation share one flow: code + new password, then TOTP setup."""
    with errors_to_exit():
        base, ca_pem = _connect(url, pin)
        username = ask("username", username)
        code = ask(code_name, code)
        password = read_secret("new password", password_stdin)
        free = _profile_is_free(base)
        with ControllerClient(base, ca_pem.encode()) as c:
            enrollment = c.post(endpoint, {code_field: code, "username": username, "password": password})
        if free:
            save_profile({"url": base, "ca_pem": ca_pem, "username": username})
        _show_totp(enrollment, as_json)


def bootstrap(
    url: str = typer.Option(..., "--url", help="Controller URL."),
    pin: str = typer.Option(..., "--pin", help="CA pin printed by 'controller init'."),
    code: str = typer.Option(None, "--code", help="The one-time bootstrap code."),
    username: str = UserOpt,
    password_stdin: bool = PwStdin,
    as_json: bool = JsonOpt,
) -> None:
    """Create the first admin with the bootstrap code, then set up TOTP."""
    _set_first_password(
        url, pin, username, code, "bootstrap code", "/v1/auth/bootstrap", "code", password_stdin, as_json
    )


def activate(
    url: str = UrlOpt,
    pin: str = PinOpt,
    username: str = UserOpt,
    code: str = typer.Option(None, "--code", help="Activation code an admin gave you."),
    password_stdin: bool = PwStdin,
    as_json: bool = JsonOpt,
) -> None:
    """Set the password of a new account (admin or user) with its activation code."""
    _set_first_password(
        url,
        pin,
        username,
        code,
        "activation code",
        "/v1/auth/activate",
        "activation_code",
        password_stdin,
        as_json,
    )


def totp_confirm(username: str = UserOpt, totp: str = TotpOpt, password_stdin: bool = PwStdin) -> None:
    """Confirm the authenticator works; this activates the account."""
    with errors_to_exit():
        p = load_profile()
        username, password, totp = _credentials(username or p.get("username"), totp, password_stdin)
        with ControllerClient(p["url"], p["ca_pem"].encode()) as c:
            r = c.post("/v1/auth/totp/confirm", {"username": username, "password": password, "totp": totp})
        say("[green]Account {} is active.[/] Sign in: {}", username, _sign_in_command(r, p, username))


def _sign_in_command(confirmed: Any, profile: dict[str, Any], username: str) -> str:
    """Users sign in with the client on their device; admins with this CLI."""
    kind = confirmed.get("kind") if isinstance(confirmed, dict) else None
    admin = f"zerogate admin login --username {username}"
    if kind == "admin":
        return admin
    pin = ca_pin(profile["ca_pem"].encode())
    user = f"zerogate client login --url {profile['url']} --pin {pin} --username {username}"
    return user if kind == "user" else f"{user} (a user account) or {admin} (an admin account)"


def login(
    url: str = UrlOpt,
    pin: str = PinOpt,
    username: str = UserOpt,
    totp: str = TotpOpt,
    password_stdin: bool = PwStdin,
) -> None:
    """Sign in with password + TOTP; the session is kept in the profile."""
    with errors_to_exit():
        base, ca_pem = _connect(url, pin)
        username, password, totp = _credentials(
            username or _prior_profile().get("username"), totp, password_stdin
        )
        with ControllerClient(base, ca_pem.encode()) as c:
            r = c.post("/v1/auth/login", {"username": username, "password": password, "totp": totp})
        save_profile({"url": base, "ca_pem": ca_pem, "username": username, "token": r["token"]})
        say("Signed in as {} ({}) until {}.", username, r["kind"], r["expires_at"])


def logout() -> None:
    """End the session: the token is revoked on the controller."""
    with errors_to_exit():
        p = load_profile()
        if p.get("token"):
            with client() as c:
                c.post("/v1/auth/logout")
        p.pop("token", None)
        save_profile(p)
        say("Signed out.")


def whoami(as_json: bool = JsonOpt) -> None:
    """Show who the profile is signed in as."""
    with errors_to_exit(), client() as c:
        emit(c.get("/v1/auth/whoami"), as_json)
