"""Names and settings shared by every function, each read from the environment once.

The defaults match the local stack started by ``make run`` (devstack), which prefers
these ports; Kubernetes manifests set the same variables from a ConfigMap.
"""
import os

# The fixed names that the Kubernetes manifests (ScaledObject, topic Job) must agree with;
# tests/k8s compare the manifests against these constants.
PURCHASES_TOPIC = "purchases"
DEAD_LETTER_TOPIC = "purchases.dlq"
CONSUMER_GROUP = "persist-purchase"
# KEDA starts this consumer from zero replicas; with "latest" the records that woke it
# would be skipped, so a group without committed offsets starts at the beginning.
AUTO_OFFSET_RESET = "earliest"
TOPIC_PARTITIONS = 6
DATABASE_NAME = "purchases"
COLLECTION_NAME = "purchases"

DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_MONGODB_URI = "mongodb://127.0.0.1:27017/"


def env_str(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from exc


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return float(value)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be a number, got {value!r}") from exc


def kafka_bootstrap_servers() -> list[str]:
    raw = env_str("KAFKA_BOOTSTRAP_SERVERS", DEFAULT_KAFKA_BOOTSTRAP)
    return [part.strip() for part in raw.split(",") if part.strip()]


def mongodb_uri() -> str:
    return env_str("MONGODB_URI", DEFAULT_MONGODB_URI)


def purchases_topic() -> str:
    return env_str("PURCHASES_TOPIC", PURCHASES_TOPIC)


def dead_letter_topic() -> str:
    return env_str("DEAD_LETTER_TOPIC", DEAD_LETTER_TOPIC)


def consumer_group() -> str:
    return env_str("CONSUMER_GROUP", CONSUMER_GROUP)


def database_name() -> str:
    return env_str("MONGODB_DATABASE", DATABASE_NAME)


def collection_name() -> str:
    return env_str("MONGODB_COLLECTION", COLLECTION_NAME)


def bind_host() -> str:
    # Loopback by default; container images set HOST=0.0.0.0 so probes can reach them.
    return env_str("HOST", "127.0.0.1")


def kafka_client_options() -> dict:
    """Connection options every Kafka client shares; SASL/TLS only when configured."""
    options: dict = {"bootstrap_servers": kafka_bootstrap_servers(), "client_id": env_str("KAFKA_CLIENT_ID", "purchase")}
    protocol = env_str("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper()
    options["security_protocol"] = protocol
    if protocol.startswith("SASL"):
        options["sasl_mechanism"] = env_str("KAFKA_SASL_MECHANISM", "PLAIN")
        options["sasl_plain_username"] = env_str("KAFKA_SASL_USERNAME", "")
        options["sasl_plain_password"] = env_str("KAFKA_SASL_PASSWORD", "")
    if protocol.endswith("SSL"):
        cafile = env_str("KAFKA_SSL_CAFILE", "")
        if cafile:
            options["ssl_cafile"] = cafile
    return options
