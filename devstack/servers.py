"""Fetch, build, start and stop the real servers of the local stack.

Downloads and builds are cached outside the clone, in ~/.cache/purchase-system/
(PURCHASE_CACHE_DIR overrides), so only the first start on a machine pays for them and
every fresh clone reuses them. Every server binds 127.0.0.1 and is stopped by PID.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tools.common import (
    CACHE_DIR,
    ROOT,
    Process,
    apt_install,
    fetch_maven_jars,
    free_port,
    go_install,
    pid_alive,
    poll_until,
    sh,
    spawn,
    speaker,
    wait_for_port,
)

KAFKA_VERSION = "4.1.1"
FERRETDB_VERSION = "v1.24.2"
FERRETDB_MODULE = "github.com/FerretDB/FerretDB"
# FerretDB 1.24 sorts and limits every find in its own process (it pushes only a $natural sort
# down), so history read all of a user's purchases per page. This patch of ours adds
# --test-enable-sort-limit-pushdown (ferretdb_store.sh turns it on): find's filter, sort and limit
# go to PostgreSQL, whose index on the functions' (userId, timestamp, eventId) serves them.
FERRETDB_PATCH = Path(__file__).with_name("ferretdb-sort-limit-pushdown.patch")
# The load generator of `make bench-versus` (issue 12's side-by-side table); the newest tag the
# Go module proxy serves.
HEY_VERSION = "v0.1.5"
HEY_MODULE = "github.com/rakyll/hey"
# Downloads, builds and the broker's storage formatting: slow on a first run, bounded all the same.
BUILD_TIMEOUT_S = 1800

# The broker's runtime: Kafka itself, and reload4j as the logging backend its log4j 1 config expects.
KAFKA_BROKER_JARS = (("org.apache.kafka", "kafka_2.13", KAFKA_VERSION), ("org.slf4j", "slf4j-reload4j", "1.7.36"))

KAFKA_LOG4J = """log4j.rootLogger=WARN, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={log}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaServer=INFO
log4j.logger.kafka.server.BrokerServer=INFO
"""


say = speaker("devstack")


def ensure_kafka() -> Path:
    """The Apache Kafka broker's jars, resolved from Maven Central once."""
    home = CACHE_DIR / f"kafka-{KAFKA_VERSION}"
    libs = home / "libs"
    marker = home / ".complete"
    if marker.exists():
        return libs
    if shutil.which("mvn") is None or shutil.which("java") is None:
        raise RuntimeError("Apache Kafka needs 'java' (17+) and 'mvn' on PATH")
    say(f"fetching Apache Kafka {KAFKA_VERSION} jars from Maven Central (first run only)")
    shutil.rmtree(libs, ignore_errors=True)
    started = time.monotonic()
    fetch_maven_jars(home, "kafka-broker-runtime", KAFKA_BROKER_JARS)
    marker.write_text(KAFKA_VERSION)
    say(f"Kafka jars ready in {time.monotonic() - started:.0f}s")
    return libs


def ensure_ferretdb() -> Path:
    """FerretDB built from the Go module proxy once.

    ``go install`` alone yields a binary that panics at start (its version file is generated
    by FerretDB's own build), so the module source is copied, stamped, patched (FERRETDB_PATCH;
    its digest names the build) and built here.
    """
    patch = FERRETDB_PATCH.read_bytes()
    home = CACHE_DIR / f"ferretdb-{FERRETDB_VERSION}-{hashlib.sha256(patch).hexdigest()[:8]}"
    binary = home / "ferretdb"
    if binary.exists():
        return binary
    if shutil.which("go") is None:
        raise RuntimeError("FerretDB is built with Go; 'go' is not on PATH")
    say(f"building FerretDB {FERRETDB_VERSION} from the Go module proxy (first run only, a few minutes)")
    started = time.monotonic()
    env = dict(os.environ, GOFLAGS="-mod=mod", CGO_ENABLED="0")
    info = json.loads(sh("go", "mod", "download", "-json", f"{FERRETDB_MODULE}@{FERRETDB_VERSION}", env=env,
                         timeout_s=BUILD_TIMEOUT_S))
    source = home / "src"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(info["Dir"], source)
    for path in source.rglob("*"):
        path.chmod(path.stat().st_mode | 0o200)
    (source / "build" / "version" / "version.txt").write_text(FERRETDB_VERSION + "\n")
    # A repository of its own, so that git applies the patch here whatever encloses the cache;
    # removed again, or go would try to stamp the build with its (empty) history.
    sh("git", "init", "-q", cwd=source)
    sh("git", "apply", str(FERRETDB_PATCH), cwd=source)
    shutil.rmtree(source / ".git")
    sh("go", "build", "-o", str(binary) + ".tmp", "./cmd/ferretdb", cwd=source, env=env, timeout_s=BUILD_TIMEOUT_S)
    os.replace(str(binary) + ".tmp", binary)
    shutil.rmtree(source, ignore_errors=True)
    say(f"FerretDB built in {time.monotonic() - started:.0f}s")
    return binary


