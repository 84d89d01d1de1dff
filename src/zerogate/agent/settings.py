"""One typed settings object per device daemon (gateway, connector, client, segment).

Each is read, in order of precedence, from

1. command-line flags (``zerogate gateway run --interface ...``);
2. the environment: ``ZEROGATE_<ROLE>_<KEY>``, e.g. ``ZEROGATE_GATEWAY_PROBE_INTERVAL=0.3``
   (the role in the name keeps them apart from the controller's ``ZEROGATE_<KEY>``
   when several roles share a host or a test run);
3. a TOML file: ``--config FILE``, else ``/etc/zerogate/ROLE.toml`` when it exists,
   keys under a ``[ROLE]`` table (see ``ROLE.example.toml`` next to this module);
4. the defaults below.

``zerogate gateway run --check`` (and ``connector``/``segment run --check``) validates them
and prints the effective settings without starting. Errors are
:class:`ConfigError`, whose message names the file or variable and the key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from zerogate.netops.files import SecretFileError, read_private_secret
from zerogate.netops.ldap import DirectoryBadConfig, DirectoryConfig
from zerogate.netops.wireguard import DEFAULT_INTERFACES, check_ifname

CONFIG_DIR = Path("/etc/zerogate")
EXAMPLES = Path(__file__).parent  # gateway, connector, client and segment .example.toml

LogLevel = Literal["debug", "info", "warning", "error"]


class ConfigError(Exception):
    """The settings are invalid or the file unreadable; the message says where and why."""


def parse_listen(text: str) -> tuple[str, int] | None:
    """``ADDRESS:PORT`` or ``[V6ADDRESS]:PORT`` as (address, port), or None if it is not one
    (port 0, "any free port", is one: the tests listen so; the settings refuse it)."""
    m = re.fullmatch(r"(?:\[([0-9a-fA-F:.]{2,45})\]|([0-9.]{7,15})):([0-9]{1,5})", text)
    if m is None:
        return None
    host, port = m[1] or m[2], int(m[3])
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if (address.version == 6) != bool(m[1]) or port > 65535:
        return None
    return str(address), port


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value  # "INFO" from the environment


def check_metrics_listen(value: str) -> str:
    """``metrics_listen`` (agent/metrics_local.py): "" (off), or ADDRESS:PORT / [V6]:PORT with
    a specific address. The listener has no authentication, so never every address at once:
    0.0.0.0 or [::] would show it on the gateway's public side."""
    if not value:
        return value
    parsed = parse_listen(value)
    if parsed is None or parsed[1] == 0:
        raise ValueError(
            'metrics_listen takes ADDRESS:PORT (e.g. 127.0.0.1:9400 or [::1]:9400), or "" for off'
        )
    address = ipaddress.ip_address(parsed[0])
    if address.is_unspecified or address.is_multicast:
        raise ValueError(
            "metrics_listen must name one address (127.0.0.1, or a management address of this host), "
            "not every address: the metrics listener has no authentication"
        )
    return value


def metrics_address(value: str) -> tuple[str, int] | None:
    """A checked ``metrics_listen`` as (address, port); None when off."""
    return parse_listen(value) if value else None


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: ClassVar[str]

    state_dir: Path
    watch_seconds: float = Field(default=25.0, gt=0, le=300)


class _Settings(_Base):
    interface: str

    @field_validator("interface")
    @classmethod
    def _ifname(cls, value: str) -> str:
        return check_ifname(value)


class _DaemonSettings(_Settings):
    log_level: LogLevel = "info"
    report_interval: float = Field(default=5.0, gt=0, le=3600)
    metrics_listen: str = Field(default="", max_length=64)  # the daemon's own /metrics; "" = off

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return _lower(value)

    @field_validator("metrics_listen")
    @classmethod
    def _metrics(cls, value: str) -> str:
        return check_metrics_listen(value)


