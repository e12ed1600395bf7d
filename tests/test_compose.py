"""docker-compose.yml runs the quickstart the way celery-durable needs: a persistent Redis that
never evicts, a worker, Flower with the Runs tab (the conf file the package ships) behind a
password, the demo, and, in the ``rabbitmq`` profile, RabbitMQ with a worker using it as the
broker while the checkpoints stay in Redis. No Docker here: the file is parsed, and every
path and setting it relies on is checked against the repository."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
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


def option_value(argv: list[str], name: str) -> str | None:
    """The value of ``--name=value`` or ``--name value`` in a command line."""
    for i, word in enumerate(argv):
        if word.startswith(f"{name}="):
            return word.split("=", 1)[1]
        if word == name and i + 1 < len(argv):
            return argv[i + 1]
    return None


def test_flower_has_the_runs_tab_from_the_shipped_conf(compose: dict[str, Any]) -> None:
    flower = service(compose, "flower")
    argv = words(flower["command"])
    conf = option_value(argv, "--conf")
    assert conf == "/app/celery_durable/flower/flowerconfig.py", argv
    # The package is installed from /app (pip install -e), so that is the shipped file.
    shipped = host_dir(flower, conf)
    assert shipped == ROOT / "celery_durable" / "flower" / "flowerconfig.py"
    assert "celery_durable.flower.install()" in shipped.read_text()


def test_flower_asks_for_a_password(compose: dict[str, Any]) -> None:
    flower = service(compose, "flower")
    auth = option_value(words(flower["command"]), "--basic-auth")
    assert auth is not None and auth.startswith("admin:"), auth
    # $$ in compose is a literal $: the shell reads the password from the environment.
    assert auth == "admin:$$FLOWER_PASSWORD"
    assert "FLOWER_PASSWORD" in environment(flower)


def test_the_demo_runs_the_quickstart_order_once(compose: dict[str, Any]) -> None:
    demo = service(compose, "demo")
    argv = words(demo["command"])
    assert argv[-2:] == ["python", "run_demo.py"], argv
    app_dir = host_dir(demo, demo["working_dir"])
    assert (app_dir / "run_demo.py").is_file()
    assert str(demo.get("restart")) == "no"
    assert {"redis", "worker"} <= depends_on(demo)


def test_rabbitmq_is_optional(compose: dict[str, Any]) -> None:
    default = {name for name, svc in compose["services"].items() if not svc.get("profiles")}
    assert default == {"redis", "worker", "flower", "demo"}
    for name in ("rabbitmq", "worker-rabbitmq"):
        assert service(compose, name)["profiles"] == ["rabbitmq"]
    rabbit = service(compose, "rabbitmq")
    assert str(rabbit["image"]).startswith("rabbitmq:3")
    assert "rabbitmq-diagnostics" in rabbit["healthcheck"]["test"]


def test_the_rabbitmq_worker_keeps_its_checkpoints_in_redis(compose: dict[str, Any]) -> None:
    worker = service(compose, "worker-rabbitmq")
    assert {"rabbitmq", "redis"} <= depends_on(worker)
    assert worker["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    argv = words(worker["command"])
    assert argv[argv.index("celery") + 1:argv.index("celery") + 4] == ["-A", "proj", "worker"]
    # The quickstart app, given this service's environment, uses RabbitMQ as its broker and
    # Redis (the compose one) for the checkpoints, under a prefix of its own.
    env = environment(worker)
    app_dir = host_dir(worker, worker["working_dir"])
    probe = ("import json; from proj import app; from celery_durable.config import "
             "settings_for; s = settings_for(app); print(json.dumps([app.conf.broker_url, "
             "s.redis_url, s.key_prefix]))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=app_dir, capture_output=True,
                         text=True, timeout=60,
                         env={**os.environ, **env, "PYTHONPATH": str(app_dir)})
    assert out.returncode == 0, out.stderr
    broker, store, prefix = json.loads(out.stdout)
    assert broker == "amqp://guest:guest@rabbitmq:5672//"
    assert store == "redis://redis:6379/2"
    assert prefix == "durable-amqp:"
