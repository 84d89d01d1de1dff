"""``zerogate segment directory init`` against a real slapd with ``cn=config``
(:class:`zerogate.testbed.slapd.Slapd` with ``config_database=True``), and the
``--render ldif|ad`` output against golden files.

The ACL is proven by the write it forbids: the harness's writer account, which
the slapd's own rules let change the members of every group under ``ou=groups``,
is refused (insufficientAccessRights) on the protected group once init has run,
while the new service account, reached through the segment server's own settings
loader and LDAP adapter, may change it.
"""

from __future__ import annotations

import json
import shutil
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ldap3
import pytest
from typer.testing import CliRunner

from zerogate.agent.settings import SegmentSettings
from zerogate.cli.main import app
from zerogate.netops.command import command_env, run
from zerogate.netops.ldap import Directory, DirectoryConfig, DirectoryRefused, dn_key
from zerogate.segment.directory_render import SetupInputError, SetupSpec, render_ldif, render_powershell
from zerogate.testbed.slapd import SUFFIX, Slapd, computer_entry

GOLDEN = Path(__file__).parent / "golden" / "directory"
MONITORED = f"cn=zg-monitored,ou=groups,{SUFFIX}"
PROTECTED = f"cn=zg-protected,ou=groups,{SUFFIX}"
SERVICE_DN = f"cn=zerogate-segment,{SUFFIX}"
INSUFFICIENT_ACCESS = 50

needs_slapd = pytest.mark.skipif(
    not all(
        shutil.which(p, path="/usr/sbin:/usr/bin") for p in ("slapd", "slapadd", "ldapmodify", "ldapsearch")
    ),
    reason="needs slapd and ldap-utils",
)


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})
    return result.exit_code, result.output


def secret_file(path: Path, secret: str) -> Path:
    path.touch(mode=0o600)
    path.write_text(secret)  # no newline: ldapmodify -y reads the whole file
    return path


@pytest.fixture
def ldap() -> Iterator[Slapd]:
    server = Slapd(config_database=True)
    with server.start([computer_entry("web1", f"ou=computers,{SUFFIX}", address="10.9.0.1")]):
        yield server


class Init:
    """Runs ``directory init`` against the test slapd with the same names each time."""

    def __init__(self, ldap: Slapd, tmp: Path) -> None:
        self.ldap = ldap
        self.tmp = tmp
        self.admin_pw = secret_file(tmp / "admin.pw", ldap.root.password)
        assert ldap.config_admin is not None
        self.config_pw = secret_file(tmp / "config.pw", ldap.config_admin.password)
        self.service_pw = tmp / "service.pw"

    def args(self, *extra: str, config: bool = True) -> list[str]:
        argv = ["segment", "directory", "init", "--ldap-url", self.ldap.url, "--bind-dn", self.ldap.root.dn]
        argv += ["--password-file", str(self.admin_pw), "--base-dn", SUFFIX]
        argv += ["--monitored-group", MONITORED, "--protected-group", PROTECTED]
        argv += ["--service-password-file", str(self.service_pw)]
        if config:
            argv += ["--config-bind-dn", "cn=admin,cn=config", "--config-password-file", str(self.config_pw)]
        return [*argv, *extra]

    def run(self, *extra: str, config: bool = True) -> tuple[int, str]:
        return invoke(*self.args(*extra, config=config))

    def run_json(self, *extra: str, config: bool = True) -> dict[str, Any]:
        code, out = self.run("--json", *extra, config=config)
        assert code == 0, out
        data: dict[str, Any] = json.loads(out)
        return data


@pytest.fixture
def init(ldap: Slapd, tmp_path: Path) -> Init:
    return Init(ldap, tmp_path)


def exists(ldap: Slapd, dn: str) -> bool:
    listed = ldap.ldapsearch(SUFFIX, "(objectClass=*)", "dn").splitlines()
    return dn_key(dn) in {dn_key(line[4:]) for line in listed if line.startswith("dn: ")}


