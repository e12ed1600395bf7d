"""A real 3-master Redis Cluster (and a Sentinel) on free loopback ports, for store tests.

``start_redis_cluster`` runs three ``redis-server --cluster-enabled yes`` processes in a
temporary directory, joins them with ``redis-cli --cluster create`` and waits until every
node reports ``cluster_state:ok``; ``stop_servers`` stops them by PID.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tests.conftest import IN_CI, free_port

#: How long (seconds) a cluster may take to agree on its slots before the test fails.
CLUSTER_READY_S = 30.0


@dataclass
class Servers:
    """Processes started for a test session and their directory."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workdir: str = ""
    url: str = ""


def _require(exe: str) -> str:
    path = shutil.which(exe)
    if path is None:
        message = f"{exe} is not installed (apt-get install redis-server redis-tools)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def _wait_ping(port: int) -> None:
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 10
    try:
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
    finally:
        client.close()


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free as well."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def start_redis_cluster(masters: int = 3) -> Servers:
    """Start a ``masters``-node cluster without replicas; ``url`` is its
    ``redis+cluster://`` URL naming every node."""
    server, cli = _require("redis-server"), _require("redis-cli")
    servers = Servers(workdir=tempfile.mkdtemp(prefix="durable-cluster-"))
    ports: list[int] = []
    while len(ports) < masters:
        port = _free_cluster_port()
        if port not in ports:
            ports.append(port)
    try:
        for port in ports:
            node_dir = Path(servers.workdir) / str(port)
            node_dir.mkdir()
            servers.procs.append(subprocess.Popen(
                [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000",
                 "--save", "", "--appendonly", "no", "--dir", str(node_dir),
                 "--maxmemory-policy", "noeviction"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in ports:
            _wait_ping(port)
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       timeout=60)
        _wait_cluster_ok(ports)
    except BaseException:
        stop_servers(servers)
        raise
    servers.url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    return servers


def _wait_cluster_ok(ports: list[int]) -> None:
    deadline = time.monotonic() + CLUSTER_READY_S
    clients = [redis.Redis(host="127.0.0.1", port=p, decode_responses=True) for p in ports]
    try:
        while True:
            # redis-py parses the reply into a dict (older versions: the raw text).
            states = [c.execute_command("CLUSTER INFO") for c in clients]
            if all(s.get("cluster_state") == "ok" if isinstance(s, dict)
                   else "cluster_state:ok" in str(s) for s in states):
                return
            if time.monotonic() > deadline:
                pytest.fail(f"the Redis Cluster on ports {ports} did not reach "
                            "cluster_state:ok")
            time.sleep(0.1)
    finally:
        for c in clients:
            c.close()


def start_sentinel(master_port: int, master_name: str) -> Servers:
    """Start one Sentinel monitoring the server on ``master_port`` as ``master_name``;
    ``url`` is its ``sentinel://`` URL."""
    server = _require("redis-server")
    servers = Servers(workdir=tempfile.mkdtemp(prefix="durable-sentinel-"))
    port = free_port()
    conf = Path(servers.workdir) / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {servers.workdir}\n"
                    f"sentinel monitor {master_name} 127.0.0.1 {master_port} 1\n")
    servers.procs.append(subprocess.Popen([server, str(conf), "--sentinel"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        _wait_ping(port)
    except BaseException:
        stop_servers(servers)
        raise
    servers.url = f"sentinel://127.0.0.1:{port}"
    return servers


def stop_servers(servers: Servers) -> None:
    """Stop every process by PID and remove the directory."""
    for proc in servers.procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in servers.procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    shutil.rmtree(servers.workdir, ignore_errors=True)
