"""The ports the gateway and its tests pick for a listener are never a connection's.

A port from the kernel's ephemeral range (its "port 0" pick) can be taken as the source
port of an outgoing connection between the pick and the listener's bind: a stack in the
test suite once failed to start with "address already in use" that way, while Envoy and
clients opened thousands of connections."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from extproc.config import parse_config
from extproc.devstack import free_port_block
from extproc.server import listening_ports
from extproc.store.embedded import FREE_PORTS_ENV, _ephemeral_range, free_port


def test_a_free_port_lies_below_the_ephemeral_range_and_can_be_listened_on() -> None:
    low, _ = _ephemeral_range()
    for _ in range(20):
        port = free_port()
        assert port < low
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", port))
            listener.listen()


def test_a_port_a_listener_holds_is_never_handed_out() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_port()))
        held.listen()
        taken = held.getsockname()[1]
        assert all(free_port() != taken for _ in range(500))


def test_a_process_given_a_range_picks_its_ports_there(monkeypatch: pytest.MonkeyPatch) -> None:
    """Processes that start stacks side by side each pick from a range of their own."""
    monkeypatch.setenv(FREE_PORTS_ENV, "24000-24099")
    assert all(24000 <= free_port() <= 24099 for _ in range(50))
    # A range that is not one (reversed, in the ephemeral range) is ignored.
    monkeypatch.setenv(FREE_PORTS_ENV, "24099-24000")
    assert all(free_port() < 32768 for _ in range(20))


def test_the_ports_a_gateway_is_about_to_listen_on_are_not_handed_to_its_valkey(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The embedded Valkey starts before the gateway binds its own ports: free at that
    moment, those are not Valkey's to take (a test stack once failed to start when its
    Valkey had taken the ext_proc port it was about to bind)."""
    # Five ports free now in this test process's own range (another process's stack, or
    # one this process started earlier, may hold any fixed port).
    base = free_port_block(5)
    text = (
        Path("config/gateway.yaml")
        .read_text()
        .replace("\nserver:\n", "\nserver:\n  workers: 2\n", 1)
    )
    environ = {
        "EXTPROC_GRPC_ADDRESS": f"127.0.0.1:{base}",
        "EXTPROC_HTTP_ADDRESS": f"127.0.0.1:{base + 2}",
        "EXTPROC_MANAGEMENT_ADDRESS": f"127.0.0.1:{base + 3}",
    }
    config = parse_config(text, "gateway.yaml", environ)
    ours = listening_ports(config)
    assert ours == {base, base + 1, base + 2, base + 3}
    monkeypatch.setenv(FREE_PORTS_ENV, f"{base}-{base + 4}")
    assert all(free_port(ours) == base + 4 for _ in range(30))