def write_member(port: int, dn: str, password: str, group: str, member: str) -> int:
    """Add ``member`` to ``group`` as ``dn`` with raw ldap3; the LDAP result code."""
    conn = ldap3.Connection(
        ldap3.Server("127.0.0.1", port=port, get_info=ldap3.NONE), dn, password, raise_exceptions=False
    )
    assert conn.bind(), conn.result
    try:
        conn.modify(group, {"member": [(ldap3.MODIFY_ADD, [member])]})  # type: ignore[no-untyped-call]
        return int(conn.result["result"])
    finally:
        conn.unbind()


def acl_values(ldap: Slapd) -> list[str]:
    assert ldap.config_admin is not None
    conn = ldap3.Connection(
        ldap3.Server("127.0.0.1", port=ldap.port, get_info=ldap3.NONE),
        ldap.config_admin.dn,
        ldap.config_admin.password,
    )
    assert conn.bind()
    try:
        conn.search("cn=config", f"(olcSuffix={SUFFIX})", ldap3.LEVEL, attributes=["olcAccess"])
        return [str(v) for v in conn.entries[0]["olcAccess"].values]
    finally:
        conn.unbind()


def server_directory(settings_block: str) -> Directory:
    """The segment server's adapter, configured from the printed block by its own settings loader."""
    config = SegmentSettings(**tomllib.loads(settings_block)).directory_config()
    assert isinstance(config, DirectoryConfig)
    return Directory(config)


# -- against a real slapd -------------------------------------------------------------


@needs_slapd
def test_init_makes_entries_and_only_the_service_account_may_change_the_protected_group(
    init: Init, ldap: Slapd
) -> None:
    code, out = init.run()
    assert code == 0, out
    for dn in (SERVICE_DN, MONITORED, PROTECTED):
        assert exists(ldap, dn), dn
    assert "created" in out and "directory_bind_dn" in out
    password = init.service_pw.read_text()
    assert stat.S_IMODE(init.service_pw.stat().st_mode) == 0o600
    assert password not in out  # not printed unless asked

    settings = out[out.index("directory_url") :]
    directory = server_directory(settings)
    web1 = f"cn=web1,ou=computers,{SUFFIX}"
    assert directory.add_protected(web1) is True
    assert directory.protected_members() == (web1,)
    assert directory.read_monitored().members == 0  # reads the monitored group (only its placeholder)

    # The harness writer may change groups under ou=groups by slapd.conf's rule ...
    other = f"cn=web2,ou=computers,{SUFFIX}"
    assert write_member(ldap.port, ldap.writer.dn, ldap.writer.password, MONITORED, other) == 0
    # ... but not the protected group: init's rule comes first.
    assert (
        write_member(ldap.port, ldap.writer.dn, ldap.writer.password, PROTECTED, other) == INSUFFICIENT_ACCESS
    )
    assert (
        write_member(ldap.port, ldap.reader.dn, ldap.reader.password, PROTECTED, other) == INSUFFICIENT_ACCESS
    )
    writer = Directory(
        DirectoryConfig(ldap.url, ldap.writer.dn, ldap.writer.password, SUFFIX, MONITORED, PROTECTED)
    )
    with pytest.raises(DirectoryRefused):
        writer.remove_protected(web1)
    assert writer.protected_members() == (web1,)  # others may read
    assert directory.remove_protected(web1) is True


@needs_slapd
def test_second_run_changes_nothing_and_says_so(init: Init, ldap: Slapd) -> None:
    first = init.run_json()
    assert first["changed"] is True
    assert {s["state"] for s in first["steps"]} == {"created"}
    rules, entries = acl_values(ldap), ldap.ldapsearch(SUFFIX)
    password = init.service_pw.read_text()

    second = init.run_json()  # the password file exists: no new account, so no new file needed
    assert second["changed"] is False
    assert {s["state"] for s in second["steps"]} == {"present"}
    assert second["password_file"] is None
    assert acl_values(ldap) == rules and ldap.ldapsearch(SUFFIX) == entries
    assert init.service_pw.read_text() == password
    code, out = init.run()
    assert code == 0 and "Nothing to change" in out


