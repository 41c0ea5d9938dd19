"""Compose the local stack: servers (or the ones named by env), topics, functions, gateway."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from purchase_common import config

from tools.common import ROOT, Process, free_port, pick_port, spawn, stop_pid, wait_for_port

from . import gateway, zipkin
from .servers import KafkaCluster, ensure_topics, start_ferretdb, wait_for_kafka_ready

BIN = Path(sys.executable).parent
FUNCTIONS = ROOT / "functions"
# Fixed ports when free, so the defaults in purchase_common.config and the README just work.
PREFERRED_PORTS = {"kafka": 9092, "kafka-controller": 9093, "ferretdb": 27017, "gateway": 8080,
                   "buy": 8091, "history": 8092, "persist-purchase": 8093, "zipkin": 9411}
DEAD_LETTER_PARTITIONS = 1
# How many KRaft nodes `make run` starts (KAFKA_BROKERS=3: a replicated cluster, RF 3, min ISR 2;
# one starts faster, and is what the functions' default bootstrap points at).
BROKERS_ENV = "KAFKA_BROKERS"


def brokers_wanted(default: int = 1) -> int:
    return int(os.environ.get(BROKERS_ENV) or default)


@dataclass
class Stack:
    kafka_bootstrap: str
    mongodb_uri: str
    processes: list[Process] = field(default_factory=list)
    ports: dict = field(default_factory=dict)
    # The Zipkin the functions export their spans to ("": none, nothing exported).
    zipkin_url: str = ""

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    def find(self, name: str) -> Process:
        return next(p for p in self.processes if p.name == name)


@dataclass
class RestartableServers:
    """Kafka (one node, or a cluster of `brokers`) and FerretDB on ports fixed when this is made,
    so a stopped server starts again at the same address with its data: what fault injection
    needs (tests/faults, load/soak/). A cluster's nodes are killed and restarted one by one
    through `kafka`."""
    data_dir: Path
    brokers: int = 1
    mongo_port: int = field(default_factory=free_port)
    ferretdb: Process | None = None
    kafka: KafkaCluster = field(init=False)

    def __post_init__(self) -> None:
        self.kafka = KafkaCluster(self.data_dir / "kafka", self.brokers)

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap

    @property
    def mongodb_uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.mongo_port}/"

    def start_kafka(self) -> None:
        """Every node not running."""
        self.kafka.start()

    def stop_kafka(self) -> None:
        """Every node."""
        self.kafka.stop()

    def start_ferretdb(self) -> None:
        self.ferretdb = start_ferretdb(self.data_dir / "ferretdb", self.mongo_port)

    def stop_ferretdb(self) -> None:
        self.ferretdb.stop()
        self.ferretdb = None

    def stop(self) -> None:
        if self.ferretdb is not None:
            self.ferretdb.stop()
        self.kafka.stop()


def _port(name: str, preferred: bool) -> int:
    return pick_port(PREFERRED_PORTS[name]) if preferred else free_port()


def start_servers(data_dir: Path, preferred_ports: bool, topic: str | None = None,
                  dead_letter_topic: str | None = None, brokers: int | None = None,
                  traces: bool = False) -> Stack:
    """Start Kafka (`brokers` nodes; default KAFKA_BROKERS, else one) and FerretDB unless
    KAFKA_BOOTSTRAP_SERVERS / MONGODB_URI name existing ones; with `traces`, Zipkin too unless
    ZIPKIN_URL names one (the functions then export their spans to it, function_env)."""
    stack = Stack(kafka_bootstrap=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", ""),
                  mongodb_uri=os.environ.get("MONGODB_URI", ""),
                  zipkin_url=os.environ.get("ZIPKIN_URL", "").rstrip("/") if traces else "")
    try:
        tracer = None
        if traces and not stack.zipkin_url:
            # Its JVM starts while Kafka's do; waited for at the end.
            tracer = zipkin.start(data_dir / "zipkin", _port("zipkin", preferred_ports), wait=False)
            stack.processes.append(tracer.process)
            stack.zipkin_url = tracer.base_url
        if not stack.kafka_bootstrap:
            # The first node on the preferred ports, so the functions' default bootstrap reaches it.
            cluster = KafkaCluster(data_dir / "kafka", brokers or brokers_wanted(),
                                   (_port("kafka", preferred_ports), _port("kafka-controller", preferred_ports)))
            try:
                cluster.start()
            finally:
                stack.processes.extend(cluster.processes.values())
            stack.kafka_bootstrap = cluster.bootstrap
        if not stack.mongodb_uri:
            ferretdb = start_ferretdb(data_dir / "ferretdb", _port("ferretdb", preferred_ports))
            stack.processes.append(ferretdb)
            stack.mongodb_uri = f"mongodb://127.0.0.1:{ferretdb.port}/"
        wait_for_kafka_ready(stack.kafka_bootstrap)
        ensure_topics(stack.kafka_bootstrap, {
            topic or config.settings().purchases_topic: config.TOPIC_PARTITIONS,
            dead_letter_topic or config.settings().dead_letter_topic: DEAD_LETTER_PARTITIONS,
        })
        if tracer is not None:
            tracer.wait_ready()
    except BaseException:
        stack.stop()
        raise
    return stack


def function_env(stack: Stack, **overrides: str) -> dict:
    env = dict(os.environ)
    env.update({
        "KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "MONGODB_URI": stack.mongodb_uri,
        "HOST": "127.0.0.1",
        "PYTHONUNBUFFERED": "1",
    })
    if stack.zipkin_url:
        env.update(zipkin.trace_env(stack.zipkin_url))
    env.update(overrides)
    return env


# buy is CPU-bound in Python (request handling, the Kafka client): two gunicorn worker
# processes, each with its own producer, nearly double its throughput on two cores.
BUY_SERVER_ENV = {"WORKERS": "2"}


def start_buy(env: dict, port: int, log_dir: Path, source: Path | None = None, target: str = "buy") -> Process:
    """buy, or (source/target) another function on exactly buy's server settings."""
    return _start_http_function(target, "buy", {**BUY_SERVER_ENV, **env}, port, log_dir, source=source)