def ensure_hey() -> Path:
    """rakyll/hey, the HTTP load generator of `make bench-versus`, built from the Go module proxy once."""
    return go_install(HEY_MODULE, HEY_VERSION, "hey")


# Replication of a cluster of this many nodes or more: three copies, two of which must
# acknowledge (acks=all), so one broker may be lost or restarted without losing or refusing a
# purchase. A one-node stack keeps one copy.
REPLICATION_FACTOR = 3
MIN_INSYNC_REPLICAS = 2
# How fast the active controller fences a broker that stopped heartbeating (Kafka's defaults:
# 9 s and 2 s). Until it is fenced, the partitions it led have no leader and it stays in every
# ISR, so no acks=all write completes anywhere: this session is buy's failover window after a
# broker dies. On loopback a heartbeat is never late by a second, so 3 s of silence means dead;
# heartbeats every 0.5 s keep a live broker well inside it.
BROKER_SESSION_TIMEOUT_MS = 3000
BROKER_HEARTBEAT_INTERVAL_MS = 500
# When the dead node was also the active controller, the voters first notice that (no answer to
# their fetches within this; Kafka's default 2 s) and elect another (election timeout; default
# 1 s), whose fencing session then starts: these come before the session above.
CONTROLLER_QUORUM_FETCH_TIMEOUT_MS = 1000
CONTROLLER_QUORUM_ELECTION_TIMEOUT_MS = 500