@needs_slapd
def test_without_config_admin_the_printed_ldif_sets_the_acl(init: Init, ldap: Slapd) -> None:
    code, out = init.run(config=False)
    assert code == 0, out
    assert "no --config-bind-dn" in out and "olcAccess: {0}to" in out
    assert (
        write_member(ldap.port, ldap.writer.dn, ldap.writer.password, PROTECTED, SERVICE_DN) == 0
    )  # no ACL yet
    start = out.index("# Apply as the cn=config admin")
    ldif = out[start : out.index("\n\n", start) + 1]
    assert ldap.config_admin is not None
    argv = ["ldapmodify", "-x", "-H", ldap.url, "-D", ldap.config_admin.dn, "-y", str(init.config_pw)]
    run(argv, input=ldif, env=command_env({"PATH": "/usr/bin:/bin", "LDAPNOINIT": "1"}))
    other = f"cn=web3,ou=computers,{SUFFIX}"
    assert (
        write_member(ldap.port, ldap.writer.dn, ldap.writer.password, PROTECTED, other) == INSUFFICIENT_ACCESS
    )
    code, out = init.run(config=False)
    assert code == 0 and "the ACL is not known to be set" in out and "Nothing to change" not in out
    assert init.run_json()["changed"] is False  # with the config admin now: the rule is found


@needs_slapd
def test_dry_run_prints_ldif_and_changes_nothing(init: Init, ldap: Slapd) -> None:
    before = ldap.ldapsearch(SUFFIX), acl_values(ldap)
    code, out = init.run("--dry-run")
    assert code == 0, out
    assert f"dn: {PROTECTED}" in out and "changetype: add" in out and "olcAccess: {0}to" in out
    assert (ldap.ldapsearch(SUFFIX), acl_values(ldap)) == before
    assert not init.service_pw.exists()


@needs_slapd
def test_bad_input_gives_a_clear_error_and_changes_nothing(init: Init, ldap: Slapd, tmp_path: Path) -> None:
    before = ldap.ldapsearch(SUFFIX), acl_values(ldap)
    argv = init.args()
    argv[argv.index("--protected-group") + 1] = f"cn=zg\x1bprotected,ou=groups,{SUFFIX}"
    code, out = invoke(*argv)
    assert code == 1 and "protected group DN is not acceptable" in out and "\x1b" not in out

    argv = init.args()
    argv[argv.index("--password-file") + 1] = str(tmp_path / "missing.pw")
    code, out = invoke(*argv)
    assert code == 1 and "--password-file: cannot read the password file" in out
    init.admin_pw.chmod(0o644)
    code, out = init.run()
    assert code == 1 and "readable by others" in out
    init.admin_pw.chmod(0o600)

    init.admin_pw.write_text("wrong")
    code, out = init.run()
    assert code == 1 and "rejected the bind" in out and "wrong" not in out
    init.admin_pw.write_text(ldap.root.password)

    init.service_pw.write_text("keep me")
    code, out = init.run()
    assert code == 1 and "exists" in out and "nothing was changed" in out
    assert init.service_pw.read_text() == "keep me"

    argv = init.args()
    argv[argv.index("--monitored-group") + 1] = f"cn=zg-monitored,ou=missing,{SUFFIX}"
    code, out = invoke(*argv)
    assert code == 1 and "ou=missing" in out and "does not exist" in out
    assert (ldap.ldapsearch(SUFFIX), acl_values(ldap)) == before
    assert not exists(ldap, SERVICE_DN)


