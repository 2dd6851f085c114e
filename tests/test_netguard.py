"""The test network guard refuses the real lab's addresses and lets loopback and the embedded lab through."""
from __future__ import annotations

import socket

import pytest

from tests.support import netguard


@pytest.mark.parametrize("host", ["192.168.10.18", "192.168.10.19", "8.8.8.8", "10.0.0.1", "::ffff:192.168.10.18"])
def test_forbidden_addresses_are_refused_before_any_packet(host: str) -> None:
    # without the guard the connect below would dial the address: fail first instead
    assert getattr(socket.socket, "_poc1_guarded", False), "the network guard is not installed"
    assert not netguard.allowed(host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s, pytest.raises(netguard.ForbiddenAddress, match=host):
        s.connect((host, 22))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "10.231.0.18"])
def test_allowed_addresses(host: str) -> None:
    assert netguard.allowed(host)


def test_loopback_connect_still_works() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=2):
            conn, _ = server.accept()
            conn.close()
