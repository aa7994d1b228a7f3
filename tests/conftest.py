"""Shared fixtures: environment for quiet CPU runs, free ports, a real build and a real server."""

import os
import socket

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("FEAST_USAGE", "False")

import pytest  # noqa: E402


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ports():
    return {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
