"""Secrets never reach a log line: passwords in URLs and the settings' secret values are replaced."""
from __future__ import annotations

import json
import logging

from purchase_common import config
from purchase_common.logs import REDACTED, JsonFormatter, redact

URI = "mongodb://purchase-app:s3cr%40t-pw@mongodb.purchase.svc:27017/purchases?authSource=purchases"


def test_a_password_in_any_url_is_replaced_and_the_rest_kept():
    text = f"connect failed: {URI} and kafka+ssl://user:pa55@host:9093/ ok"
    assert redact(text) == ("connect failed: mongodb://purchase-app:***@mongodb.purchase.svc:27017/purchases"
                            "?authSource=purchases and kafka+ssl://user:***@host:9093/ ok")


def test_a_url_without_credentials_is_left_alone():
    assert redact("mongodb://127.0.0.1:27017/ and http://h:80/p@x") == "mongodb://127.0.0.1:27017/ and http://h:80/p@x"


def test_the_secret_values_are_the_passwords_not_the_whole_uri():
    settings = config.load({"MONGODB_URI": URI, "KAFKA_SASL_PASSWORD": "sasl-secret"})
    secrets = config.secret_values(settings)
    assert set(secrets) == {"s3cr@t-pw", "s3cr%40t-pw", "sasl-secret"}
    assert URI not in repr(settings) and "sasl-secret" not in repr(settings)


def test_the_json_log_line_hides_secrets_wherever_they_appear():
    formatter = JsonFormatter("history")
    formatter.secrets = config.secret_values(config.load({"MONGODB_URI": URI, "KAFKA_SASL_PASSWORD": 'q"uote'}))
    try:
        raise RuntimeError(f"auth failed for s3cr@t-pw via {URI} with q\"uote")
    except RuntimeError:
        record = logging.LogRecord("t", logging.WARNING, __file__, 1, "login with %s", ("s3cr@t-pw",),
                                   exc_info=__import__("sys").exc_info())
    record.fields = {"error": 'password q"uote'}
    line = formatter.format(record)
    for secret in ("s3cr@t-pw", "s3cr%40t-pw", 'q"uote', 'q\\"uote'):
        assert secret not in line
    entry = json.loads(line)
    assert entry["msg"] == f"login with {REDACTED}" and entry["error"].count(REDACTED) >= 3
