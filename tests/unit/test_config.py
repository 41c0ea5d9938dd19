"""config.py is the one place for every setting: README's table says the same, and the
environment is read into one frozen object."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from purchase_common import config

README = Path(__file__).resolve().parents[2] / "README.md"


def shown(default) -> str:
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, float):
        return f"`{default:g}`"
    return f"`{default}`" if default != "" else "(unset)"


def readme_rows() -> dict[str, tuple[str, str]]:
    section = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \| ([^|]+) \| ([^|]+) \|$", section, re.MULTILINE)
    return {name: (default.strip(), why.strip()) for name, default, why in rows}


def test_readme_table_is_the_settings_with_their_defaults_and_reasons():
    expected = {name: (shown(default), why) for name, (default, why) in config.variables().items()}
    assert readme_rows() == expected


def test_settings_are_read_once_into_a_frozen_object():
    assert config.settings() is config.settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.settings().retry_after_s = 5


def test_blank_means_default_and_bad_values_are_named():
    s = config.load({"KAFKA_SEND_TIMEOUT_S": " ", "CONSUMER_BATCH_MAX": "10", "KAFKA_ENABLE_IDEMPOTENCE": "true",
                     "KAFKA_BOOTSTRAP_SERVERS": "a:1, b:2"})
    assert (s.kafka_send_timeout_s, s.consumer_batch_max, s.kafka_enable_idempotence) == (3.0, 10, True)
    assert s.bootstrap_servers == ["a:1", "b:2"]
    with pytest.raises(ValueError, match="RETRY_AFTER_S"):
        config.load({"RETRY_AFTER_S": "soon"})


def test_the_sasl_password_stays_out_of_logs():
    assert "hunter2" not in repr(config.load({"KAFKA_SASL_PASSWORD": "hunter2"}))


def test_kafka_options_add_sasl_and_tls_only_when_configured():
    assert "sasl_mechanism" not in config.kafka_client_options(config.load({}))
    options = config.kafka_client_options(config.load({"KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
                                                       "KAFKA_SSL_CAFILE": "/ca.pem"}))
    assert options["security_protocol"] == "SASL_SSL" and options["ssl_cafile"] == "/ca.pem"
