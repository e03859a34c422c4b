"""Ports for the processes a script test starts: below the kernel's ephemeral range, never in it.

A port the kernel hands out for bind(0) is also the local end it picks for outgoing connections,
so under a busy suite a service told to listen on one found it taken (the stack "did not become
healthy", a cluster node exited at start). Ports drawn below `ip_local_port_range` meet only
other listeners, which `free` checks.
"""

from __future__ import annotations

import secrets
import socket


def ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port now."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def free_base(offsets: list[int], low: int = 10000) -> int:
    """A base port below the ephemeral range whose base + each offset is free."""
    high = ephemeral_low() - max(offsets) - 1
    for _ in range(200):
        base = low + secrets.randbelow(max(1, high - low))
        if all(free(base + d) for d in offsets):
            return base
    raise RuntimeError(f"no free ports between {low} and {high}")
