"""Ports for child servers come from below the kernel's ephemeral range, where no outgoing
connection on the machine can take them before the child binds them."""

from __future__ import annotations

import socket

from backbeat.embedded import _ephemeral_low, free_port


def test_free_ports_are_bindable_and_outside_the_ephemeral_range() -> None:
    low = _ephemeral_low()
    for _ in range(50):
        port = free_port()
        assert 1024 <= port < low
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))
