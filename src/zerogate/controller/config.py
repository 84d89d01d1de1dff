"""Controller settings: one typed object from file, then environment, then flags.

The file is ``DATA_DIR/controller.toml`` (written by ``zerogate controller
init``; see ``controller.example.toml`` for every key). An environment
variable ``ZEROGATE_<KEY>`` (upper case) overrides the file; a command-line
flag overrides both.
"""

from __future__ import annotations

import os
import re
import tomllib
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.engine import make_url

from zerogate.pki.install_string import InvalidInstallString, normalize_controller_url
from zerogate.store.db import DatabaseError, async_url, sqlite_path

CONFIG_NAME = "controller.toml"
DEFAULT_SQLITE = "zerogate.db"
_DNS_NAME = re.compile(  # fullmatch only: with match, '$' also accepts a trailing newline
    r"(?=.{1,253}\Z)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
)
EXAMPLE_CONFIG = Path(__file__).with_name("controller.example.toml")


class ConfigError(Exception):
    """The configuration is missing or invalid; the message says which key and why."""


class ControllerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path
    database: str = ""
    listen_host: str = "0.0.0.0"  # noqa: S104 - the controller is the public rendezvous point
    listen_port: int = Field(default=443, ge=0, le=65535)  # 0: any free port (tests)
    public_url: str = ""
    server_names: list[str] = Field(default_factory=lambda: ["localhost", "127.0.0.1"])
    session_ttl_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    api_token_max_days: int = Field(default=90, ge=1, le=3650)
    provisioning_key_ttl_minutes: int = Field(default=60, ge=1, le=60 * 24 * 30)
    activation_ttl_hours: int = Field(default=72, ge=1, le=24 * 30)
    login_failures_per_account: int = Field(default=5, ge=1, le=1000)
    login_failures_per_source: int = Field(default=20, ge=1, le=10000)
    login_failure_window_seconds: int = Field(default=900, ge=10, le=86400)
    # Brute-force throttle (see zerogate.controller.throttle) and refusal auditing.
    login_failures_per_account_any_source: int = Field(default=50, ge=1, le=100000)
    key_failures_per_source: int = Field(default=10, ge=1, le=10000)
    throttle_delay_seconds: float = Field(default=1.0, gt=0, le=3600)
    login_account_delay_max_seconds: float = Field(default=30.0, gt=0, le=3600)
    audit_refusal_window_seconds: int = Field(default=60, ge=0, le=86400)  # 0: a record each
    trusted_proxies: list[str] = Field(default_factory=list)
    watch_max_seconds: int = Field(default=60, ge=1, le=600)
    # Largest request body (bytes); see zerogate.controller.limits for the two larger ones.
    max_body_bytes: int = Field(default=1024 * 1024, ge=64 * 1024, le=64 * 1024 * 1024)
    log_level: str = "info"
    # Durations (seconds) a just-in-time opening may be asked for: 1 h, 4 h, 8 h, 12 h, 1 day.
    segment_jit_durations: list[int] = Field(
        default_factory=lambda: [3600, 14400, 28800, 43200, 86400], min_length=1, max_length=16
    )
    # Report history (controller/services/report_history.py): one sample per device per
    # interval (seconds), kept this many days; 0 days keeps none (and deletes what is kept).
    report_history_interval: int = Field(default=60, ge=5, le=86400)
    report_history_days: float = Field(default=7, ge=0, le=366)
    # Flow records (controller/services/flows.py): kept this many days; each also sent as
    # RFC 5424 syslog to flow_syslog ("udp://host:port" or "tcp://host:port"; "" = none).
    flow_retention_days: float = Field(default=30, ge=0, le=3660)
    flow_syslog: str = Field(
        default="", max_length=300, pattern=r"^((udp|tcp)://[A-Za-z0-9.:\[\]-]{1,260})?$"
    )

    @field_validator("database")
    @classmethod
    def _database_usable(cls, value: str) -> str:
        if value:
            try:
                async_url(value)
            except DatabaseError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("public_url")
    @classmethod
    def _https_url(cls, value: str) -> str:
        if not value:
            return value
        try:
            # The same rule install strings apply, so init never writes a URL
            # that enrollment would later refuse.
            return normalize_controller_url(value)
        except InvalidInstallString as exc:
            raise ValueError(f"public_url: {exc}") from None

    @field_validator("server_names")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("server_names needs at least one DNS name or IP address")
        names = []
        for name in value:
            bare = name.strip().strip("[]").lower()
            try:
                names.append(str(ip_address(bare)))
                continue
            except ValueError:
                pass
            if not _DNS_NAME.fullmatch(bare):
                raise ValueError(f"server name {name!r} is neither an IP address nor a DNS name")
            names.append(bare)
        return names

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        networks = []
        for entry in value:
            try:
                net = ip_network(entry.strip(), strict=True)
            except ValueError:
                raise ValueError(
                    "trusted_proxies takes IP addresses or networks of the reverse proxies "
                    'in front of the controller, e.g. "10.0.0.5" or "10.0.0.0/24"'
                ) from None
            if net.prefixlen == 0:
                raise ValueError(
                    "trusted_proxies must not trust every address: any client could then forge its "
                    "source with X-Forwarded-For; list only your proxies' addresses"
                )
            networks.append(str(net))
        return networks

    @field_validator("segment_jit_durations")
    @classmethod
    def _jit_durations(cls, value: list[int]) -> list[int]:
        if any(not 1 <= v <= 7 * 86400 for v in value):
            raise ValueError(
                "segment_jit_durations takes seconds from 1 to 604800 (7 days), e.g. [3600, 14400]"
            )
        return sorted(set(value))

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError("log_level must be debug, info, warning or error")
        return value.lower()

    @property
    def database_url(self) -> str:
        """The URL to connect to. A relative SQLite path is relative to the data
        directory, so a copied or moved directory uses its own database."""
        return resolve_sqlite_url(self.database or f"sqlite:///{DEFAULT_SQLITE}", self.data_dir)

    @property
    def url(self) -> str:
        """The URL devices use (goes into install strings)."""
        if self.public_url:
            return self.public_url
        host = self.server_names[0]
        try:
            if ip_address(host).version == 6:
                host = f"[{host}]"
        except ValueError:
            pass
        return f"https://{host}:{self.listen_port}"

    @property
    def ca_cert_path(self) -> Path:
        return self.data_dir / "ca.pem"

    @property
    def ca_key_path(self) -> Path:
        return self.data_dir / "ca.key"

    @property
    def server_cert_path(self) -> Path:
        return self.data_dir / "server.pem"

    @property
    def server_key_path(self) -> Path:
        return self.data_dir / "server.key"


