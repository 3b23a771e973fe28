"""Ports for sidecars and apps on a shared host."""

from __future__ import annotations

from tsunagi.agent.ports import _listen_range, free_ports


def test_ports_handed_out_one_at_a_time_never_repeat() -> None:
    # Callers ask for one port, release nothing, and bind later: a repeat would give two
    # listeners the same port (the propagation benchmark's 50 sidecars hit this).
    ports = [free_ports(1)[0] for _ in range(1000)]
    assert len(set(ports)) == len(ports)


def test_ports_come_from_below_the_ephemeral_range() -> None:
    listen = _listen_range()
    ports = free_ports(20)
    assert len(set(ports)) == 20
    if listen:  # Linux with room below the range
        assert all(p in listen for p in ports)