def new_cluster_id() -> str:
    """A KRaft cluster id as `kafka-storage random-uuid` makes one (16 random bytes, URL-safe
    base64 without padding, never starting with '-'), without starting a JVM for it."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


@dataclass(frozen=True)
class KafkaNode:
    """One KRaft node: its id and its two listeners on 127.0.0.1."""
    node_id: int
    port: int
    controller_port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def kafka_properties(node: KafkaNode, quorum: tuple[KafkaNode, ...], log_dir: Path,
                     overrides: dict[str, str] | None = None) -> str:
    """server.properties of one node. Every node is broker and controller at once: at three
    nodes, separate controllers would triple the JVMs (the machine's memory and cores) for an
    isolation that matters when brokers are many and busy; each node still votes in a
    three-voter quorum, so any one may go."""
    replicas = min(REPLICATION_FACTOR, len(quorum))
    min_isr = min(MIN_INSYNC_REPLICAS, replicas)
    return "\n".join([
        "process.roles=broker,controller",
        f"node.id={node.node_id}",
        "controller.quorum.voters=" + ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in quorum),
        f"listeners=PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{node.port}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "inter.broker.listener.name=PLAINTEXT",
        f"log.dirs={log_dir}",
        "num.partitions=1",
        "auto.create.topics.enable=false",
        f"default.replication.factor={replicas}",
        f"min.insync.replicas={min_isr}",
        # A replica that missed writes never becomes leader: an acknowledged purchase is never
        # dropped to keep a partition available (the default, stated).
        "unclean.leader.election.enable=false",
        f"offsets.topic.replication.factor={replicas}",
        "offsets.topic.num.partitions=6",
        f"transaction.state.log.replication.factor={replicas}",
        f"transaction.state.log.min.isr={min_isr}",
        f"share.coordinator.state.topic.replication.factor={replicas}",
        f"share.coordinator.state.topic.min.isr={min_isr}",
        f"broker.session.timeout.ms={BROKER_SESSION_TIMEOUT_MS}",
        f"broker.heartbeat.interval.ms={BROKER_HEARTBEAT_INTERVAL_MS}",
        f"controller.quorum.fetch.timeout.ms={CONTROLLER_QUORUM_FETCH_TIMEOUT_MS}",
        f"controller.quorum.election.timeout.ms={CONTROLLER_QUORUM_ELECTION_TIMEOUT_MS}",
        # A dev broker: members join at once instead of waiting for stragglers.
        "group.initial.rebalance.delay.ms=0",
        # Later lines win: what a measurement changes (e.g. Kafka's default session, for the before figure).
        *(f"{name}={value}" for name, value in (overrides or {}).items()),
        "",
    ])


def _kafka_java(libs: Path, data_dir: Path, heap: str) -> list[str]:
    return [
        "java", "-Xms256m", f"-Xmx{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{data_dir / 'log4j.properties'}",
        "-cp", f"{libs}/*",
    ]


def spawn_kafka(data_dir: Path, node: KafkaNode, quorum: tuple[KafkaNode, ...], cluster_id: str,
                heap: str = "768m", overrides: dict[str, str] | None = None) -> Process:
    """One KRaft node started in the background (its storage formatted on first start with
    cluster_id, which every node of a quorum shares); not waited for: a node of a quorum
    serves only once a majority runs."""
    libs = ensure_kafka()
    data_dir.mkdir(parents=True, exist_ok=True)
    props = data_dir / "server.properties"
    log_dir = data_dir / "log"
    props.write_text(kafka_properties(node, quorum, log_dir, overrides))
    (data_dir / "log4j.properties").write_text(KAFKA_LOG4J.format(log=data_dir / "kafka-server.log"))
    java = _kafka_java(libs, data_dir, heap)
    if not (log_dir / "meta.properties").exists():
        sh(*java, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props), timeout_s=BUILD_TIMEOUT_S)
    proc = spawn("kafka", java + ["kafka.Kafka", str(props)], data_dir / "kafka.out")
    name = "kafka" if len(quorum) == 1 else f"kafka-{node.node_id}"
    return Process(name, proc, node.port, data_dir / "kafka-server.log",
                   {"controller_port": node.controller_port, "node_id": node.node_id})


def start_kafka(data_dir: Path, port: int | None = None, controller_port: int | None = None,
                timeout_s: float = 90) -> Process:
    """A one-node Kafka, waited for until it listens."""
    node = KafkaNode(1, port or free_port(), controller_port or free_port())
    process = spawn_kafka(data_dir, node, (node,), new_cluster_id())
    wait_for_port(node.port, timeout_s, process.proc, "Kafka")
    return process


class KafkaCluster:
    """`size` KRaft nodes (broker and controller each) on 127.0.0.1, ports fixed when this is
    made so a node stopped or SIGKILLed starts again at the same address with its data. Each
    is started, stopped and killed by PID; every wait is bounded."""

    def __init__(self, data_dir: Path, size: int, first_ports: tuple[int, int] | None = None,
                 overrides: dict[str, str] | None = None):
        self.data_dir, self.overrides = data_dir, overrides
        ports = [first_ports] if first_ports else []
        ports += [(free_port(), free_port()) for _ in range(size - len(ports))]
        self.nodes = tuple(KafkaNode(i + 1, port, controller) for i, (port, controller) in enumerate(ports))
        self.processes: dict[int, Process] = {}
        # Smaller heaps when three share the machine.
        self.heap = "768m" if size == 1 else "512m"

    @property
    def bootstrap(self) -> str:
        return ",".join(node.address for node in self.nodes)

    def node(self, node_id: int) -> KafkaNode:
        return self.nodes[node_id - 1]

    def _cluster_id(self) -> str:
        """The id every node is formatted with, kept beside them for a node formatted later."""
        path = self.data_dir / "cluster.id"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(new_cluster_id())
        return path.read_text().strip()

    def start(self, timeout_s: float = 120) -> None:
        """Every node not running, then wait until each listens and the cluster serves with all
        its brokers registered."""
        cluster_id = self._cluster_id()
        started = [self._spawn(node, cluster_id) for node in self.nodes if node.node_id not in self.processes]
        for process in started:
            wait_for_port(process.port, timeout_s, process.proc, process.name, process.log)
        wait_for_kafka_ready(self.bootstrap, timeout_s, brokers=len(self.nodes))

    def _spawn(self, node: KafkaNode, cluster_id: str) -> Process:
        process = spawn_kafka(self.data_dir / f"node-{node.node_id}" if len(self.nodes) > 1 else self.data_dir,
                              node, self.nodes, cluster_id, self.heap, self.overrides)
        self.processes[node.node_id] = process
        return process

    def start_node(self, node_id: int, timeout_s: float = 120) -> None:
        """Start one node again and wait until the cluster lists it among its brokers."""
        process = self._spawn(self.node(node_id), self._cluster_id())
        wait_for_port(process.port, timeout_s, process.proc, process.name, process.log)
        wait_for_kafka_ready(self.bootstrap, timeout_s, brokers=len(self.processes))

    def kill_node(self, node_id: int) -> None:
        """SIGKILL one node (no controlled shutdown: a crash, or a machine gone)."""
        process = self.processes.pop(node_id)
        try:
            os.killpg(process.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.proc.wait(timeout=30)

    def stop_node(self, node_id: int, timeout_s: float = 60) -> None:
        """SIGTERM one node (a controlled shutdown moves its leaderships first), SIGKILL after timeout_s."""
        self.processes.pop(node_id).stop(timeout_s)

    def running(self) -> list[int]:
        return sorted(self.processes)

    def leaders(self, topic: str) -> dict[int, int]:
        """partition -> the node leading it (-1: none)."""
        return {p["partition_index"]: p["leader_id"] for p in describe_partitions(self.bootstrap, [topic])[topic]}

    def active_controller(self) -> int:
        """The node leading the metadata quorum (the controller that fences dead brokers)."""
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000, bootstrap_timeout_ms=5000)
        try:
            return int(admin.describe_metadata_quorum()["topics"][0]["partitions"][0]["leader_id"])
        finally:
            admin.close()

    def wait_in_sync(self, timeout_s: float = 120) -> None:
        """Until every partition of every topic (the internal ones too) has a leader and all its
        replicas in sync: the point where the next node may be taken down."""
        from kafka.errors import KafkaError

        def in_sync() -> bool:
            try:
                described = describe_partitions(self.bootstrap, None)
            except (KafkaError, OSError):
                return False
            return all(p["leader_id"] >= 0 and len(p["isr_nodes"]) == len(p["replica_nodes"])
                       for partitions in described.values() for p in partitions)
        poll_until(in_sync, timeout_s, 0.5, "every partition fully in sync")

    def stop(self, timeout_s: float = 30) -> None:
        """All nodes at once: one by one, the last ones would wait for a quorum already gone."""
        processes, self.processes = list(self.processes.values()), {}
        threads = [threading.Thread(target=p.stop, args=(timeout_s,)) for p in processes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


# The store's PostgreSQL runs as this user when the stack runs as root (postgres refuses root);
# Debian's postgresql package creates it.
POSTGRES_USER = "postgres"
STORE_SCRIPT = ROOT / "devstack" / "ferretdb_store.sh"
STORE_SQL = ROOT / "devstack" / "ferretdb_postgresql.sql"
# Where PostgreSQL's data goes when the stack runs as root and the data folder's parents are closed
# to the postgres user (pytest's /tmp/pytest-of-root is 0700): one folder per data folder, pruned
# once that data folder is gone.
ROOT_PG_PARENT = Path(tempfile.gettempdir()) / "purchase-postgresql"


def ensure_postgresql() -> Path:
    """The folder of PostgreSQL's server binaries (15+, Debian's postgresql-15; installed with
    apt-get when missing and run as root, as .ci/run does on a fresh machine)."""
    def found() -> Path | None:
        candidates = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/postgres")
                      if p.parent.parent.name.isdigit() and int(p.parent.parent.name) >= 15]
        return max(candidates, key=lambda p: int(p.parent.name)) if candidates else None

    if found() is None and apt_install("postgresql-15"):
        say("installed Debian's postgresql-15 (apt-get; first run only)")
    bin_dir = found()
    if bin_dir is None:
        raise RuntimeError("FerretDB's store needs PostgreSQL 15+ (Debian: apt-get install postgresql-15)")
    return bin_dir


def _open_to(path: Path, uid: int, gid: int) -> bool:
    """Whether user uid (group gid) can reach path: every folder above it searchable for them."""
    for folder in path.parents:
        st = folder.stat()
        bit = 0o100 if st.st_uid == uid else 0o010 if st.st_gid == gid else 0o001
        if not st.st_mode & bit:
            return False
    return True


def postgresql_data_dir(data_dir: Path) -> Path:
    """Where the store's PostgreSQL keeps its data: data_dir/postgresql, unless the stack runs as
    root and postgres cannot reach that, then a folder of its own under ROOT_PG_PARENT (linked from
    data_dir/postgresql)."""
    inside = data_dir / "postgresql"
    if os.geteuid() != 0:
        return inside
    import pwd

    user = pwd.getpwnam(POSTGRES_USER)
    if _open_to(inside, user.pw_uid, user.pw_gid):
        return inside
    ROOT_PG_PARENT.mkdir(mode=0o755, exist_ok=True)
    for origin in ROOT_PG_PARENT.glob("*.origin"):  # data folders gone (pytest keeps three runs)
        folder = origin.with_suffix("")
        pid_file = folder / "postmaster.pid"
        running = pid_file.exists() and pid_alive(int(pid_file.read_text().split()[0] or 0))
        if not Path(origin.read_text()).exists() and not running:
            shutil.rmtree(folder, ignore_errors=True)
            origin.unlink(missing_ok=True)
    outside = ROOT_PG_PARENT / hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    outside.with_suffix(".origin").write_text(str(data_dir.resolve()))
    if not inside.is_symlink():
        inside.symlink_to(outside)
    return outside


def start_ferretdb(data_dir: Path, port: int | None = None, timeout_s: float = 90, env: dict | None = None,
                   backend: str = "postgresql") -> Process:
    """FerretDB on a PostgreSQL of its own (devstack/ferretdb_store.sh: one process group, stopped
    by PID), or on SQLite (backend="sqlite", the store before issue 23; `make bench` compares
    them); `env` adds FERRETDB_* settings (e.g. its experimental authentication)."""
    binary = ensure_ferretdb()
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "FERRETDB_LISTEN_ADDR": f"127.0.0.1:{port}", "FERRETDB_STATE_DIR": str(data_dir),
        "FERRETDB_TELEMETRY": "disable", "FERRETDB_DEBUG_ADDR": "127.0.0.1:0", "FERRETDB_LOG_LEVEL": "warn",
        "FERRETDB_LOG_FORMAT": "json",
    }
    if backend == "sqlite":
        argv = [str(binary)]
        settings.update(FERRETDB_HANDLER="sqlite", FERRETDB_SQLITE_URL=f"file:{data_dir}/")
    else:
        argv = ["bash", str(STORE_SCRIPT)]
        pg_data = postgresql_data_dir(data_dir)
        pg_port = int((data_dir / "postgresql.port").read_text()) if (data_dir / "postgresql.port").exists() \
            else free_port()
        # The same port on a restart (fault tests, soak), so nothing of the old server lingers in the way.
        (data_dir / "postgresql.port").write_text(str(pg_port))
        settings.update(STORE_PG_DATA=str(pg_data), STORE_PG_PORT=str(pg_port), STORE_PG_BIN=str(ensure_postgresql()),
                        STORE_PG_USER=POSTGRES_USER, STORE_PG_LOG=str(data_dir / "postgresql.log"),
                        STORE_SQL=str(STORE_SQL), STORE_FERRETDB=str(binary))
    proc = spawn("ferretdb", argv, data_dir / "ferretdb.log", env={**os.environ, **settings, **(env or {})})
    wait_for_port(port, timeout_s, proc, "FerretDB")
    return Process("ferretdb", proc, port, data_dir / "ferretdb.log")


def wait_for_kafka_ready(bootstrap: str, timeout_s: float = 60, brokers: int = 1) -> None:
    """Listening is not serving: wait until the cluster answers metadata requests with at
    least `brokers` brokers registered and unfenced."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000, bootstrap_timeout_ms=5000)
            try:
                # A fenced broker is listed too (a dead one, until it comes back).
                serving = sum(not b.get("is_fenced") for b in admin.describe_cluster()["brokers"])
                if serving >= brokers:
                    return
                last_error = RuntimeError(f"{serving} of {brokers} brokers unfenced")
            finally:
                admin.close()
        except (KafkaError, OSError) as exc:
            last_error = exc
        time.sleep(0.5)
    raise TimeoutError(f"Kafka at {bootstrap} not ready within {timeout_s:.0f}s: {last_error}")


