"""A seatbelt for the project's own tests: Python-level connects may only reach this machine.

The rules allow traffic to loopback and to the embedded lab's own bridge (10.231.0.0/24) only; the
`lab` inventory names real 192.168.10.x hosts that no test may ever dial. This guard makes a slip
(a test pointed at the wrong inventory group, say) fail loudly at once instead of sending a packet.
It covers sockets opened by Python (httpx, paramiko, urllib); libpq's C sockets are not seen, which is
why the suite's own inventory tests never build a database URL for the `lab` group either.
"""
from __future__ import annotations

import ipaddress
import socket

ALLOWED = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"),
           ipaddress.ip_network("10.231.0.0/24"))


class ForbiddenAddress(ConnectionRefusedError):
    pass


def allowed(host: str) -> bool:
    try:
        addr = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return True  # AF_UNIX paths and the like: not network traffic
    if addr.version == 6 and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return any(addr in net for net in ALLOWED)


def install() -> None:
    if getattr(socket.socket, "_poc1_guarded", False):
        return
    original_connect, original_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def _check(sock: socket.socket, address: object) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
            if not allowed(str(address[0])):
                raise ForbiddenAddress(f"test network guard: connection to {address[0]} refused "
                                       "(only loopback and the embedded lab 10.231.0.0/24 may be reached)")

    def connect(self: socket.socket, address: object) -> None:
        _check(self, address)
        return original_connect(self, address)

    def connect_ex(self: socket.socket, address: object) -> int:
        _check(self, address)
        return original_connect_ex(self, address)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.socket._poc1_guarded = True  # type: ignore[attr-defined]
