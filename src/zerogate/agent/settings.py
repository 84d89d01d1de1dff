"""One typed settings object per device daemon (gateway, connector, client).

Each is read, in order of precedence, from

1. command-line flags (``zerogate gateway run --interface ...``);
2. the environment: ``ZEROGATE_<ROLE>_<KEY>``, e.g. ``ZEROGATE_GATEWAY_PROBE_INTERVAL=0.3``
   (the role in the name keeps them apart from the controller's ``ZEROGATE_<KEY>``
   when several roles share a host or a test run);
3. a TOML file: ``--config FILE``, else ``/etc/zerogate/ROLE.toml`` when it exists,
   keys under a ``[ROLE]`` table (see ``ROLE.example.toml`` next to this module);
4. the defaults below.

``zerogate gateway run --check`` (and ``connector run --check``) validates them
and prints the effective settings without starting. Errors are
:class:`ConfigError`, whose message names the file or variable and the key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from zerogate.netops.wireguard import DEFAULT_INTERFACES, check_ifname

CONFIG_DIR = Path("/etc/zerogate")
EXAMPLES = Path(__file__).parent  # gateway.example.toml, connector.example.toml, client.example.toml

LogLevel = Literal["debug", "info", "warning", "error"]


class ConfigError(Exception):
    """The settings are invalid or the file unreadable; the message says where and why."""


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: ClassVar[str]

    state_dir: Path
    interface: str
    watch_seconds: float = Field(default=25.0, gt=0, le=300)

    @field_validator("interface")
    @classmethod
    def _ifname(cls, value: str) -> str:
        return check_ifname(value)


class _DaemonSettings(_Settings):
    log_level: LogLevel = "info"
    report_interval: float = Field(default=5.0, gt=0, le=3600)

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class GatewaySettings(_DaemonSettings):
    role: ClassVar[str] = "gateway"

    state_dir: Path = Path("/var/lib/zerogate/gateway")
    interface: str = DEFAULT_INTERFACES["gateway"]
    probe_interval: float = Field(default=0.2, gt=0, le=10)  # seconds between connector probe rounds
    down_after: float = Field(default=0.9, gt=0, le=60)  # no answer this long: the connector is down

    @model_validator(mode="after")
    def _probe_before_down(self) -> GatewaySettings:
        if self.down_after <= self.probe_interval:
            raise ValueError("down_after must be longer than probe_interval (else every connector flaps)")
        return self


class ConnectorSettings(_DaemonSettings):
    role: ClassVar[str] = "connector"

    state_dir: Path = Path("/var/lib/zerogate/connector")
    interface: str = DEFAULT_INTERFACES["connector"]
    listen_port: int = Field(default=51820, ge=1, le=65535)
    keepalive: int = Field(default=5, ge=1, le=600)  # connector.plan.KEEPALIVE_SECONDS


class ClientSettings(_Settings):
    role: ClassVar[str] = "client"

    state_dir: Path = Path("/var/lib/zerogate/client")
    interface: str = DEFAULT_INTERFACES["client"]
    handshake_timeout: float = Field(default=15.0, gt=0, le=300)  # 'client up' waits this long


S = TypeVar("S", bound=_Settings)


def default_config(role: str) -> Path:
    return CONFIG_DIR / f"{role}.toml"


def example_config(role: str) -> Path:
    return EXAMPLES / f"{role}.example.toml"


def _from_file(path: Path, role: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, OSError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    unknown = sorted(set(data) - {role})
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {', '.join(unknown)}; the settings go under [{role}]")
    section = data.get(role, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [{role}] must be a table")
    return dict(section)


def _from_env(cls: type[_Settings], environ: Mapping[str, str]) -> dict[str, str]:
    prefix = f"ZEROGATE_{cls.role.upper()}_"
    return {
        name: environ[prefix + name.upper()] for name in cls.model_fields if prefix + name.upper() in environ
    }


def load_settings(
    cls: type[S],
    *,
    config: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[S, Path | None]:
    """The effective settings and the file they were read from (None: no file)."""
    path = config
    if path is None and default_config(cls.role).exists():
        path = default_config(cls.role)
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_from_file(path, cls.role))
    env = _from_env(cls, os.environ if environ is None else environ)
    values.update(env)
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    values.update(given)
    try:
        return cls(**values), path
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            key = ".".join(str(p) for p in e["loc"])
            where = (
                f"ZEROGATE_{cls.role.upper()}_{key.upper()}"
                if key in env and key not in given
                else key or "settings"
            )
            problems.append(f"{where}: {e['msg']}")
        raise ConfigError(f"{path or 'settings'}: {'; '.join(problems)}") from None


def describe(settings: _Settings, path: Path | None) -> dict[str, Any]:
    """The effective settings as ``--check`` prints them."""
    return {"config_file": str(path) if path else None} | settings.model_dump(mode="json")
