"""Policy compiler: unit tests per decision reason, plus properties against a
deliberately naive reference evaluator."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zerogate.model.policy import (
    AppSpec,
    ClientDevice,
    Destination,
    PolicyInputs,
    PolicySpec,
    PortRange,
    TimeWindow,
    UserSpec,
)
from zerogate.policy.compiler import (
    AllowTuple,
    PolicyGrant,
    Rule,
    compile_policy,
    explain,
    merge_port_ranges,
)

UTC = dt.UTC
NOW = dt.datetime(2024, 1, 1, 12, tzinfo=UTC)  # a Monday, noon
LAN = IPv4Network("10.1.0.0/24")
DB = IPv4Network("10.2.0.5/32")
V6 = IPv6Network("fd00:1::/64")
OFFICE_HOURS = TimeWindow(frozenset(range(5)), dt.time(9), dt.time(17))
NIGHT = TimeWindow(frozenset(range(7)), dt.time(22), dt.time(6))


def ports(*specs: str) -> tuple[PortRange, ...]:
    return tuple(PortRange.parse(s) for s in specs)


WEB = AppSpec(1, "web", 1, (Destination(LAN, "tcp", ports("80", "443")),))
SSH = AppSpec(2, "ssh", 1, (Destination(LAN, "tcp", ports("22")),))
PG = AppSpec(3, "pg", 2, (Destination(DB, "tcp", ports("5432")), Destination(DB, "icmp")))
V6APP = AppSpec(4, "v6", 2, (Destination(V6, "any"),))

ALICE = UserSpec(1, "alice", frozenset({10}))
BOB = UserSpec(2, "bob", frozenset({20}))
CAROL = UserSpec(3, "carol", frozenset({10}), enabled=False)
DAVE = UserSpec(4, "dave", frozenset())


def base_inputs(*policies: PolicySpec, devices: tuple[ClientDevice, ...] = ()) -> PolicyInputs:
    return PolicyInputs(
        users=(ALICE, BOB, CAROL, DAVE),
        apps=(WEB, SSH, PG, V6APP),
        policies=policies,
        devices=devices,
    )


def device(n: int, user: int, mfa: bool = True) -> ClientDevice:
    return ClientDevice(n, user, IPv4Address(f"100.64.0.{n + 1}"), mfa)


# --- compile_policy ---------------------------------------------------------------


def test_compile_builds_one_grant_per_policy() -> None:
    inputs = base_inputs(
        PolicySpec(100, "web", frozenset({10, 20}), frozenset({1})),
        PolicySpec(101, "ssh", frozenset({10}), frozenset({2})),
        devices=(device(1, 1), device(2, 1), device(3, 2), device(4, 3), device(5, 4)),
    )
    compiled = compile_policy(inputs, now=NOW)
    a1, a2, b, carol = (IPv4Address(f"100.64.0.{n}") for n in (2, 3, 4, 5))
    # Disabled carol and group-less dave are in no grant.
    assert compiled.policies == {
        100: PolicyGrant(
            100, "web", (a1, a2, b), (Rule(LAN, "tcp", 80, 80, 100), Rule(LAN, "tcp", 443, 443, 100))
        ),
        101: PolicyGrant(101, "ssh", (a1, a2), (Rule(LAN, "tcp", 22, 22, 101),)),
    }
    assert compiled.next_change is None
    assert compiled.rules_for_source(a1) == (
        Rule(LAN, "tcp", 22, 22, 101),
        Rule(LAN, "tcp", 80, 80, 100),
        Rule(LAN, "tcp", 443, 443, 100),
    )
    assert compiled.rules_for_source(carol) == ()
    tuples = list(compiled.expand())
    assert tuples == sorted(tuples)
    assert AllowTuple(b, LAN, "tcp", 443, 443) in tuples
    assert len(tuples) == compiled.count_tuples() == 3 + 3 + 2


def test_policies_without_sources_or_rules_get_no_grant() -> None:
    inputs = base_inputs(
        PolicySpec(1, "nobody", frozenset({99}), frozenset({1})),
        PolicySpec(2, "dangling", frozenset({10}), frozenset({42})),
        PolicySpec(3, "carol-only", frozenset({10}), frozenset({1})),
        devices=(device(1, 3),),  # carol is disabled
    )
    compiled = compile_policy(inputs, now=NOW)
    assert compiled.policies == {}
    assert list(compiled.expand()) == [] and compiled.count_tuples() == 0


def test_adjacent_ranges_merge_within_and_across_policies() -> None:
    wide = AppSpec(5, "wide", 1, (Destination(LAN, "tcp", ports("1000-1999", "2000-2100")),))
    all_tcp = AppSpec(6, "all", 1, (Destination(LAN, "tcp"),))
    low = AppSpec(7, "low", 1, (Destination(DB, "tcp", ports("5000-5432")),))
    high = AppSpec(8, "high", 1, (Destination(DB, "tcp", ports("5433")),))
    inputs = PolicyInputs(
        users=(ALICE,),
        apps=(wide, SSH, all_tcp, low, high),
        policies=(
            PolicySpec(1, "a", frozenset({10}), frozenset({5, 7})),
            PolicySpec(2, "b", frozenset({10}), frozenset({2, 6, 8})),
        ),
        devices=(device(1, 1),),
    )
    compiled = compile_policy(inputs, now=NOW)
    assert compiled.policies[1].rules == (
        Rule(LAN, "tcp", 1000, 2100, 1),
        Rule(DB, "tcp", 5000, 5432, 1),
    )
    assert compiled.policies[2].rules == (Rule(LAN, "tcp", 0, 65535, 2), Rule(DB, "tcp", 5433, 5433, 2))
    assert [(t.destination, t.first_port, t.last_port) for t in compiled.expand()] == [
        (LAN, 0, 65535),
        (DB, 5000, 5433),
    ]
    assert compiled.count_tuples() == 2


def test_mfa_window_and_connector_group_filters() -> None:
    inputs = base_inputs(
        PolicySpec(1, "pg-mfa", frozenset({10}), frozenset({3}), require_mfa=True),
        PolicySpec(2, "web-office", frozenset({10}), frozenset({1}), window=OFFICE_HOURS),
        PolicySpec(3, "ssh-night", frozenset({10}), frozenset({2}), window=NIGHT),
        PolicySpec(4, "v6-off", frozenset({10}), frozenset({4}), enabled=False),
        devices=(device(1, 1, mfa=True), device(2, 1, mfa=False)),
    )
    with_mfa, without = IPv4Address("100.64.0.2"), IPv4Address("100.64.0.3")
    compiled = compile_policy(inputs, now=NOW)
    assert set(compiled.policies) == {1, 2}
    assert compiled.policies[1].sources == (with_mfa,)
    assert compiled.policies[2].sources == (with_mfa, without)
    assert Rule(DB, "icmp", 0, 65535, 1) in compiled.policies[1].rules  # icmp means every "port"
    assert {r.policy_id for r in compiled.rules_for_source(without)} == {2}
    # Office hours end at 17:00 before the night window opens at 22:00.
    assert compiled.next_change == NOW.replace(hour=17)
    only_group_2 = compile_policy(inputs, now=NOW, connector_group_ids=frozenset({2}))
    assert set(only_group_2.policies) == {1}
    assert only_group_2.next_change is None  # windowed policies have no apps here
    night = compile_policy(inputs, now=NOW.replace(hour=23))
    assert set(night.policies) == {1, 3}
    assert {r.policy_id for r in night.rules_for_source(without)} == {3}


def test_grants_keep_their_key_when_other_policies_change() -> None:
    p1 = PolicySpec(1, "web", frozenset({10}), frozenset({1}))
    p2 = PolicySpec(2, "ssh", frozenset({20}), frozenset({2}))
    before = compile_policy(base_inputs(p1, devices=(device(1, 1),)), now=NOW)
    after = compile_policy(base_inputs(p1, p2, devices=(device(1, 1), device(2, 2))), now=NOW)
    assert before == compile_policy(base_inputs(p1, devices=(device(1, 1),)), now=NOW)
    assert before.policies[1] == after.policies[1]
    assert set(after.policies) == {1, 2}


def test_compile_requires_aware_now() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        compile_policy(base_inputs(), now=dt.datetime(2024, 1, 1))


def test_merge_port_ranges() -> None:
    assert merge_port_ranges([(5, 9), (1, 3), (4, 4), (20, 30), (25, 26)]) == [(1, 9), (20, 30)]


# --- explain: one test per reason -------------------------------------------------

POLICIES = (
    PolicySpec(1, "web-all", frozenset({10, 20}), frozenset({1})),
    PolicySpec(2, "ssh-mfa", frozenset({10}), frozenset({2}), require_mfa=True),
    PolicySpec(3, "pg-office", frozenset({10}), frozenset({3}), window=OFFICE_HOURS),
    PolicySpec(4, "v6-disabled", frozenset({10}), frozenset({4}), enabled=False),
)


def ask(user: int, dest: str, proto: str = "tcp", port: int | None = 22, **kw: object):  # type: ignore[no-untyped-def]
    return explain(
        base_inputs(*POLICIES),
        user_id=user,
        destination=ip_address(dest),
        protocol=proto,  # type: ignore[arg-type]
        port=port,
        now=kw.pop("now", NOW),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def test_explain_unknown_disabled_and_groupless_users() -> None:
    assert ask(99, "10.1.0.7").reason == "unknown user id 99"
    assert ask(3, "10.1.0.7").reason == "user 'carol' is disabled"
    decision = ask(4, "10.1.0.7")
    assert not decision.allowed
    assert decision.reason == "user 'dave' is in no group, so no policy applies"


def test_explain_allowed_names_policy_and_application() -> None:
    decision = ask(2, "10.1.0.7", port=443)
    assert decision.allowed
    assert (decision.policy_id, decision.policy_name) == (1, "web-all")
    assert decision.reason == "allowed by policy 'web-all' (application 'web')"


def test_explain_no_policy_and_no_application() -> None:
    decision = ask(2, "10.1.0.7", port=22)  # ssh exists, but not for bob's group
    assert not decision.allowed and decision.policy_id is None
    assert "no policy grants any of user 'bob''s groups an application covering" in decision.reason
    assert "tcp 10.1.0.7 port 22" in decision.reason
    assert "applications covering it: 'ssh'" in decision.reason
    nothing = ask(1, "192.0.2.1", port=22)
    assert "no application covers it" in nothing.reason


def test_explain_requires_mfa() -> None:
    decision = ask(1, "10.1.0.7", port=22, mfa=False)
    assert not decision.allowed and decision.policy_id == 2
    assert "policy 'ssh-mfa' matched" in decision.reason
    assert "requires MFA" in decision.reason
    assert ask(1, "10.1.0.7", port=22, mfa=True).allowed


def test_explain_outside_window_says_when_it_opens() -> None:
    evening = NOW.replace(hour=20)
    decision = ask(1, "10.2.0.5", port=5432, now=evening)
    assert not decision.allowed and decision.policy_name == "pg-office"
    assert "outside its time window (Mon,Tue,Wed,Thu,Fri 09:00-17:00 UTC" in decision.reason
    assert "opens next at 2024-01-02T09:00:00+00:00" in decision.reason
    assert ask(1, "10.2.0.5", "icmp", None).allowed


def test_explain_disabled_policy_and_icmp_any() -> None:
    decision = ask(1, "fd00:1::9", "icmp", None)
    assert not decision.allowed and decision.policy_id == 4
    assert decision.reason.endswith("but is disabled")


def test_explain_prefers_the_closest_near_miss() -> None:
    # Both policies cover ssh; one fails on MFA, the other on MFA and window.
    both = PolicySpec(5, "ssh-night-mfa", frozenset({10}), frozenset({2}), True, NIGHT)
    inputs = base_inputs(both, *POLICIES)
    decision = explain(
        inputs,
        user_id=1,
        destination=IPv4Address("10.1.0.7"),
        protocol="tcp",
        port=22,
        now=NOW,
        mfa=False,
    )
    assert decision.policy_id == 2
    mfa_and_window = explain(
        base_inputs(both),
        user_id=1,
        destination=IPv4Address("10.1.0.7"),
        protocol="tcp",
        port=22,
        now=NOW,
        mfa=False,
    )
    assert "requires MFA (sign in again with a second factor) and is outside" in (mfa_and_window.reason)


@pytest.mark.parametrize(
    ("proto", "port", "message"),
    [("icmp", 1, "icmp has no ports"), ("tcp", None, "needs a port"), ("tcp", 70000, "port")],
)
def test_explain_rejects_bad_queries(proto: str, port: int | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ask(1, "10.1.0.7", proto, port)


# --- properties against a naive reference ---------------------------------------

PREFIXES = [
    IPv4Network("10.0.0.0/8"),
    IPv4Network("10.1.0.0/24"),
    IPv4Network("10.1.0.128/25"),
    IPv4Network("192.168.1.7/32"),
    IPv6Network("fd00::/64"),
]
PROBES: list[IPv4Address | IPv6Address] = [
    IPv4Address("10.1.0.1"),
    IPv4Address("10.1.0.200"),
    IPv4Address("10.9.9.9"),
    IPv4Address("192.168.1.7"),
    IPv4Address("172.16.0.1"),
    IPv6Address("fd00::1"),
]

port_ranges = st.tuples(st.integers(1, 10), st.integers(0, 3)).map(lambda t: PortRange(t[0], t[0] + t[1]))


@st.composite
def destinations(draw: st.DrawFn) -> Destination:
    proto = draw(st.sampled_from(["tcp", "udp", "icmp", "any"]))
    prefix = draw(st.sampled_from(PREFIXES))
    if proto in ("tcp", "udp"):
        return Destination(prefix, proto, tuple(draw(st.lists(port_ranges, max_size=4))))
    return Destination(prefix, proto)


windows = st.builds(
    TimeWindow,
    days=st.frozensets(st.integers(0, 6), min_size=1),
    start=st.sampled_from([dt.time(h) for h in (0, 6, 9, 12, 17, 22)]),
    end=st.sampled_from([dt.time(h) for h in (0, 6, 9, 12, 17, 22)]),
    tz=st.sampled_from(["UTC", "Europe/Berlin"]),
)
ids = st.integers(1, 4)


@st.composite
def policy_inputs(draw: st.DrawFn) -> PolicyInputs:
    apps = tuple(
        AppSpec(
            i,
            f"app{i}",
            draw(st.integers(1, 2)),
            tuple(draw(st.lists(destinations(), min_size=1, max_size=3))),
        )
        for i in range(1, draw(st.integers(0, 4)) + 1)
    )
    users = tuple(
        UserSpec(i, f"user{i}", draw(st.frozensets(ids, max_size=3)), draw(st.integers(0, 4)) > 0)
        for i in range(1, draw(st.integers(1, 5)) + 1)
    )
    policies = tuple(
        PolicySpec(
            i,
            f"policy{i}",
            draw(st.frozensets(ids, max_size=3)),
            draw(st.frozensets(st.integers(1, 5), max_size=3)),  # 5 may be dangling
            require_mfa=draw(st.booleans()),
            window=draw(st.none() | st.none() | windows),
            enabled=draw(st.integers(0, 5)) > 0,
        )
        for i in range(1, draw(st.integers(1, 5)) + 1)
    )
    devices = []
    for n in range(draw(st.integers(1, 8))):
        devices.append(
            ClientDevice(n, draw(st.integers(1, 6)), IPv4Address(f"100.64.0.{n + 2}"), draw(st.booleans()))
        )
    return PolicyInputs(users, apps, policies, tuple(devices))


nows = st.datetimes(
    min_value=dt.datetime(2024, 1, 1), max_value=dt.datetime(2024, 12, 31), timezones=st.just(UTC)
)


def reference_expand(
    inputs: PolicyInputs, now: dt.datetime, groups: frozenset[int] | None
) -> set[AllowTuple]:
    """Evaluate every (device, policy, application, destination) directly."""
    users = {u.id: u for u in inputs.users}
    apps = {a.id: a for a in inputs.apps}
    spans: dict[tuple[IPv4Address, object, str], list[tuple[int, int]]] = defaultdict(list)
    for d in inputs.devices:
        user = users.get(d.user_id)
        if user is None or not user.enabled:
            continue
        for p in inputs.policies:
            if not p.enabled or not (p.group_ids & user.group_ids):
                continue
            if p.window is not None and not p.window.contains(now):
                continue
            if p.require_mfa and not d.mfa:
                continue
            for app_id in p.app_ids:
                app = apps.get(app_id)
                if app is None or (groups is not None and app.connector_group_id not in groups):
                    continue
                for dest in app.destinations:
                    key = (d.address, dest.prefix, dest.protocol)
                    if dest.ports:
                        spans[key] += [(r.first, r.last) for r in dest.ports]
                    else:
                        spans[key].append((0, 65535))
    result = set()
    for (source, prefix, proto), ranges in spans.items():
        ranges.sort()
        merged = [list(ranges[0])]
        for first, last in ranges[1:]:
            if first <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], last)
            else:
                merged.append([first, last])
        for first, last in merged:
            result.add(AllowTuple(source, prefix, proto, first, last))  # type: ignore[arg-type]
    return result


@settings(max_examples=250, deadline=None)
@given(
    inputs=policy_inputs(),
    now=nows,
    groups=st.none() | st.frozensets(st.integers(1, 2)),
    probe=st.floats(0.0, 1.0),
)
def test_expand_matches_reference(
    inputs: PolicyInputs, now: dt.datetime, groups: frozenset[int] | None, probe: float
) -> None:
    compiled = compile_policy(inputs, now=now, connector_group_ids=groups)
    expanded = list(compiled.expand())
    assert expanded == sorted(set(expanded))  # sorted, no tuple twice
    assert len(expanded) == compiled.count_tuples()
    assert set(expanded) == reference_expand(inputs, now, groups)
    # A client's rules are exactly what the gateway lets it reach.
    for d in inputs.devices:
        own = {
            (t.destination, t.protocol, t.first_port, t.last_port) for t in expanded if t.source == d.address
        }
        spans: dict[tuple[object, str], list[tuple[int, int]]] = defaultdict(list)
        for rule in compiled.rules_for_source(d.address):
            spans[(rule.destination, rule.protocol)].append((rule.first_port, rule.last_port))
        merged = {(net, proto, *r) for (net, proto), rs in spans.items() for r in merge_port_ranges(rs)}
        assert merged == own
    # Nothing changes before next_change.
    if compiled.next_change is not None:
        assert compiled.next_change > now
        later = now + (compiled.next_change - now) * probe
    else:
        later = now + dt.timedelta(days=10) * probe
    if later < (compiled.next_change or later + dt.timedelta(1)):
        same = compile_policy(inputs, now=later, connector_group_ids=groups)
        assert same.policies == compiled.policies


@settings(max_examples=250, deadline=None)
@given(inputs=policy_inputs(), now=nows, groups=st.none() | st.frozensets(st.integers(1, 2)))
def test_grants_follow_policy_semantics(
    inputs: PolicyInputs, now: dt.datetime, groups: frozenset[int] | None
) -> None:
    compiled = compile_policy(inputs, now=now, connector_group_ids=groups)
    users = {u.id: u for u in inputs.users}
    devices = {d.address: d for d in inputs.devices}
    served = {a.id for a in inputs.apps if groups is None or a.connector_group_id in groups}
    expected = {}
    for p in inputs.policies:
        if not p.enabled or not p.app_ids & served:
            continue
        if p.window is not None and not p.window.contains(now):
            continue
        sources = tuple(
            sorted(
                d.address
                for d in inputs.devices
                if d.user_id in users
                and users[d.user_id].enabled
                and users[d.user_id].group_ids & p.group_ids
                and (d.mfa or not p.require_mfa)
            )
        )
        if sources:
            expected[p.id] = (p, sources)
    assert set(compiled.policies) == set(expected)
    for policy_id, grant in compiled.policies.items():
        policy, sources = expected[policy_id]
        assert (grant.policy_id, grant.name) == (policy.id, policy.name)
        assert grant.sources == sources
        for source in grant.sources:  # an enabled user in one of the policy's groups
            user = users[devices[source].user_id]
            assert user.enabled and user.group_ids & policy.group_ids
            assert devices[source].mfa or not policy.require_mfa
        assert grant.rules and list(grant.rules) == sorted(set(grant.rules))
        assert {r.policy_id for r in grant.rules} == {policy_id}
        by_dest: dict[tuple[object, str], list[tuple[int, int]]] = defaultdict(list)
        for rule in grant.rules:
            by_dest[(rule.destination, rule.protocol)].append((rule.first_port, rule.last_port))
        assert all(merge_port_ranges(rs) == rs for rs in by_dest.values())  # merged already


@settings(max_examples=250, deadline=None)
@given(
    inputs=policy_inputs(),
    now=nows,
    probe=st.sampled_from(PROBES),
    proto=st.sampled_from(["tcp", "udp", "icmp"]),
    port=st.integers(0, 18),
)
def test_explain_agrees_with_expansion(
    inputs: PolicyInputs, now: dt.datetime, probe: IPv4Address | IPv6Address, proto: str, port: int
) -> None:
    compiled = compile_policy(inputs, now=now)
    tuples = list(compiled.expand())
    query_port = None if proto == "icmp" else port
    for d in inputs.devices:
        decision = explain(
            inputs,
            user_id=d.user_id,
            destination=probe,
            protocol=proto,  # type: ignore[arg-type]
            port=query_port,
            now=now,
            mfa=d.mfa,
        )
        covered = any(
            t.source == d.address
            and t.destination.version == probe.version
            and probe in t.destination
            and t.protocol in (proto, "any")
            and t.first_port <= (query_port or 0) <= t.last_port
            for t in tuples
        )
        assert decision.allowed == covered, decision.reason
        assert decision.reason
