"""The flow records' syslog export: RFC 5424 formatting with escaped SD-PARAM
values (parsed back by an independent strict parser, tests/syslogparse.py), the target
setting, and the exporter delivering to a real TCP collector on loopback with
RFC 6587 octet counting.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from syslogparse import parse_rfc5424
from zerogate.controller.flow_export import SyslogExporter, Target, format_record, param_value, parse_target

RECORD: dict[str, Any] = {
    "id": 7,
    "start": "2026-12-06T04:40:05+00:00",
    "end": "2026-12-06T04:40:06+00:00",
    "duration": 1.0,
    "user": "alice",
    "device": "alice-laptop",
    "device_id": 3,
    "client": "100.64.0.2",
    "protocol": "tcp",
    "destination": "10.1.0.10",
    "port": 80,
    "source_port": 54946,
    "application": "web",
    "policy_id": 2,
    "policy": "eng-apps",
    "denied": None,
    "bytes_out": 398,
    "bytes_in": 3388,
    "packets_out": 6,
    "packets_in": 6,
    "gateway_id": 1,
}
NOW = datetime(2026, 12, 6, 4, 40, 6, 896000, tzinfo=UTC)


def test_a_forwarded_flow_is_one_informational_message_with_every_field() -> None:
    m = parse_rfc5424(format_record(RECORD, "gw-ctl", NOW))
    assert (m["pri"], m["timestamp"], m["host"], m["app"], m["msgid"]) == (
        134,
        "2026-12-06T04:40:06.896Z",
        "gw-ctl",
        "zerogate",
        "flow",
    )
    assert m["sd_id"] == "flow@32473"
    assert m["params"]["user"] == "alice" and m["params"]["bytes_in"] == "3388"
    assert "denied" not in m["params"]  # None is left out, not written as "None"


def test_a_refused_flow_is_a_notice() -> None:
    m = parse_rfc5424(format_record(RECORD | {"denied": "no-policy", "policy": None}, "-", NOW))
    assert (m["pri"], m["msgid"], m["params"]["denied"]) == (133, "flow-refused", "no-policy")


@pytest.mark.parametrize(
    ("hostile", "expected"),
    [
        ('a"] [forged@1 x="y', 'a"] [forged@1 x="y'),
        ("back\\slash]", "back\\slash]"),
        ("line\nbreak\r\x00\x1b[31m", "line\ufffdbreak\ufffd\ufffd\ufffd[31m"),
        ("sep\u2028x\u200bz", "sep\ufffdx\ufffdz"),
    ],
)
def test_values_cannot_break_out_of_their_parameter(hostile: str, expected: str) -> None:
    data = format_record(RECORD | {"device": hostile}, "-", NOW)
    assert b"\n" not in data and b"\x00" not in data
    m = parse_rfc5424(data)
    assert m["params"]["device"] == expected
    assert m["params"]["user"] == "alice"  # the parameters after it are intact


def test_param_value_escapes_exactly_the_three_characters() -> None:
    assert param_value('"\\]x[') == '\\"\\\\\\]x['


def test_targets() -> None:
    assert parse_target("udp://127.0.0.1:5514") == Target("udp", "127.0.0.1", 5514)
    assert parse_target("tcp://[::1]:6514") == Target("tcp", "::1", 6514)
    assert parse_target("tcp://siem.example.test:601").host == "siem.example.test"
    for bad in ("http://x:1", "udp://x", "udp://x:0", "udp://x:70000", "udp://a b:1", "udp://x:1\n"):
        with pytest.raises(ValueError):
            parse_target(bad)


def test_exporter_delivers_octet_counted_messages_to_a_tcp_collector() -> None:
    async def go() -> list[bytes]:
        received: list[bytes] = []
        done = asyncio.Event()

        async def collector(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while len(received) < 3:
                length = int((await reader.readuntil(b" "))[:-1])
                received.append(await reader.readexactly(length))
            done.set()
            writer.close()

        server = await asyncio.start_server(collector, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        exporter = SyslogExporter(Target("tcp", "127.0.0.1", port))
        exporter.start()
        try:
            exporter.offer([RECORD | {"source_port": p, "device": "x]\n"} for p in (1, 2, 3)])
            await asyncio.wait_for(done.wait(), 10)
        finally:
            await exporter.stop()
            server.close()
            await server.wait_closed()
        assert exporter.sent == 3 and exporter.dropped == 0
        return received

    messages = asyncio.run(go())
    assert [parse_rfc5424(m)["params"]["source_port"] for m in messages] == ["1", "2", "3"]
    assert parse_rfc5424(messages[0])["params"]["device"] == "x]\ufffd"


def test_a_full_queue_drops_and_counts_instead_of_waiting() -> None:
    async def go() -> SyslogExporter:
        exporter = SyslogExporter(Target("udp", "127.0.0.1", 9), queue_size=2)
        exporter.offer([RECORD] * 5)  # not started: nothing drains the queue
        return exporter

    exporter = asyncio.run(go())
    assert (exporter.queue.qsize(), exporter.dropped) == (2, 3)
