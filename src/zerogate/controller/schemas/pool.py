"""The client address pool (``/v1/address-pool``)."""

from __future__ import annotations

from ipaddress import IPv4Network, ip_network

from pydantic import BaseModel, Field, field_validator

from zerogate.controller.fields import Cidr, no_overlap, routable_v4
from zerogate.controller.schemas.base import Strict


class AddressPoolUpdate(Strict):
    blocks: list[Cidr] = Field(min_length=1, max_length=64)

    @field_validator("blocks")
    @classmethod
    def _v4(cls, value: list[str]) -> list[str]:
        for b in value:
            net = ip_network(b)
            if not isinstance(net, IPv4Network) or net.prefixlen > 30:
                raise ValueError(f"{b}: client address blocks are IPv4 prefixes of /30 or larger")
            routable_v4(b, "client address blocks")
        no_overlap(value, "blocks")
        return value


class AddressPoolOut(BaseModel):
    name: str
    blocks: list[str]
    allocated: int
