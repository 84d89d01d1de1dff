"""API fuzzing: every operation of the controller's OpenAPI document, driven by
schemathesis against the real controller over pinned HTTPS (issue 8, "Keep it fixed").

For each operation schemathesis sends its documented examples, boundary and
type-violating values (coverage phase) and then random valid and invalid
requests (fuzzing phase). Every response must be below 500 and match the
document: a documented status code, content type, headers and body schema,
and invalid input must not be accepted (negative_data_rejection).

Each operation is called with the credential it is meant for (see
``credentials_for``): none for sign-in, enrollment and the public endpoints;
the admin's session token for administration; a user's session token for
client registration and sessions; a connector's device credential for
snapshots and reports; a segment server's device credential for its snapshot
and report (and the connector's, which must be refused); every kind for whoami. The fuzzer must not cut off its
own access, so ``POST /v1/auth/logout`` runs with a fresh throwaway API token
per example, and mutations aimed at the fuzzing identities themselves (revoking
their tokens or devices, deleting, disabling or resetting the fuzzing user or
connector) are not sent: they would turn the rest of the run into a stream of
401s that tests nothing. The server's own guards (an admin cannot delete,
disable or reset itself) are fuzzed, not bypassed.

The normal suite runs a small, reproducible sample (fixed seed, few examples
per operation). ``make fuzz`` runs the long version: more examples and a new
random seed each time, printed on failure so a finding can be replayed with
``ZEROGATE_FUZZ_SEED=<seed>``. Environment:

* ``ZEROGATE_FUZZ_EXAMPLES``: examples per operation in the fuzzing phase (default 5).
* ``ZEROGATE_FUZZ_SEED``: an integer, or ``random`` (default: a fixed seed).
* ``ZEROGATE_FUZZ_DATABASES``: comma-separated engines to fuzz, ``sqlite`` and/or
  ``postgresql`` (default: ``postgresql`` only, to keep ``make test`` short;
  ``make fuzz`` runs both). PostgreSQL is the default because it is the stricter
  engine (no NUL in text, typed integers), so it turns more unvalidated input
  into a 500 than SQLite does; ``tests/controller/test_input_strictness.py`` and
  ``test_api_boundary.py`` still cover the hostile values on both engines.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
import requests
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from zerogate.pki.ca import create_csr, generate_private_key
from zerogate.pki.wireguard import generate_keypair
from zerogate.testbed.localrun import LocalController

EXAMPLES = int(os.environ.get("ZEROGATE_FUZZ_EXAMPLES", "5"))
_ENGINES = {
    "sqlite": pytest.param("sqlite"),
    "postgresql": pytest.param("postgresql", marks=pytest.mark.postgres),
}
_chosen = [e.strip() for e in os.environ.get("ZEROGATE_FUZZ_DATABASES", "postgresql").split(",") if e.strip()]
if not _chosen or not set(_chosen) <= set(_ENGINES):
    raise ValueError(f"ZEROGATE_FUZZ_DATABASES: choose from {', '.join(_ENGINES)}")
# Overrides the parameters of the shared module-scoped `controller` fixture (conftest.py).
pytestmark = pytest.mark.parametrize(
    "controller", [_ENGINES[e] for e in _ENGINES if e in _chosen], indirect=True, scope="module"
)
_seed = os.environ.get("ZEROGATE_FUZZ_SEED", "")
# A fixed seed keeps CI reproducible; schemathesis derives one seed per
# operation from it, so operations still get different inputs from each other.
SEED = random.randrange(2**32) if _seed == "random" else int(_seed or "20260808")

_ALL_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# Triage: ZEROGATE_FUZZ_CHECKS=not_a_server_error shows the 5xx that a
# conformance failure earlier in the same operation would otherwise hide.
_only = {c for c in os.environ.get("ZEROGATE_FUZZ_CHECKS", "").split(",") if c}
CHECKS = [c for c in _ALL_CHECKS if not _only or c.__name__ in _only]
# Triage: ZEROGATE_FUZZ_TRIAGE=1 counts every failure instead of stopping an
# operation at its first one, and lists them at the end (run with -s or -rA).
TRIAGE = os.environ.get("ZEROGATE_FUZZ_TRIAGE", "") == "1"

FUZZ_USER, FUZZ_SITE, FUZZ_CONNECTOR, FUZZ_SEGMENT = "fuzz-user", "fuzz-site", "fuzz-conn", "fuzz-seg"

# Which credential each operation is fuzzed with ("admin" for all others).
# None is an anonymous request; "throwaway" a fresh admin API token per example.
_CREDENTIALS: dict[str, list[str | None]] = {
    "POST /v1/auth/bootstrap": [None],
    "POST /v1/auth/activate": [None],
    "POST /v1/auth/totp/confirm": [None],
    "POST /v1/auth/login": [None],
    "POST /v1/auth/logout": ["throwaway"],
    "GET /v1/auth/whoami": [None, "admin", "user", "device"],
    "GET /v1/tokens": ["admin", "user"],
    "DELETE /v1/tokens/{token_id}": ["admin", "user"],
    "GET /v1/ca": [None],
    "GET /v1/health": [None],
    "POST /v1/enroll": [None],
    "POST /v1/enroll/preflight": [None],
    "POST /v1/clients": ["user"],
    "POST /v1/clients/{device_id}/session": ["user"],
    "GET /v1/snapshot": ["device", "segment"],
    "POST /v1/report": ["device"],
    "POST /v1/segment/report": ["segment", "device"],
}


def credentials_for(label: str) -> list[str | None]:
    return _CREDENTIALS.get(label, ["admin"])


@dataclass
class FuzzWorld:
    controller: LocalController
    http: requests.Session
    tokens: dict[str, str]
    # Identities the run depends on; mutations aimed at them are not sent.
    own_token_ids: set[int] = field(default_factory=set)
    own_device_ids: set[int] = field(default_factory=set)
    own_names: set[str] = field(default_factory=lambda: {FUZZ_USER, FUZZ_CONNECTOR, FUZZ_SEGMENT})
    # Requests sent per operation, reported at the end (pytest -rA or -s shows it).
    sent: Counter[str] = field(default_factory=Counter)
    hostile_sent: Counter[str] = field(default_factory=Counter)
    findings: Counter[str] = field(default_factory=Counter)
    seconds: Counter[str] = field(default_factory=Counter)

    def throwaway_token(self) -> str:
        response = self.http.post(
            f"{self.controller.url}/v1/tokens",
            json={"name": "fuzz-throwaway", "ttl_days": 1},
            headers={"Authorization": f"Bearer {self.tokens['admin']}"},
        )
        response.raise_for_status()
        token: str = response.json()["token"]
        return token

    def aims_at_itself(self, case: schemathesis.Case) -> bool:
        """Would this request revoke, delete, disable or reset a fuzzing identity?"""
        if case.method.upper() == "GET" or case.operation.label == "POST /v1/clients/{device_id}/session":
            return False
        for name, value in (case.path_parameters or {}).items():
            text = str(value).strip().lower()
            if name == "token_id" and _as_int(text) in self.own_token_ids:
                return True
            if name == "device_id" and _as_int(text) in self.own_device_ids:
                return True
            if text in self.own_names:
                return True
        return False


def _as_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


@pytest.fixture(scope="module")
def world(controller: LocalController, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzWorld]:
    # A config watch waits up to watch_max_seconds for a newer revision; the
    # fuzzer asks for that often, so make the wait short (it is still exercised).
    controller.stop()
    controller.extra_env["ZEROGATE_WATCH_MAX_SECONDS"] = "1"
    controller.start()
    admin = controller.bootstrap_admin()
    c = admin.client
    user = controller.create_user(admin, FUZZ_USER, [])
    c.post("/v1/connector-groups", {"name": FUZZ_SITE, "subnets": ["10.77.0.0/24"]})
    key = c.post(f"/v1/connector-groups/{FUZZ_SITE}/provisioning-keys", {"max_uses": 1})
    with controller.client() as anonymous:
        enrolled = anonymous.post(
            "/v1/enroll",
            {
                "key": key["key"],
                "name": FUZZ_CONNECTOR,
                "csr": create_csr(generate_private_key(), FUZZ_CONNECTOR).decode(),
                "wg_public_key": generate_keypair()[1],
            },
        )
    c.post("/v1/segment-servers", {"name": FUZZ_SEGMENT})
    segment_key = c.post(f"/v1/segment-servers/{FUZZ_SEGMENT}/provisioning-keys", {"max_uses": 1})
    with controller.client() as anonymous:
        segment = anonymous.post(
            "/v1/enroll",
            {
                "key": segment_key["key"],
                "name": FUZZ_SEGMENT,
                "csr": create_csr(generate_private_key(), FUZZ_SEGMENT).decode(),
                "wg_public_key": generate_keypair()[1],
            },
        )
    ca_file = tmp_path_factory.mktemp("fuzz") / "ca.pem"
    ca_file.write_bytes(controller.ca_pem)
    http = requests.Session()
    http.trust_env = False  # never through a proxy from the environment
    http.verify = str(ca_file)
    world = FuzzWorld(
        controller,
        http,
        tokens={
            "admin": admin.token,
            "user": user.token,
            "device": enrolled["credential"],
            "segment": segment["credential"],
        },
        own_token_ids={t["id"] for t in c.get("/v1/tokens")},
        own_device_ids={d["id"] for d in c.get("/v1/devices")},
    )
    yield world
    print(
        f"fuzz: {sum(world.sent.values())} generated and {sum(world.hostile_sent.values())} hostile "
        f"requests to {len(world.sent)} operations, seed {SEED}"
    )
    for label, count in sorted(world.sent.items()):
        print(f"  {count:5d} {world.hostile_sent[label]:3d} {world.seconds[label]:6.1f} s  {label}")
    for finding, count in sorted(world.findings.items()):
        print(f"  finding x{count}: {finding}")
    # Open kept-alive connections would make the controller's shutdown wait.
    http.close()
    user.client.close()
    c.close()


@pytest.fixture(scope="module")
def fuzz_schema(world: FuzzWorld) -> schemathesis.BaseSchema:
    with world.controller.client() as c:
        document = c.get("/openapi.json")
    config = SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "base-url": world.controller.url,
            "tls-verify": str(world.http.verify),
            "request-timeout": 30,
            "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
            "generation": {"max-examples": EXAMPLES, "database": "none"},
            "phases": {"stateful": {"enabled": False}},
        }
    )
    return schemathesis.openapi.from_dict(document, config=config)


schema = schemathesis.pytest.from_fixture("fuzz_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    # schemathesis' lazy loader reads and relabels ``item._nodeid``, which
    # pytest 9 no longer has (it keeps the id in ``item.nodeid``). A plain
    # attribute satisfies it; pytest's own reporting keeps using ``nodeid``.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


# What a JSON parser accepts but a schema-driven generator never sends: a lone
# surrogate, non-finite and overflowing numbers, integers past 64 bits, deep
# nesting. One of them replaces one field of a generated body (or an integer
# path or query parameter) in an extra request per example, up to
# HOSTILE_PER_OPERATION per operation; the answer must still be a documented 4xx.
HOSTILE_JSON = (
    '"x\\ud800"',
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "9223372036854775808",
    "-9223372036854775809",
    "[" * 5000 + "]" * 5000,
)
HOSTILE_IDS = (2**63, -(2**63) - 1, 10**40)
HOSTILE_PER_OPERATION = 2 * len(HOSTILE_JSON)
_MARK = "zerogate-fuzz-hostile-value"


def hostile_variant(case: schemathesis.Case, n: int) -> tuple[str, dict[str, Any], str | None] | None:
    """The n-th hostile variant of a case: (path, query, raw JSON body), or None when it has nothing to vary."""
    path_parameters = dict(case.path_parameters or {})
    query = dict(case.query or {})
    body: str | None = None
    if isinstance(case.body, dict | list | str | int | float):  # not NotSet (no body)
        body = json.dumps(case.body)
    if isinstance(case.body, dict) and case.body:
        keys = sorted(case.body)
        key = keys[(n // len(HOSTILE_JSON)) % len(keys)]
        marked = json.dumps({**case.body, key: _MARK})
        body = marked.replace(json.dumps(_MARK), HOSTILE_JSON[n % len(HOSTILE_JSON)])
    else:
        numbers = [
            (params, name)
            for params in (path_parameters, query)
            for name, value in params.items()
            if isinstance(value, int) and not isinstance(value, bool)
        ]
        if not numbers:
            return None
        params, name = numbers[n % len(numbers)]
        params[name] = HOSTILE_IDS[n % len(HOSTILE_IDS)]
    path = case.path
    for name, value in path_parameters.items():
        path = path.replace(f"{{{name}}}", quote(str(value), safe=""))
    return path, query, body


def _documented_statuses(case: schemathesis.Case) -> set[str]:
    responses: dict[str, Any] = case.operation.definition.raw.get("responses", {})
    return set(responses)


def _kind(body: str | None, path: str, query: dict[str, Any]) -> str:
    """Which hostile value a variant carries, for the failure message."""
    where = body if body is not None else f"{path} {query}"
    for value in sorted((*HOSTILE_JSON, *map(str, HOSTILE_IDS)), key=len, reverse=True):
        if value in where:
            return "value " + (value if len(value) < 24 else "(nested 5000 deep)")
    return "value"


def send_hostile(
    world: FuzzWorld, case: schemathesis.Case, headers: dict[str, str], credential: str | None
) -> None:
    if case.method.upper() != case.operation.method.upper():
        return  # schemathesis' probe of an undeclared method, not a request to vary
    label = case.operation.label
    n = world.hostile_sent[label]
    variant = hostile_variant(case, n) if n < HOSTILE_PER_OPERATION else None
    if variant is None:
        return
    world.hostile_sent[label] += 1
    path, query, body = variant
    log = world.controller.log_path
    offset = os.path.getsize(log) if log else 0
    response = world.http.request(
        case.method.upper(),
        world.controller.url + path,
        params=query,
        data=None if body is None else body.encode(),
        headers=headers | ({"Content-Type": "application/json"} if body is not None else {}),
        timeout=30,
    )
    status = str(response.status_code)
    documented = _documented_statuses(case)
    problem = (
        "server error"
        if response.status_code >= 500
        else "undocumented status"
        if status not in documented and "default" not in documented
        else ""
    )
    if problem:
        shown = body if body is None or len(body) < 300 else body[:150] + " ... " + body[-100:]
        raise AssertionError(
            f"{problem} {status} for a hostile {_kind(body, path, query)} in {label} "
            f"({credential or 'anonymous'}):\n"
            f"  {case.method.upper()} {path} query={query!r}\n  body: {shown}\n"
            f"  response: {response.text[:500]}\n"
            f"controller log during the request:\n{_log_since(world.controller, offset)}"
        )


def _log_since(controller: LocalController, offset: int) -> str:
    if controller.log_path is None:
        return ""
    with open(controller.log_path, "rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    return text[-6000:]


@schema.parametrize()
def test_api_fuzz(case: schemathesis.Case, world: FuzzWorld) -> None:
    if world.aims_at_itself(case):
        return
    started = time.monotonic()
    try:
        _fuzz_one(case, world)
    finally:
        world.seconds[case.operation.label] += time.monotonic() - started


def _fuzz_one(case: schemathesis.Case, world: FuzzWorld) -> None:
    log = world.controller.log_path
    for credential in credentials_for(case.operation.label):
        headers: dict[str, str] = {}
        if credential is not None:
            token = world.throwaway_token() if credential == "throwaway" else world.tokens[credential]
            headers["Authorization"] = f"Bearer {token}"
        offset = os.path.getsize(log) if log else 0
        world.sent[case.operation.label] += 1
        try:
            case.call_and_validate(session=world.http, headers=headers, checks=CHECKS)
        except BaseExceptionGroup as failure:  # schemathesis' FailureGroup
            if TRIAGE:
                for f in failure.exceptions:
                    first = str(getattr(f, "message", "")).strip().splitlines()[:1]
                    world.findings[f"{case.operation.label}: {getattr(f, 'title', f)}: {first}"] += 1
                continue
            # Shown under schemathesis' report and its curl command that reproduces the request.
            failure.add_note(
                f"credential: {credential or 'anonymous'}; seed {SEED} "
                f"(replay with ZEROGATE_FUZZ_SEED={SEED})\n"
                f"controller log during the request:\n{_log_since(world.controller, offset)}"
            )
            raise
        try:
            send_hostile(world, case, headers, credential)
        except AssertionError as failure:
            if not TRIAGE:
                raise
            world.findings[str(failure).split(":", 1)[0] + f" [{case.operation.label}]"] += 1


def test_fuzz_covers_every_operation_with_its_credential(fuzz_schema: schemathesis.BaseSchema) -> None:
    """The credential table names only operations that exist (a renamed path would fall back to admin)."""
    labels = {op.ok().label for op in fuzz_schema.get_all_operations()}
    assert set(_CREDENTIALS) <= labels, sorted(set(_CREDENTIALS) - labels)


def test_fuzzing_identities_still_work(world: FuzzWorld) -> None:
    """The harness's premise, checked before and (in file order) after the fuzzing: each
    credential still works, so the fuzzer tested more than a stream of 401s."""
    base = world.controller.url
    for kind in ("admin", "user", "device", "segment"):
        r = world.http.get(
            f"{base}/v1/auth/whoami", headers={"Authorization": f"Bearer {world.tokens[kind]}"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["kind"] == ("device" if kind == "segment" else kind)