_FIELDS = set(ControllerSettings.model_fields)


def _from_env(environ: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in _FIELDS:
        raw = environ.get(f"ZEROGATE_{name.upper()}")
        if raw is None:
            continue
        is_list = name in ("server_names", "trusted_proxies", "segment_jit_durations")
        values[name] = [s.strip() for s in raw.split(",") if s.strip()] if is_list else raw
    return values


def load_settings(
    data_dir: Path, overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None
) -> ControllerSettings:
    """Settings for the deployment in ``data_dir`` (file, then env, then overrides)."""
    path = data_dir / CONFIG_NAME
    values: dict[str, Any] = {}
    if path.exists():
        try:
            values.update(tomllib.loads(path.read_text()).get("controller", {}))
        except (tomllib.TOMLDecodeError, OSError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
    values.update(_from_env(dict(os.environ) if environ is None else environ))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    values["data_dir"] = data_dir
    try:
        return ControllerSettings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None


def render_settings_file(settings: ControllerSettings) -> str:
    """The deployment's controller.toml as written by init: only what differs from defaults."""
    defaults = ControllerSettings(data_dir=settings.data_dir)
    lines = [
        "# zerogate controller settings, written by 'zerogate controller init'.",
        f"# Every key and its meaning: {EXAMPLE_CONFIG.name} in the zerogate package.",
        "[controller]",
    ]
    for name in ControllerSettings.model_fields:
        if name == "data_dir":
            continue
        value = getattr(settings, name)
        if value == getattr(defaults, name) and name not in ("database", "listen_port"):
            continue
        if name == "database":
            value = portable_database(settings)
        lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def resolve_sqlite_url(url: str, data_dir: Path) -> str:
    """``url`` with a relative SQLite path made absolute against ``data_dir``;
    absolute paths (what earlier versions of init wrote) and other databases
    unchanged."""
    path = sqlite_path(url)
    if path is None or path.is_absolute():
        return url
    return make_url(url).set(database=str(data_dir / path)).render_as_string(hide_password=False)


def portable_database(settings: ControllerSettings) -> str:
    """The ``database`` value init writes: a SQLite file inside the data
    directory as a path relative to it, anything else as given."""
    url = settings.database_url
    path = sqlite_path(url)
    if path is not None and path.is_relative_to(settings.data_dir):
        return f"sqlite:///{path.relative_to(settings.data_dir)}"
    return url


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
