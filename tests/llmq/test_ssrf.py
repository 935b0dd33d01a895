"""The SSRF guard's address rule: which resolved addresses a webhook may be sent to."""

from __future__ import annotations

import ipaddress
import threading

import pytest

from llmq import ssrf
from llmq.settings import Settings
from tests.conftest import wait_for

REFUSED = {
    "0.0.0.0": "unspecified",
    "10.0.0.1": "RFC 1918",
    "172.16.0.1": "RFC 1918",
    "192.168.1.1": "RFC 1918",
    "100.64.0.1": "CGNAT",
    "127.0.0.1": "loopback",
    "169.254.169.254": "link-local: cloud metadata",
    "192.0.0.8": "IETF protocol assignments (192.0.0.0/24)",
    "192.0.0.9": "192.0.0.0/24: PCP anycast, which ipaddress calls global",
    "192.0.0.10": "192.0.0.0/24: TURN anycast, which ipaddress calls global",
    "192.0.0.170": "192.0.0.0/24: NAT64 discovery",
    "192.0.2.1": "documentation",
    "198.18.0.1": "benchmarking",
    "198.51.100.1": "documentation",
    "203.0.113.1": "documentation",
    "224.0.0.1": "multicast",
    "224.0.1.1": "multicast, global scope",
    "240.0.0.1": "reserved",
    "255.255.255.255": "broadcast",
    "::": "unspecified",
    "::1": "loopback",
    "fe80::1": "link-local",
    "fc00::1": "unique local",
    "fd00:ec2::254": "AWS IPv6 metadata",
    "fec0::1": "site-local (deprecated)",
    "ff02::1": "multicast",
    "ff0e::1": "multicast, global scope",
    "2001:db8::1": "documentation",
    "100::1": "discard",
    "::7f00:1": "IPv4-compatible 127.0.0.1 (deprecated form)",
    "::ffff:0:a00:1": "IPv4-translated 10.0.0.1",
    "::ffff:127.0.0.1": "IPv4-mapped loopback",
    "::ffff:169.254.169.254": "IPv4-mapped metadata",
    "::ffff:192.0.0.9": "IPv4-mapped 192.0.0.9",
    "2002:7f00:1::1": "6to4 of loopback",
    "2002:c000:9::1": "6to4 of 192.0.0.9",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2": "Teredo",
    "64:ff9b::a00:1": "NAT64 of 10.0.0.1",
    "64:ff9b::7f00:1": "NAT64 of loopback",
    "64:ff9b::a9fe:a9fe": "NAT64 of metadata",
    "64:ff9b::c000:9": "NAT64 of 192.0.0.9",
    "64:ff9b:1::1": "NAT64 local-use prefix",
    "64:ff9b:1::808:808": "NAT64 local-use prefix, whatever it embeds",
    "64:ff9b:1:ffff:ffff::1": "NAT64 local-use prefix, its last /64s",
}

PASSED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "192.0.1.1",  # next to 192.0.0.0/24, and public
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "::ffff:8.8.8.8",  # IPv4-mapped public address
    "64:ff9b::808:808",  # well-known NAT64 prefix in front of a public address
    "64:ff9b:2::1",  # just past the local-use /48
]


@pytest.mark.parametrize("address", REFUSED, ids=lambda a: f"{a} ({REFUSED[a]})")
def test_non_public_addresses_are_refused(address):
    assert not ssrf.is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PASSED)
def test_public_addresses_pass(address):
    assert ssrf.is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["192.0.0.9", "64:ff9b:1::1", "::ffff:192.0.0.9"])
def test_a_host_resolving_to_a_refused_address_is_unsafe(address):
    settings = Settings(webhook_allowed_networks="127.0.0.0/8")
    with pytest.raises(ssrf.UnsafeUrl, match="not public"):
        ssrf.check_url("https://hooks.example.com/x", settings, resolve=lambda *_: [address])


def test_a_name_not_resolved_by_the_deadline_is_refused_and_the_others_answer():
    release = threading.Event()

    def resolve(host: str, port: int) -> list[str]:
        if host == "slow.example":
            release.wait(60)
        return ["93.184.215.14"]

    urls = ["https://slow.example/a", "https://fast.example/b", "https://fast.example:8443/c"]
    try:
        lookup = ssrf.resolve_hosts(urls, 2, 4, resolve)
        with pytest.raises(ssrf.UnsafeUrl, match=r"'slow\.example' did not resolve within 2 s"):
            lookup("slow.example", 443)
        assert lookup("fast.example", 443) == lookup("fast.example", 8443) == ["93.184.215.14"]
    finally:
        release.set()


def test_at_most_concurrency_names_resolve_at_once():
    release = threading.Event()
    lock = threading.Lock()
    running = {"now": 0, "started": 0, "peak": 0}

    def resolve(host: str, port: int) -> list[str]:
        with lock:
            running["now"] += 1
            running["started"] += 1
            running["peak"] = max(running["peak"], running["now"])
        release.wait(60)
        with lock:
            running["now"] -= 1
        return ["93.184.215.14"]

    urls = [f"https://h{i}.example/" for i in range(5)]
    lookups: list[ssrf.Resolver] = []
    resolving = threading.Thread(
        target=lambda: lookups.append(ssrf.resolve_hosts(urls, 60, 2, resolve))
    )
    resolving.start()
    try:
        wait_for(lambda: running["started"] == 2, what="two resolutions running")
        assert running["started"] == 2
    finally:
        release.set()
        resolving.join(60)
    assert running["peak"] == 2 and running["started"] == 5
    assert all(lookups[0](f"h{i}.example", 443) == ["93.184.215.14"] for i in range(5))
