"""docker-compose.yml runs the quickstart the way celery-durable needs: a persistent Redis that
never evicts, and a worker and Flower that point at it and at an example app that exists."""

from __future__ import annotations

import shlex
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    services = compose["services"]
    assert name in services, f"docker-compose.yml has no {name!r} service"
    return dict(services[name])


def words(command: str | list[str]) -> list[str]:
    """A service command as words (``sh -c "..."`` is split too)."""
    parts = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
    if parts[:2] == ["sh", "-c"] or parts[:2] == ["bash", "-c"]:
        return [*parts[:2], *shlex.split(" ".join(parts[2:]))]
    return parts


def environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def depends_on(svc: dict[str, Any]) -> set[str]:
    deps = svc.get("depends_on") or []
    return set(deps) if isinstance(deps, list) else set(deps)


def option(argv: list[str], name: str) -> str | None:
    """The value of ``--name value`` in a redis-server command line."""
    for i, word in enumerate(argv[:-1]):
        if word == name:
            return argv[i + 1]
    return None


def host_dir(svc: dict[str, Any], container_dir: str) -> Path:
    """The repository directory that ``container_dir`` is, through the service's bind mounts."""
    target = PurePosixPath(container_dir)
    for volume in svc.get("volumes") or []:
        source, _, mount = str(volume).partition(":")
        mount = mount.split(":")[0]
        if source.startswith(".") and target.is_relative_to(mount):
            return (ROOT / source / target.relative_to(mount)).resolve()
    raise AssertionError(f"{container_dir} is not inside a bind mount of the repository")


def test_redis_persists_with_aof_and_never_evicts(compose: dict[str, Any]) -> None:
    redis = service(compose, "redis")
    assert str(redis["image"]).split(":")[0] == "redis"
    assert str(redis["image"]).split(":")[1].startswith("7")
    argv = words(redis["command"])
    assert argv[0] == "redis-server"
    assert option(argv, "--appendonly") == "yes"
    assert option(argv, "--appendfsync") == "everysec"
    assert option(argv, "--maxmemory-policy") == "noeviction"
    # The data directory is a named volume, declared at the top level.
    mounts = [str(v) for v in redis.get("volumes") or []]
    named = [m.split(":")[0] for m in mounts if m.split(":")[1:2] == ["/data"]]
    assert named, f"redis has no volume on /data: {mounts}"
    assert named[0] in (compose.get("volumes") or {})


@pytest.mark.parametrize("name", ["worker", "flower"])
def test_worker_and_flower_use_the_compose_redis(compose: dict[str, Any], name: str) -> None:
    svc = service(compose, name)
    assert "redis" in depends_on(svc)
    url = environment(svc).get("REDIS_URL", "")
    assert url.rstrip("/").split("/")[2] in ("redis:6379", "redis"), url


@pytest.mark.parametrize("name", ["worker", "flower"])
def test_worker_and_flower_install_the_package_from_the_repo(
    compose: dict[str, Any], name: str
) -> None:
    svc = service(compose, name)
    assert str(svc["image"]).startswith("python:3.11")
    argv = words(svc["command"])
    assert "pip" in argv and "-e" in argv
    target = argv[argv.index("-e") + 1]
    assert host_dir(svc, target.split("[")[0]) == ROOT
    assert target.endswith("[flower]")


def test_worker_runs_the_example_app_that_exists(compose: dict[str, Any]) -> None:
    worker = service(compose, "worker")
    argv = words(worker["command"])
    celery = argv.index("celery")
    assert argv[celery + 1:celery + 4] == ["-A", "proj", "worker"]
    app_dir = host_dir(worker, worker["working_dir"])
    assert app_dir == ROOT / "examples" / "quickstart"
    assert (app_dir / "proj.py").is_file()
    assert (app_dir / "tasks.py").is_file()


def test_flower_serves_port_5555(compose: dict[str, Any]) -> None:
    flower = service(compose, "flower")
    argv = words(flower["command"])
    celery = argv.index("celery")
    assert argv[celery + 1:celery + 4] == ["-A", "proj", "flower"]
    assert "--port=5555" in argv or option(argv, "--port") == "5555"
    assert any(str(p).split(":")[-1] == "5555" for p in flower.get("ports") or [])
    assert host_dir(flower, flower["working_dir"]) == ROOT / "examples" / "quickstart"
