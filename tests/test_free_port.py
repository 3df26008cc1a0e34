"""Ports for child servers come from below the kernel's ephemeral range, where no outgoing
connection on the machine can take them before the child binds them."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from backbeat.embedded import _ephemeral_low, free_port
from backbeat.processes import ComponentProcess


def test_free_ports_are_bindable_and_outside_the_ephemeral_range() -> None:
    low = _ephemeral_low()
    for _ in range(50):
        port = free_port()
        assert 1024 <= port < low
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_one_process_never_gets_the_same_port_twice() -> None:
    # Servers of one cluster ask for their ports before any of them binds: with 500 ports
    # drawn from ~22,000 at random, a repeat is near certain unless free_port prevents it.
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)


def test_a_port_answered_by_another_protocol_is_not_ready(tmp_path: Path) -> None:
    # A gRPC server that took the component's admin port answers with HTTP/2 frames.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def answer_garbage() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x7f\xff\xff\xff\r\n")

        server = threading.Thread(target=answer_garbage)
        server.start()
        component = ComponentProcess("pulse", [], admin_port=port, log_dir=tmp_path)
        assert component._ready() is False
        server.join(timeout=5)
