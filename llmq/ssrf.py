"""Where a webhook may go: http(s) only, and every address the host resolves to is public.

`check_url` runs at submit (a bad URL is a 422) and again before every delivery attempt, and
returns the addresses it checked so the sender connects to one of them and never resolves the
name a second time. At submit, `resolve_hosts` resolves each distinct host of a request once,
concurrently and under one deadline. Networks named in `LLMQ_WEBHOOK_ALLOWED_NETWORKS`
(loopback in tests and `llmq dev`) pass although they are not public, on any port.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from urllib.parse import urlsplit

from llmq.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]  # (host, port) -> addresses, or UnsafeUrl
NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Refused whatever `ipaddress` says: its tables differ between Python releases (CVE-2024-4032)
# and call some of these global, e.g. 192.0.0.9/10 and the NAT64 local-use prefix.
NOT_PUBLIC: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",
        "100.64.0.0/10",  # CGNAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments, all of it
        "192.0.2.0/24",
        "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
        "::/96",  # unspecified, loopback, IPv4-compatible (deprecated)
        "::ffff:0:0:0/96",  # IPv4-translated
        "64:ff9b:1::/48",  # NAT64 local-use: leads into a private network
        "100::/64",  # discard
        "2001:db8::/32",
        "3fff::/20",  # documentation
        "5f00::/16",  # SRv6 segment ids
        "fc00::/7",  # unique local, AWS IPv6 metadata
        "fe80::/10",
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)
MAX_URL_CHARS = 2048


class UnsafeUrl(ValueError):
    """The URL may not be called; the message says why (never the resolved addresses)."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str  # path and query, as given
    addresses: tuple[str, ...]

    def pinned_url(self, address: str) -> str:
        """The URL with the host replaced by a checked address (IPv6 in brackets)."""
        shown = f"[{address}]" if ":" in address else address
        return f"{self.scheme}://{shown}:{self.port}{self.path}"

    @property
    def host_header(self) -> str:
        default = {"http": 80, "https": 443}[self.scheme]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def parse_networks(spec: str) -> list[IPNetwork]:
    return [
        ipaddress.ip_network(part.strip(), strict=False) for part in spec.split(",") if part.strip()
    ]


def parse_ports(spec: str) -> set[int]:
    return {int(part) for part in spec.split(",") if part.strip()}


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(ip: IPAddress) -> bool:
    """Globally routable, in no refused network, not multicast, and no non-public IPv4 hidden
    inside an IPv6 address (IPv4-mapped, 6to4, Teredo, NAT64)."""
    if not ip.is_global or ip.is_multicast:
        return False
    if any(ip in net for net in NOT_PUBLIC if net.version == ip.version):
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            return is_public(inner)
    return True


def address_allowed(ip: IPAddress, allowed: list[IPNetwork]) -> bool:
    return any(ip in net for net in allowed if ip.version == net.version) or is_public(ip)


def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeUrl(f"the host {host!r} does not resolve") from exc
    return list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))


def _split(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path with query) of a URL a webhook may use, or UnsafeUrl."""
    if len(url) > MAX_URL_CHARS:
        raise UnsafeUrl("the URL is too long")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl("the URL is malformed") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeUrl("only http and https URLs are allowed")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UnsafeUrl("credentials in the URL are not allowed")
    host = parts.hostname
    if not host:
        raise UnsafeUrl("the URL has no host")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return scheme, host, port or (443 if scheme == "https" else 80), path


def check_url(url: str, settings: Settings, resolve: Resolver | None = None) -> Target:
    """Validate a webhook URL and resolve it; raises UnsafeUrl when it may not be called."""
    scheme, host, port, path = _split(url)
    allowed = parse_networks(settings.webhook_allowed_networks)
    addresses = (resolve or _resolve)(host, port)
    if not addresses:
        raise UnsafeUrl(f"the host {host!r} does not resolve")
    ips = [ipaddress.ip_address(a) for a in addresses]
    if not all(address_allowed(ip, allowed) for ip in ips):
        raise UnsafeUrl("the host resolves to an address that is not public")
    on_allow_list = all(
        any(ip in net for net in allowed if ip.version == net.version) for ip in ips
    )
    ports = parse_ports(settings.webhook_allowed_ports)
    if ports and port not in ports and not on_allow_list:
        raise UnsafeUrl(f"port {port} is not allowed; use one of {sorted(ports)}")
    return Target(scheme, host, port, path, tuple(addresses))


def resolve_hosts(
    urls: Iterable[str], deadline_s: float, concurrency: int, resolve: Resolver | None = None
) -> Resolver:
    """Resolve the distinct hosts of `urls` once each, `concurrency` at a time, all within
    `deadline_s`; returns a resolver for `check_url` that answers from those results.

    A bulk submit of 10,000 jobs to one endpoint resolves its name once, and a slow resolver
    holds the request for at most the deadline: a name still unresolved then is refused.
    """
    resolve = resolve or _resolve
    hosts: set[str] = set()
    for url in urls:
        with contextlib.suppress(UnsafeUrl):  # check_url reports a malformed URL itself
            hosts.add(_split(url)[1])
    found: dict[str, list[str] | str] = {}  # host -> addresses, or why it is refused
    if hosts:
        pool = ThreadPoolExecutor(min(concurrency, len(hosts)), thread_name_prefix="resolve")
        futures = {pool.submit(resolve, host, 0): host for host in hosts}
        done, _ = wait(futures, timeout=deadline_s)
        pool.shutdown(wait=False, cancel_futures=True)
        for future, host in futures.items():
            if future not in done:
                found[host] = f"the host {host!r} did not resolve within {deadline_s:g} s"
            elif isinstance(future.exception(), UnsafeUrl | OSError | ValueError):
                found[host] = f"the host {host!r} does not resolve"
            else:
                found[host] = future.result()

    def lookup(host: str, port: int) -> list[str]:
        outcome = found[host] if host in found else resolve(host, port)
        if isinstance(outcome, str):
            raise UnsafeUrl(outcome)
        return outcome

    return lookup
