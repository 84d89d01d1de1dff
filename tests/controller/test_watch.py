"""Config distribution: what each device role gets from GET /v1/snapshot, and the
long-poll watch (``?after=REV&wait=S``) that must see an admin's change within
one second.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from zerogate.model.snapshot import SCHEMA_VERSION, parse_snapshot
from zerogate.netops.controller_api import make_ssl_context
from zerogate.pki.ca import create_csr, generate_private_key
from zerogate.pki.wireguard import generate_keypair
from zerogate.testbed.lab import wait_for
from zerogate.testbed.localrun import AccountSession, LocalController

WATCH_LIMIT_SECONDS = 1.0  # requirement: a watcher sees a change within one second


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def get(controller: LocalController, path: str, token: str | None = None, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(
        base_url=controller.url, verify=make_ssl_context(controller.ca_pem), trust_env=False, timeout=30
    ) as h:
        return h.get(path, headers=headers, params=params)


def snapshot(controller: LocalController, credential: str) -> dict[str, Any]:
    r = get(controller, "/v1/snapshot", credential)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert int(r.headers["X-Zerogate-Revision"]) == body["revision"]
    return body


def health_revision(controller: LocalController) -> int:
    return int(get(controller, "/v1/health").json()["revision"])


def enroll(controller: LocalController, key: str, name: str) -> dict[str, Any]:
    _, wg_public = generate_keypair()
    with controller.client() as c:
        r: dict[str, Any] = c.post(
            "/v1/enroll",
            {
                "key": key,
                "name": name,
                "csr": create_csr(generate_private_key(), name).decode(),
                "wg_public_key": wg_public,
            },
        )
    return r | {"wg_public_key": wg_public}


@dataclass
class Site:
    """One small deployment: a user in a group, an application behind a connector
    group, a policy granting it, and an enrolled gateway, connector and client."""

    group: str
    connector_group: str
    application: str
    gateway: dict[str, Any]
    connector: dict[str, Any]
    client: dict[str, Any]
    user: AccountSession


_subnet_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def site(controller: LocalController, admin: AccountSession) -> Site:
    a = admin.client
    a.post("/v1/groups", {"name": "staff"})
    user = controller.create_user(admin, "watcher-user", ["staff"])
    a.post(
        "/v1/connector-groups",
        {"name": "dc1", "subnets": ["10.200.0.0/24"], "snat": False, "vrrp_virtual_ip": "10.200.0.254"},
    )
    a.post(
        "/v1/applications",
        {
            "name": "wiki",
            "connector_group": "dc1",
            "destinations": [{"address": "10.200.0.10/32", "protocol": "tcp", "ports": ["443"]}],
        },
    )
    a.post("/v1/policies", {"name": "staff-wiki", "groups": ["staff"], "applications": ["wiki"]})
    a.post(
        "/v1/gateways",
        {"name": "edge1", "public_endpoint": "edge1.example.test", "port_first": 51820, "port_last": 51900},
    )
    gw_key = a.post("/v1/gateways/edge1/provisioning-keys", {})["key"]
    gateway = enroll(controller, gw_key, "edge1-host")
    conn_key = a.post("/v1/connector-groups/dc1/provisioning-keys", {})["key"]
    connector = enroll(controller, conn_key, "dc1-a")
    _, client_wg = generate_keypair()
    client = user.client.post(
        "/v1/clients",
        {
            "name": "laptop",
            "csr": create_csr(generate_private_key(), "laptop").decode(),
            "wg_public_key": client_wg,
        },
    ) | {"wg_public_key": client_wg}
    return Site("staff", "dc1", "wiki", gateway, connector, client, user)


# ---------------------------------------------------------------------------
# what each role sees
# ---------------------------------------------------------------------------


def test_gateway_snapshot_has_connectors_clients_and_compiled_policy(
    controller: LocalController, site: Site
) -> None:
    snap = snapshot(controller, site.gateway["credential"])
    assert (snap["role"], snap["name"], snap["device_id"]) == ("gateway", "edge1", site.gateway["device_id"])
    assert snap["schema_version"] == SCHEMA_VERSION
    assert snap["gateway"] == {
        "name": "edge1",
        "public_endpoint": "edge1.example.test",
        "port_first": 51820,
        "port_last": 51900,
    }
    assert "100.64.0.1" in snap["tunnel_addresses"]
    assert snap["client_blocks"][0] == "100.64.0.0/16"

    connector = next(c for c in snap["connectors"] if c["name"] == "dc1-a")
    assert connector["wg_public_key"] == site.connector["wg_public_key"]
    assert connector["connector_group"] == "dc1" and "10.200.0.0/24" in connector["subnets"]

    client = next(c for c in snap["clients"] if c["device_id"] == site.client["device_id"])
    assert client["address"] == site.client["address"]
    assert client["wg_public_key"] == site.client["wg_public_key"]

    # The compiled policy: the staff policy lets the client's address reach exactly the wiki,
    # as the elements of the gateway's nftables sets.
    grants = [g for g in snap["policy"]["grants"] if site.client["address"] in g["sources"]]
    assert [g["name"] for g in grants] == ["staff-wiki"]
    assert (grants[0]["services"], grants[0]["icmp"], grants[0]["any_protocol"]) == (
        ["10.200.0.10 . tcp . 443"],
        [],
        [],
    )
    # what the gateway parses is what was sent
    assert parse_snapshot("gateway", snap).model_dump(mode="json") == snap

    # Nothing secret is distributed.
    text = str(snap)
    for secret in (site.gateway["credential"], site.connector["credential"], site.client["credential"]):
        assert secret not in text
    assert "zgd_" not in text and "PRIVATE KEY" not in text


def test_connector_snapshot_has_its_group_and_the_gateways(controller: LocalController, site: Site) -> None:
    snap = snapshot(controller, site.connector["credential"])
    assert (snap["role"], snap["name"]) == ("connector", "dc1-a")
    group = snap["connector_group"]
    assert group["name"] == "dc1" and "10.200.0.0/24" in group["subnets"]
    assert (group["snat"], group["vrrp_virtual_ip"]) == (False, "10.200.0.254")
    assert "100.64.0.0/16" in snap["client_blocks"]
    gw = next(g for g in snap["gateways"] if g["name"] == "edge1")
    assert gw == {
        "name": "edge1",
        "endpoint": "edge1.example.test",
        "port": 51820,
        "port_first": 51820,
        "port_last": 51900,
        "wg_public_key": site.gateway["wg_public_key"],
        "tunnel_address": "100.64.0.1",
    }
    # its own tunnel address, where the gateway probes it
    assert snap["address"].startswith("100.64.")
    # A connector learns nothing about clients or policy.
    assert "clients" not in snap and "policy" not in snap
    assert parse_snapshot("connector", snap).model_dump(mode="json") == snap


def test_client_snapshot_has_its_address_and_permitted_routes(
    controller: LocalController, site: Site
) -> None:
    snap = snapshot(controller, site.client["credential"])
    assert (snap["role"], snap["address"]) == ("client", site.client["address"])
    assert snap["routes"] == ["10.200.0.10/32"]
    assert snap["applications"] == ["wiki"]
    assert snap["session_expires_at"] is not None
    assert [g["name"] for g in snap["gateways"]] == ["edge1"]
    assert snap["gateways"][0]["wg_public_key"] == site.gateway["wg_public_key"]
    assert "connectors" not in snap and "policy" not in snap
    assert parse_snapshot("client", snap).model_dump(mode="json") == snap


def test_snapshot_is_for_enrolled_devices_only(
    controller: LocalController, admin: AccountSession, site: Site
) -> None:
    assert get(controller, "/v1/snapshot").status_code == 401
    assert get(controller, "/v1/snapshot", admin.token).status_code == 401
    assert get(controller, "/v1/snapshot", "zgd_" + "A" * 43).status_code == 401
    r = get(controller, "/v1/snapshot", site.connector["credential"])
    assert r.status_code == 200 and len(r.headers["ETag"]) == 32


# ---------------------------------------------------------------------------
# the watch
# ---------------------------------------------------------------------------


def test_watchers_see_an_admin_write_within_one_second(
    controller: LocalController,
    admin: AccountSession,
    site: Site,
    record_property: Callable[[str, object], None],
) -> None:
    rev = snapshot(controller, site.gateway["credential"])["revision"]
    watchers = {"gateway": site.gateway, "connector": site.connector, "client": site.client}
    seen: dict[str, tuple[int, float, dict[str, Any]]] = {}
    errors: list[BaseException] = []

    def watch(role: str, credential: str) -> None:
        try:
            r = get(controller, "/v1/snapshot", credential, after=rev, wait=10)
            seen[role] = (r.status_code, time.monotonic(), r.json() if r.status_code == 200 else {})
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=watch, args=(role, d["credential"])) for role, d in watchers.items()]
    started = time.monotonic()
    for t in threads:
        t.start()
    # Give the three requests time to reach the controller and park; that they
    # really waited is checked below (nobody answered before the write).
    time.sleep(0.5)
    assert seen == {} and errors == []

    subnet = f"10.201.{next(_subnet_numbers)}.0/24"
    write_started = time.monotonic()
    admin.client.patch("/v1/connector-groups/dc1", {"subnets": ["10.200.0.0/24", subnet]})
    write_done = time.monotonic()
    for t in threads:
        t.join(timeout=15)
    assert errors == []
    assert set(seen) == set(watchers)

    latencies = {}
    for role, (status, at, body) in seen.items():
        assert status == 200, role
        assert body["revision"] > rev
        assert at - started > 0.5  # it long-polled instead of answering at once
        latencies[role] = at - write_started
    gw = seen["gateway"][2]
    assert subnet in next(c for c in gw["connectors"] if c["name"] == "dc1-a")["subnets"]
    assert subnet in seen["connector"][2]["connector_group"]["subnets"]

    worst = max(latencies.values())
    record_property("watch_latency_seconds", round(worst, 4))
    print(
        "\nwatch latency (from start of the admin write): "
        + ", ".join(f"{role} {lat * 1000:.1f} ms" for role, lat in latencies.items())
        + f"; admin write itself took {(write_done - write_started) * 1000:.1f} ms"
    )
    assert worst < WATCH_LIMIT_SECONDS, latencies


def test_watch_without_a_change_answers_204_after_the_wait(controller: LocalController, site: Site) -> None:
    rev = snapshot(controller, site.connector["credential"])["revision"]
    t0 = time.monotonic()
    r = get(controller, "/v1/snapshot", site.connector["credential"], after=rev, wait=1)
    elapsed = time.monotonic() - t0
    assert r.status_code == 204 and r.content == b""
    assert 0.9 <= elapsed < 3.0, elapsed

    # Asking with an older revision answers at once with the current snapshot.
    t0 = time.monotonic()
    r = get(controller, "/v1/snapshot", site.connector["credential"], after=rev - 1, wait=10)
    assert r.status_code == 200 and r.json()["revision"] == rev
    assert time.monotonic() - t0 < 1.0


def test_revisions_are_monotonic_and_a_watch_loop_misses_nothing(
    controller: LocalController, admin: AccountSession, site: Site, unique: Callable[[str], str]
) -> None:
    start = snapshot(controller, site.gateway["credential"])["revision"]
    assert health_revision(controller) == start
    loop_seen: list[int] = []
    stop = threading.Event()

    def watch_loop() -> None:
        after = start
        while not stop.is_set():
            r = get(controller, "/v1/snapshot", site.gateway["credential"], after=after, wait=2)
            if r.status_code == 200:
                after = r.json()["revision"]
                loop_seen.append(after)

    loop = threading.Thread(target=watch_loop)
    loop.start()
    a = admin.client
    writes: list[Callable[[], object]] = [
        lambda: a.post("/v1/groups", {"name": unique("grp")}),
        lambda: a.post("/v1/gateways", {"name": unique("gw"), "public_endpoint": "192.0.2.7"}),
        lambda: a.patch("/v1/applications/wiki", {"description": unique("d")}),
        lambda: a.patch("/v1/policies/staff-wiki", {"description": unique("d")}),
        lambda: a.patch("/v1/connector-groups/dc1", {"description": unique("d")}),
    ]
    revisions = [start]
    try:
        for write in writes:
            write()
            revisions.append(health_revision(controller))
            assert snapshot(controller, site.connector["credential"])["revision"] == revisions[-1]
        # A change that devices do not need (an API token) does not wake them.
        a.post("/v1/tokens", {"name": unique("tok")})
        assert health_revision(controller) == revisions[-1]
        deadline = time.monotonic() + 10
        while (not loop_seen or loop_seen[-1] < revisions[-1]) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        loop.join(timeout=10)
    assert all(b > a for a, b in itertools.pairwise(revisions)), revisions
    assert loop_seen and loop_seen[-1] == revisions[-1]
    assert all(b > a for a, b in itertools.pairwise(loop_seen)), loop_seen


def cross_controller_latency(
    controller: LocalController, second: LocalController, admin: AccountSession, site: Site
) -> float:
    """A connector long-polls ``controller``; the admin writes through ``second``:
    seconds from the start of that write to the watcher's answer."""
    rev = snapshot(controller, site.connector["credential"])["revision"]
    outcome: dict[str, Any] = {}

    def watch() -> None:
        r = get(controller, "/v1/snapshot", site.connector["credential"], after=rev, wait=10)
        outcome["status"], outcome["at"] = r.status_code, time.monotonic()
        outcome["body"] = r.json() if r.status_code == 200 else {}

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.5)  # let the watch park on the first controller
    assert outcome == {}
    subnet = f"10.202.{next(_subnet_numbers)}.0/24"
    with second.client(admin.token) as other:
        subnets = other.get("/v1/connector-groups/dc1")["subnets"]
        write_started = time.monotonic()
        other.patch("/v1/connector-groups/dc1", {"subnets": [*subnets, subnet]})
    watcher.join(timeout=15)
    assert outcome["status"] == 200
    assert outcome["body"]["revision"] > rev
    assert subnet in outcome["body"]["connector_group"]["subnets"]
    at: float = outcome["at"]
    return at - write_started