def start_history(env: dict, port: int, log_dir: Path) -> Process:
    return _start_http_function("history", "history", env, port, log_dir)


def start_persist_cloudevent_endpoint(env: dict, port: int, log_dir: Path) -> Process:
    """persist_purchase as a plain CloudEvent function over HTTP (e.g. behind a KafkaSource)."""
    return _start_http_function("persist_purchase", "persist_purchase", env, port, log_dir,
                                signature_type="cloudevent")


def _start_http_function(name: str, folder: str, env: dict, port: int, log_dir: Path,
                         signature_type: str = "http", source: Path | None = None) -> Process:
    source = source or FUNCTIONS / folder / "main.py"
    argv = [str(BIN / "functions-framework"), "--target", name, "--source", str(source),
            "--signature-type", signature_type, "--host", "127.0.0.1", "--port", str(port)]
    proc = spawn(name, argv, log_dir / f"{name}.log", env=env, cwd=source.parent)
    wait_for_port(port, 60, proc, name)
    return Process(name, proc, port, log_dir / f"{name}.log")


def start_consumer(env: dict, health_port: int, log_dir: Path, name: str = "persist-purchase",
                   wait: bool = True) -> Process:
    env = dict(env, HEALTH_PORT=str(health_port))
    folder = FUNCTIONS / "persist_purchase"
    proc = spawn(name, [sys.executable, str(folder / "consumer.py")], log_dir / f"{name}.log", env=env, cwd=folder)
    if wait:
        wait_for_port(health_port, 60, proc, name)
    return Process(name, proc, health_port, log_dir / f"{name}.log")


def start_gateway(port: int, buy_port: int, history_port: int, log_dir: Path,
                  upstream_timeout_s: float = gateway.UPSTREAM_TIMEOUT_S,
                  client_timeout_s: float = gateway.CLIENT_TIMEOUT_S, access_log: bool = False) -> Process:
    """Envoy on 127.0.0.1:port in front of buy and history, its configuration written beside its log."""
    log = log_dir / "gateway.log"
    config = gateway.write_config(log_dir / "gateway.json", port,
                                  {"buy": f"127.0.0.1:{buy_port}", "history": f"127.0.0.1:{history_port}"},
                                  upstream_timeout_s=upstream_timeout_s, client_timeout_s=client_timeout_s,
                                  access_log=log_dir / "gateway-access.log" if access_log else None)
    proc = spawn("gateway", gateway.command(config), log, cwd=ROOT)
    wait_for_port(port, 30, proc, "gateway")
    return Process("gateway", proc, port, log)


def start_functions(stack: Stack, log_dir: Path, preferred_ports: bool, env: dict | None = None) -> None:
    """Start buy, history, the persist-purchase consumer and the gateway; record their ports."""
    env = env or function_env(stack)
    ports = {name: _port(name, preferred_ports) for name in ("buy", "history", "persist-purchase", "gateway")}
    stack.ports.update(ports)
    stack.processes.append(start_buy(env, ports["buy"], log_dir))
    stack.processes.append(start_history(env, ports["history"], log_dir))
    stack.processes.append(start_consumer(env, ports["persist-purchase"], log_dir))
    stack.processes.append(start_gateway(ports["gateway"], ports["buy"], ports["history"], log_dir))


def write_state(path: Path, stack: Stack) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "kafka_bootstrap": stack.kafka_bootstrap,
        "mongodb_uri": stack.mongodb_uri,
        "zipkin_url": stack.zipkin_url,
        "processes": [{"name": p.name, "pid": p.proc.pid, "port": p.port, "log": str(p.log)} for p in stack.processes],
    }, indent=2))


def stop_from_state(path: Path) -> list[str]:
    if not path.exists():
        return []
    state = json.loads(path.read_text())
    stopped = []
    for entry in reversed(state.get("processes", [])):
        stop_pid(entry["pid"])
        stopped.append(f"{entry['name']} (pid {entry['pid']})")
    path.unlink()
    return stopped
