"""Shared fixtures: environment for quiet CPU runs, free ports, a real build and a real server."""

import os
import socket

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("FEAST_USAGE", "False")

import pytest  # noqa: E402


def free_ports(n: int) -> list:
    """``n`` distinct TCP ports on loopback that are free right now (all held while choosing,
    so the OS cannot hand out the same one twice)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    return free_ports(1)[0]


@pytest.fixture
def ports():
    http, grpc, metrics = free_ports(3)
    return {"http_port": http, "grpc_port": grpc, "metrics_port": metrics}