def second_controller(controller: LocalController, tmp_path: Path) -> LocalController:
    """Another controller process of the same deployment (same data directory and database)."""
    if not controller.database:
        pytest.skip("several controllers share one deployment only on PostgreSQL")
    return LocalController(
        controller.data_dir,
        database=controller.database,
        log_path=tmp_path / "second.log",
        ca_pin=controller.ca_pin,
    )


def test_watch_sees_a_write_made_through_another_controller(
    controller: LocalController,
    admin: AccountSession,
    site: Site,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    second = second_controller(controller, tmp_path)
    try:
        second.start()
        assert second.url != controller.url
        latency = cross_controller_latency(controller, second, admin, site)
    finally:
        second.stop()
    record_property("cross_controller_watch_latency_seconds", round(latency, 4))
    print(f"\ncross-controller watch latency: {latency * 1000:.1f} ms")
    # The safety-net poll runs every 5 s: within a second means NOTIFY woke it.
    assert latency < WATCH_LIMIT_SECONDS


def listener_pids(server: Any, database_url: str) -> set[int]:
    """Backends of the controllers' revision LISTEN connections on this database."""
    out = server.psql(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'zerogate-revision-listen' "
        f"AND datname = '{database_url.rsplit('/', 1)[-1]}'"
    )
    return {int(pid) for pid in out.split()}


def test_a_controller_whose_listen_connection_is_killed_listens_again(
    controller: LocalController,
    admin: AccountSession,
    site: Site,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    record_property: Callable[[str, object], None],
) -> None:
    second = second_controller(controller, tmp_path)
    server = request.getfixturevalue("postgres_server")
    try:
        second.start()
        before: set[int] = set()

        def both_listening() -> bool:
            before.update(listener_pids(server, controller.database))
            return len(before) == 2

        wait_for(both_listening, 10, "both controllers to LISTEN")
        # As a PostgreSQL restart or a failover would: end both LISTEN sessions.
        server.psql(f"SELECT pg_terminate_backend(pid) FROM unnest(ARRAY{sorted(before)}) AS pid")
        wait_for(
            lambda: len(listener_pids(server, controller.database) - before) == 2,
            15,
            "both controllers to LISTEN again on new connections",
        )
        latency = cross_controller_latency(controller, second, admin, site)
    finally:
        second.stop()
    assert "revision listener lost its connection" in second.output()
    assert "revision listener lost its connection" in controller.output()
    record_property("cross_controller_watch_latency_after_relisten_seconds", round(latency, 4))
    print(f"\ncross-controller watch latency after re-LISTEN: {latency * 1000:.1f} ms")
    assert latency < WATCH_LIMIT_SECONDS


def test_a_forged_revision_notification_does_not_move_the_revision(
    controller: LocalController,
    admin: AccountSession,
    site: Site,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """Any database role may NOTIFY: the payload only prompts a read of the real
    revision, so a huge one cannot make every long-poll answer at once."""
    second = second_controller(controller, tmp_path)
    server = request.getfixturevalue("postgres_server")
    dbname = controller.database.rsplit("/", 1)[-1]
    try:
        second.start()
        wait_for(
            lambda: len(listener_pids(server, controller.database)) == 2, 10, "both controllers to LISTEN"
        )
        server.psql(
            "SELECT pg_notify('zerogate_revision', '999999999'), pg_notify('zerogate_revision', 'x;y')",
            dbname,
        )
        # Notifications arrive in commit order: once the first controller has
        # heard this write from the second, it has handled the forged ones too.
        with second.client(admin.token) as other:
            subnets = other.get("/v1/connector-groups/dc1")["subnets"]
            other.patch(
                "/v1/connector-groups/dc1", {"subnets": [*subnets, f"10.203.{next(_subnet_numbers)}.0/24"]}
            )
        real = health_revision(second)
        wait_for(lambda: health_revision(controller) >= real, 10, "the first controller to hear the write")
        assert health_revision(controller) == real
        r = get(controller, "/v1/snapshot", site.connector["credential"], after=real, wait=1)
        assert r.status_code == 204  # still long-polls: nothing newer than the real revision
    finally:
        second.stop()
    assert "ignored a malformed revision notification" in controller.output()


# ---------------------------------------------------------------------------
# signs of life and shutdown
# ---------------------------------------------------------------------------


def last_seen(admin: AccountSession, device_id: int) -> str | None:
    devices = admin.client.get("/v1/devices", {"role": "connector"})
    seen: str | None = next(d for d in devices if d["id"] == device_id)["last_seen_at"]
    return seen


def test_a_device_that_only_long_polls_is_seen(
    controller: LocalController, admin: AccountSession, site: Site, unique: Callable[[str], str]
) -> None:
    key = admin.client.post(f"/v1/connector-groups/{site.connector_group}/provisioning-keys", {})["key"]
    device = enroll(controller, key, unique("quiet"))
    assert last_seen(admin, device["device_id"]) is None  # enrolled, never heard from since
    rev = snapshot(controller, site.gateway["credential"])["revision"]

    r = get(controller, "/v1/snapshot", device["credential"], after=rev, wait=0.2)
    assert r.status_code == 204
    first = last_seen(admin, device["device_id"])
    assert first is not None, "a long-poll did not count as a sign of life"
    # Seen again within 30 s: not written again (a watch is not a write per request).
    assert get(controller, "/v1/snapshot", device["credential"], after=rev, wait=0.2).status_code == 204
    assert last_seen(admin, device["device_id"]) == first


def test_stopping_the_controller_ends_long_polls_cleanly_within_a_second(
    controller: LocalController, site: Site
) -> None:
    """Runs last in this module: it stops the shared controller and starts it again."""
    rev = snapshot(controller, site.connector["credential"])["revision"]
    outcome: dict[str, Any] = {}

    def watch() -> None:
        r = get(controller, "/v1/snapshot", site.connector["credential"], after=rev, wait=30)
        outcome.update(status=r.status_code, at=time.monotonic(), headers=r.headers, body=r.json())

    watcher = threading.Thread(target=watch)
    watcher.start()
    # A device between two reports: an idle kept-alive connection, which never
    # answers the server's TLS close and must not hold the shutdown either.
    idle = httpx.Client(base_url=controller.url, verify=make_ssl_context(controller.ca_pem), trust_env=False)
    assert idle.get("/v1/health").status_code == 200
    time.sleep(0.5)  # let the watch park; that it was parked is checked right below
    assert outcome == {}
    log_offset = len(controller.output())
    stopping = time.monotonic()
    try:
        controller.stop()
    finally:
        idle.close()
    stop_took = time.monotonic() - stopping
    watcher.join(timeout=10)
    log = controller.output()[log_offset:]
    try:
        assert outcome, f"the watch got no answer:\n{log}"
        assert outcome["status"] == 503, (outcome, log)
        assert outcome["body"]["detail"].startswith("controller going away"), outcome
        assert outcome["headers"]["Retry-After"] == "1"
        assert outcome["at"] - stopping < 1.0
        assert stop_took < 1.0, f"stopping took {stop_took:.2f} s:\n{log}"
        assert "Traceback" not in log and "graceful shutdown exceeded" not in log, log
    finally:
        controller.start()
    print(f"\ncontroller stopped in {stop_took * 1000:.0f} ms; the watch was answered 503 going away")
