"""Fetch, build, start and stop the real servers of the local stack.

Downloads and builds are cached outside the clone, in ~/.cache/purchase-system/
(PURCHASE_CACHE_DIR overrides), so only the first start on a machine pays for them and
every fresh clone reuses them. Every server binds 127.0.0.1 and is stopped by PID.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from tools.common import (
    CACHE_DIR,
    ROOT,
    Process,
    fetch_maven_jars,
    free_port,
    go_install,
    pid_alive,
    sh,
    spawn,
    speaker,
    wait_for_port,
)

KAFKA_VERSION = "4.1.1"
FERRETDB_VERSION = "v1.24.2"
FERRETDB_MODULE = "github.com/FerretDB/FerretDB"
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
    by FerretDB's own build), so the module source is copied, stamped and built here.
    """
    home = CACHE_DIR / f"ferretdb-{FERRETDB_VERSION}"
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
    sh("go", "build", "-o", str(binary) + ".tmp", "./cmd/ferretdb", cwd=source, env=env, timeout_s=BUILD_TIMEOUT_S)
    os.replace(str(binary) + ".tmp", binary)
    shutil.rmtree(source, ignore_errors=True)
    say(f"FerretDB built in {time.monotonic() - started:.0f}s")
    return binary


def ensure_hey() -> Path:
    """rakyll/hey, the HTTP load generator of `make bench-versus`, built from the Go module proxy once."""
    return go_install(HEY_MODULE, HEY_VERSION, "hey")


def start_kafka(data_dir: Path, port: int | None = None, controller_port: int | None = None,
                timeout_s: float = 90) -> Process:
    libs = ensure_kafka()
    port = port or free_port()
    controller_port = controller_port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    props = data_dir / "server.properties"
    log_dir = data_dir / "log"
    props.write_text("\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "inter.broker.listener.name=PLAINTEXT",
        f"log.dirs={log_dir}",
        "num.partitions=1",
        "auto.create.topics.enable=false",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=6",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        # A dev broker: members join at once instead of waiting for stragglers.
        "group.initial.rebalance.delay.ms=0",
        "",
    ]))
    (data_dir / "log4j.properties").write_text(KAFKA_LOG4J.format(log=data_dir / "kafka-server.log"))
    java = [
        "java", "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{data_dir / 'log4j.properties'}",
        "-cp", f"{libs}/*",
    ]
    if not (log_dir / "meta.properties").exists():
        cluster_id = sh(*java, "kafka.tools.StorageTool", "random-uuid",
                        timeout_s=BUILD_TIMEOUT_S).strip().splitlines()[-1]
        sh(*java, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props), timeout_s=BUILD_TIMEOUT_S)
    proc = spawn("kafka", java + ["kafka.Kafka", str(props)], data_dir / "kafka.out")
    wait_for_port(port, timeout_s, proc, "Kafka")
    return Process("kafka", proc, port, data_dir / "kafka-server.log", {"controller_port": controller_port})


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

    if found() is None and os.geteuid() == 0 and shutil.which("apt-get"):
        say("installing Debian's postgresql-15 (apt-get; first run only)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        sh("apt-get", "update", "-qq", env=env, timeout_s=600)
        sh("apt-get", "install", "-y", "-qq", "postgresql-15", env=env, timeout_s=900)
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


def wait_for_kafka_ready(bootstrap: str, timeout_s: float = 60) -> None:
    """Listening is not serving: wait until the broker answers metadata requests."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000, bootstrap_timeout_ms=5000)
            try:
                admin.describe_cluster()
                return
            finally:
                admin.close()
        except (KafkaError, OSError) as exc:
            last_error = exc
            time.sleep(0.5)
    raise TimeoutError(f"Kafka at {bootstrap} not ready within {timeout_s:.0f}s: {last_error}")


def ensure_topics(bootstrap: str, topics: dict[str, int], timeout_s: float = 60) -> None:
    """Create missing topics with the given partition counts (idempotent)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(name, partitions, 1) for name, partitions in topics.items() if name not in existing]
        if missing:
            try:
                admin.create_topics(missing, timeout_ms=int(timeout_s * 1000))
            except TopicAlreadyExistsError:
                pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            described = {t["name"]: t for t in admin.describe_topics(list(topics))}
            if all(name in described and described[name]["error_code"] == 0 and described[name]["partitions"]
                   and all(p["leader_id"] >= 0 for p in described[name]["partitions"])
                   for name in topics):
                return
            time.sleep(0.2)
        raise TimeoutError(f"topics {sorted(topics)} not ready within {timeout_s:.0f}s")
    finally:
        admin.close()