@needs_slapd
def test_rendered_ldif_applies_on_openldap_and_its_acl_holds(ldap: Slapd, tmp_path: Path) -> None:
    spec = SetupSpec(SUFFIX, monitored_group_dn=MONITORED, protected_group_dn=PROTECTED)
    ldif = render_ldif(spec)
    acl_at = ldif.index("# Apply as the cn=config admin")
    ldap.ldapmodify(ldif[:acl_at])  # the entries, as the directory admin
    assert ldap.config_admin is not None
    config_pw = secret_file(tmp_path / "config.pw", ldap.config_admin.password)
    argv = ["ldapmodify", "-x", "-H", ldap.url, "-D", ldap.config_admin.dn, "-y", str(config_pw)]
    run(argv, input=ldif[acl_at:], env=command_env({"PATH": "/usr/bin:/bin", "LDAPNOINIT": "1"}))
    service_pw = "set-by-the-admin-" + ldap.reader.password
    ldap.ldapmodify(
        f"dn: {SERVICE_DN}\nchangetype: modify\nreplace: userPassword\nuserPassword: {service_pw}\n"
    )
    other = f"cn=web1,ou=computers,{SUFFIX}"
    assert (
        write_member(ldap.port, ldap.writer.dn, ldap.writer.password, PROTECTED, other) == INSUFFICIENT_ACCESS
    )
    assert write_member(ldap.port, SERVICE_DN, service_pw, PROTECTED, other) == 0


# -- renders (no connection) --------------------------------------------------------


GOLDEN_SPEC = {
    "base_dn": "OU=Zero Trust,DC=corp,DC=example",
    "service_name": "zg-segment",
    "monitored_group_dn": "CN=ZG Monitored,OU=Zero Trust,DC=corp,DC=example",
    "protected_group_dn": "CN=ZG Protected,OU=Zero Trust,DC=corp,DC=example",
}


@pytest.mark.parametrize(("render", "golden"), [("ldif", "openldap.ldif"), ("ad", "active-directory.ps1")])
def test_render_matches_golden(render: str, golden: str) -> None:
    spec = GOLDEN_SPEC
    code, out = invoke(
        "segment", "directory", "init", "--render", render, "--base-dn", spec["base_dn"],
        "--service-account", spec["service_name"], "--monitored-group", spec["monitored_group_dn"],
        "--protected-group", spec["protected_group_dn"],
    )  # fmt: skip
    assert code == 0, out
    expected = (GOLDEN / golden).read_text()
    assert out == expected
    assert out == (render_ldif if render == "ldif" else render_powershell)(SetupSpec(**spec))


def test_powershell_values_are_single_quoted_with_every_quote_doubled() -> None:
    script = render_powershell(SetupSpec("OU=O'Brien \u2019Lab,DC=corp,DC=example"))
    assert "$ServicePath   = 'OU=O''Brien \u2019\u2019Lab,DC=corp,DC=example'" in script
    assert "Read-Host -AsSecureString" in script and "AccountPassword $Password" in script
    for needed in (
        "SeDenyInteractiveLogonRight",
        "SeDenyRemoteInteractiveLogonRight",
        "Auth\\Basic",
        "AllowUnencrypted",
    ):
        assert needed in script


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base_dn": "dc=a,dc=b", "service_name": "bad name"}, "service account name"),
        ({"base_dn": "dc=a,dc=b", "protected_group_dn": "cn=p,dc=other"}, "under the base DN"),
        ({"base_dn": "dc=a,dc=b", "monitored_group_dn": "cn=g,dc=a,dc=b", "protected_group_dn": "CN=G,dc=a,dc=b"},
         "different groups"),
        ({"base_dn": 'dc=a",dc=b'}, "base DN is not acceptable"),
        ({"base_dn": "not a dn"}, "not a valid DN"),
        ({"base_dn": "dc=a,dc=b", "protected_group_dn": "cn=a$(x),dc=a,dc=b"}, "not acceptable"),
    ],
)  # fmt: skip
def test_spec_refuses_bad_names_without_echoing_them(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(SetupInputError, match=message.replace("(", r"\(")) as caught:
        SetupSpec(**kwargs)
    for value in kwargs.values():
        if value not in ("dc=a,dc=b",):
            assert value not in str(caught.value)