class GatewaySettings(_DaemonSettings):
    role: ClassVar[str] = "gateway"

    state_dir: Path = Path("/var/lib/zerogate/gateway")
    interface: str = DEFAULT_INTERFACES["gateway"]
    probe_interval: float = Field(default=0.2, gt=0, le=10)  # seconds between connector probe rounds
    down_after: float = Field(default=0.9, gt=0, le=60)  # no answer this long: the connector is down
    flow_records: bool = True  # record forwarded and refused flows for the controller (gateway.flows)

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
    # VRRP, for a group with a virtual IP (connector.vrrp): keepalived between its connectors.
    # vrrp_peers: the other connectors' LAN IPv4 addresses (unicast VRRP); empty: multicast
    vrrp_peers: list[str] = Field(default_factory=list, max_length=8)
    vrrp_priority: int = Field(default=100, ge=1, le=254)
    vrrp_preempt: bool = False  # a returning higher-priority connector takes the VIP back (cuts flows)
    vrrp_router_id: int = Field(default=0, ge=0, le=255)  # 0: derived from the group name
    vrrp_advert_interval: float = Field(default=0.2, ge=0.01, le=40.95)  # seconds, steps of 0.01

    @field_validator("vrrp_peers", mode="before")
    @classmethod
    def _peer_list(cls, value: object) -> object:
        if isinstance(value, str):  # ZEROGATE_CONNECTOR_VRRP_PEERS=10.0.0.2,10.0.0.3
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("vrrp_peers")
    @classmethod
    def _peers(cls, value: list[str]) -> list[str]:
        out = []
        for p in value:
            try:
                if not re.fullmatch(r"[0-9]{1,3}(\.[0-9]{1,3}){3}", p):
                    raise ValueError
                address = ipaddress.IPv4Address(p)
            except ValueError:
                raise ValueError(
                    "vrrp_peers takes IPv4 addresses (the other connectors' LAN addresses)"
                ) from None
            if address.is_multicast or address.is_unspecified or address.is_loopback:
                raise ValueError("vrrp_peers: a peer must be a unicast LAN address")
            out.append(str(address))
        if len(set(out)) != len(out):
            raise ValueError("vrrp_peers: an address is listed twice")
        return out

    @field_validator("vrrp_advert_interval")
    @classmethod
    def _centiseconds(cls, value: float) -> float:
        if abs(round(value * 100) - value * 100) > 1e-6:
            raise ValueError("vrrp_advert_interval: VRRPv3 counts in steps of 0.01 s")
        return round(value * 100) / 100


class ClientSettings(_Settings):
    role: ClassVar[str] = "client"

    state_dir: Path = Path("/var/lib/zerogate/client")
    interface: str = DEFAULT_INTERFACES["client"]
    handshake_timeout: float = Field(default=15.0, gt=0, le=300)  # 'client up' waits this long


_ASSET_DIR = re.compile(r"/[A-Za-z0-9._/-]*")


