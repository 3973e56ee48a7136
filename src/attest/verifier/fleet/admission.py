"""What the fleet service accepts as a node id or a node URL (an adapter: no web framework).

- ``check_node_id``: one rule for every node id, whoever chose it (the operator, the API client
  or the node itself), so that every node is reachable as ``/v1/nodes/{id}``.
- ``check_node_url`` and ``NodeAddresses``: which node URLs the service contacts -- an http(s)
  origin and nothing else (no user information, query, fragment or path: the service asks only
  the attest paths), and with ``--allow-nodes`` only hosts whose every address lies inside
  those networks.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from attest.errors import ConfigError, NodeIdRefused, NodeUrlRefused

NODE_ID_RULE = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_NODE_ID = re.compile(NODE_ID_RULE)
_HOST_NAME = re.compile(
    r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_][A-Za-z0-9_-]{0,62})*\.?$"
)
MAX_URL = 2048

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def check_node_id(node_id: str) -> str:
    """``node_id``, if it matches ``NODE_ID_RULE``; raise ``NodeIdRefused`` naming the rule."""
    if not isinstance(node_id, str) or not _NODE_ID.fullmatch(node_id):
        raise NodeIdRefused(f"a node id must match {NODE_ID_RULE}")
    return node_id


def check_node_url(url: str, *, what: str = "url") -> str:
    """``url``, if it is the origin of a node's API: ``http`` or ``https``, a host name or IP
    address, an optional port, and nothing else (no user information, no query or fragment,
    the path empty or ``/``). Raise ``NodeUrlRefused`` naming the rule."""

    def refuse(rule: str) -> NodeUrlRefused:
        return NodeUrlRefused(f"{what}: {rule}")

    if not isinstance(url, str) or len(url) > MAX_URL:
        raise refuse(f"at most {MAX_URL} characters")
    if not all("!" <= c <= "~" for c in url):
        raise refuse("printable ASCII without spaces")
    if "?" in url or "#" in url:
        raise refuse("no query or fragment")
    if "\\" in url:
        raise refuse("no backslash")
    try:
        u = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket, http://[::1
        raise refuse("not a URL (an IPv6 address is written [addr])") from None
    if u.scheme not in ("http", "https"):
        raise refuse("the scheme must be http or https")
    if "@" in u.netloc:
        raise refuse("no user information")
    host = u.hostname
    if not host:
        raise refuse("a host is needed")
    try:
        u.port  # noqa: B018 - parses the port, raising on a bad one
    except ValueError:
        raise refuse("the port must be a number 0..65535") from None
    if not (_ip(host) is not None or _HOST_NAME.fullmatch(host)):
        raise refuse("the host must be a DNS name or an IP address")
    if u.path not in ("", "/"):
        raise refuse("the path must be empty or /: the service asks only the attest paths")
    return url


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def parse_networks(text: str, *, key: str) -> tuple[Network, ...]:
    """``CIDR[,CIDR...]`` (an address alone is a /32 or /128); ``ConfigError`` naming ``key``."""
    nets = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ConfigError(f"{part!r} is not an IP network (CIDR)", key=key) from None
    if not nets:
        raise ConfigError("no network given", key=key)
    return tuple(nets)


@dataclass(frozen=True, slots=True)
class NodeAddresses:
    """The networks the service may contact nodes in (``--allow-nodes``); ``None``: any."""

    allow: tuple[Network, ...] | None = None
    resolve: Callable[[str, int], Iterable[str]] | None = None  # host, port -> addresses

    def check(self, url: str, *, what: str = "url") -> None:
        """Refuse (``NodeUrlRefused``) a URL whose host resolves to any address outside the
        allowed networks, or does not resolve. Blocking (DNS): run it off the event loop."""
        check_node_url(url, what=what)
        if self.allow is None:
            return
        u = urlsplit(url)
        host = u.hostname or ""
        port = u.port or (443 if u.scheme == "https" else 80)
        try:
            addresses = list((self.resolve or _resolve)(host, port))
        except OSError:
            raise NodeUrlRefused(f"{what}: the host does not resolve") from None
        for a in addresses:
            ip = _ip(a)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if ip is None or not any(ip in net for net in self.allow):
                raise NodeUrlRefused(
                    f"{what}: the host resolves to an address outside the networks the "
                    "service may contact (--allow-nodes)"
                )
        if not addresses:
            raise NodeUrlRefused(f"{what}: the host does not resolve")


def _resolve(host: str, port: int) -> list[str]:
    return [str(ai[4][0]) for ai in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]