def describe_partitions(bootstrap: str, topics: list[str] | None) -> dict[str, list[dict]]:
    """topic -> its partitions as the metadata tells (leader_id, replica_nodes, isr_nodes);
    every topic when topics is None."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000, bootstrap_timeout_ms=5000)
    try:
        return {t["name"]: t["partitions"] for t in admin.describe_topics(topics)}
    finally:
        admin.close()


def ensure_topics(bootstrap: str, topics: dict[str, int], timeout_s: float = 60) -> None:
    """Create missing topics with the given partition counts (idempotent), replicated and
    guarded as the brokers' defaults say (kafka_properties: RF 3 and min ISR 2 on a cluster;
    never fewer copies because a broker happens to be down), and wait until every partition
    has a leader and a full ISR."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(name, partitions, -1) for name, partitions in topics.items() if name not in existing]
        if missing:
            try:
                admin.create_topics(missing, timeout_ms=int(timeout_s * 1000))
            except TopicAlreadyExistsError:
                pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            described = {t["name"]: t for t in admin.describe_topics(list(topics))}
            if all(name in described and described[name]["error_code"] == 0 and described[name]["partitions"]
                   and all(p["leader_id"] >= 0 and len(p["isr_nodes"]) == len(p["replica_nodes"])
                           for p in described[name]["partitions"])
                   for name in topics):
                return
            time.sleep(0.2)
        raise TimeoutError(f"topics {sorted(topics)} not ready within {timeout_s:.0f}s")
    finally:
        admin.close()