class SegmentSettings(_Base):
    """The segment server. The directory is optional: without ``directory_url``
    no directory is read or written (every ``directory_*`` key stays empty)."""

    role: ClassVar[str] = "segment"

    state_dir: Path = Path("/var/lib/zerogate/segment")
    log_level: LogLevel = "info"
    report_interval: float = Field(default=30.0, gt=0, le=3600)
    collect_interval: float = Field(default=60.0, gt=0, le=3600)  # learning: conntrack read this often
    max_ssh_operations: int = Field(default=32, ge=1, le=1024)  # SSH operations at once, over all assets
    check_timeout: float = Field(default=10.0, gt=0, le=300)  # enforcement's fresh-connection check
    # ssh -o KexAlgorithms= toward the assets; "" keeps OpenSSH's own (post-quantum first)
    ssh_kex_algorithms: str = Field(default="", pattern=r"^([+^-]?[a-z0-9][a-z0-9@.,-]*)?$", max_length=512)
    # On every Linux asset: where snapshots, ruleset copies and rollback markers go ("" =
    # /var/lib/zerogate/segment for root, ~/.zerogate-segment for another login)
    asset_dir: str = Field(default="", max_length=200)
    directory_url: str = ""
    directory_bind_dn: str = ""
    directory_password_file: str = ""
    directory_base_dn: str = ""
    directory_monitored_group_dn: str = ""
    directory_protected_group_dn: str = ""
    directory_ca_file: str = ""
    directory_sync_interval: float = Field(default=300.0, gt=0, le=86400)
    # just-in-time openings: the HTTPS listener where users ask for one ("" = none)
    jit_listen: str = Field(default="", max_length=64)  # "ADDRESS:PORT", "[V6]:PORT" or ""
    jit_cert_file: str = ""
    jit_key_file: str = ""
    # Windows assets (WinRM): the account is each asset's ssh_user; only these are the server's
    winrm_password_file: str = ""  # "" = none: Windows assets then say so in their state
    winrm_auth: Literal["kerberos", "ntlm", "negotiate"] = "kerberos"
    winrm_transport: Literal["https", "http"] = "https"
    metrics_listen: str = Field(default="", max_length=64)  # the daemon's own /metrics; "" = off

    @field_validator("log_level", "winrm_auth", "winrm_transport", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return _lower(value)

    @field_validator("metrics_listen")
    @classmethod
    def _metrics(cls, value: str) -> str:
        return check_metrics_listen(value)

    @field_validator("asset_dir")
    @classmethod
    def _asset_dir(cls, value: str) -> str:
        if value and (not _ASSET_DIR.fullmatch(value) or ".." in value.split("/")):
            raise ValueError('asset_dir takes an absolute path of letters, digits and . _ - / (no ..), or ""')
        return value

    @field_validator("jit_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value and (parse_listen(value) or ("", 0))[1] == 0:
            raise ValueError('jit_listen takes ADDRESS:PORT (e.g. 0.0.0.0:443 or [::]:443), or "" for none')
        return value

    @model_validator(mode="after")
    def _complete(self) -> SegmentSettings:
        needed = ("bind_dn", "password_file", "base_dn", "monitored_group_dn", "protected_group_dn")
        if self.directory_url:
            missing = [f"directory_{k}" for k in needed if not getattr(self, f"directory_{k}")]
            if missing:
                raise ValueError(f"directory_url is set, so {', '.join(missing)} must be set too")
        elif any(getattr(self, f"directory_{k}") for k in (*needed, "ca_file")):
            raise ValueError("directory_* settings are given but directory_url is empty; set it")
        if self.jit_listen and not (self.jit_cert_file and self.jit_key_file):
            raise ValueError("jit_listen is set, so jit_cert_file and jit_key_file must be set too")
        if not self.jit_listen and (self.jit_cert_file or self.jit_key_file):
            raise ValueError("jit_cert_file or jit_key_file is given but jit_listen is empty; set it")
        if self.winrm_transport == "http" and self.winrm_auth != "kerberos":
            raise ValueError(
                'winrm_transport "http" needs winrm_auth "kerberos" (NTLM cannot prove the host)'
            )
        return self

    def winrm_password(self) -> str | None:
        """The WinRM account's password from ``winrm_password_file``, None when none is set.

        Raises :class:`ConfigError` when the file cannot be read (the password never in it)."""
        if not self.winrm_password_file:
            return None
        path = Path(self.winrm_password_file)
        try:
            return read_private_secret(path)
        except SecretFileError as exc:
            raise ConfigError(f"winrm_password_file {path}: {exc}") from None

    def directory_config(self) -> DirectoryConfig | None:
        """The directory to use (the password read from its file), or None when none is set.

        Raises :class:`ConfigError` when the password file cannot be read or the
        settings do not make a valid directory (the password never in the message)."""
        if not self.directory_url:
            return None
        path = Path(self.directory_password_file)
        try:
            password = read_private_secret(path)
        except SecretFileError as exc:
            raise ConfigError(f"directory_password_file {path}: {exc}") from None
        try:
            return DirectoryConfig(
                url=self.directory_url,
                bind_dn=self.directory_bind_dn,
                password=password,
                base_dn=self.directory_base_dn,
                monitored_group_dn=self.directory_monitored_group_dn,
                protected_group_dn=self.directory_protected_group_dn,
                ca_file=Path(self.directory_ca_file) if self.directory_ca_file else None,
            )
        except DirectoryBadConfig as exc:
            raise ConfigError(f"directory settings: {exc}") from None


S = TypeVar("S", bound=_Base)


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


def _from_env(cls: type[_Base], environ: Mapping[str, str]) -> dict[str, str]:
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


def describe(settings: _Base, path: Path | None) -> dict[str, Any]:
    """The effective settings as ``--check`` prints them."""
    return {"config_file": str(path) if path else None} | settings.model_dump(mode="json")
