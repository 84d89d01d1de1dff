"""A strict, independent reader of the RFC 5424 messages the flow export sends (tests only)."""

from __future__ import annotations

import re
from typing import Any

_HEADER = re.compile(
    rb"<(?P<pri>[0-9]{1,3})>1 (?P<ts>[0-9T:.\-]+Z) (?P<host>[!-~]{1,255}) (?P<app>[!-~]{1,48}) "
    rb"(?P<procid>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) "
)


def parse_rfc5424(data: bytes) -> dict[str, Any]:
    """A strict reading of one message with one SD-ELEMENT and no MSG: the header fields
    and the unescaped parameters; raises ValueError on anything else."""
    match = _HEADER.match(data)
    if match is None:
        raise ValueError("not an RFC 5424 header")
    text = data[match.end() :].decode("utf-8")
    if not text.startswith("["):
        raise ValueError("no structured data")
    i = text.index(" ")
    sd_id, params, j = text[1:i], {}, i
    while text[j] == " ":
        eq = text.index("=", j)
        name = text[j + 1 : eq]
        if not re.fullmatch(r"[!#-<>-\[^-~]{1,32}", name) or text[eq + 1] != '"':
            raise ValueError(f"bad parameter name {name!r}")
        k, value = eq + 2, []
        while text[k] != '"':
            if text[k] == "\\" and text[k + 1] in '"\\]':
                value.append(text[k + 1])
                k += 2
                continue
            if text[k] in '"]':
                raise ValueError("unescaped character in a value")
            value.append(text[k])
            k += 1
        params[name] = "".join(value)
        j = k + 1
    if text[j:] != "]":
        raise ValueError("trailing text after the structured data")
    return {
        "pri": int(match["pri"]),
        "timestamp": match["ts"].decode(),
        "host": match["host"].decode(),
        "app": match["app"].decode(),
        "msgid": match["msgid"].decode(),
        "sd_id": sd_id,
        "params": params,
    }
