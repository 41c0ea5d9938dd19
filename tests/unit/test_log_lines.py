"""The JSON log line's own work: its time text and the level check, without a server."""
from __future__ import annotations

import datetime as dt
import io
import json
import logging
import random

from purchase_common import logs


def test_the_time_is_what_datetime_gives_to_the_millisecond():
    formatter = logs.JsonFormatter("buy")
    rng = random.Random(12)
    instants = [rng.uniform(0, 2e9) for _ in range(20_000)]
    instants += [1.9999996, 5.0, 1_700_000_000.9995, 1_700_000_000.0005, 122486844.64199954]
    for created in instants:
        expected = dt.datetime.fromtimestamp(created, dt.UTC).isoformat(timespec="milliseconds")
        assert formatter._time(created) == expected, created


def test_a_line_carries_its_fields_and_a_line_below_the_level_is_not_written():
    logger = logging.getLogger("purchase.test-log-lines")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter("test"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logs.log(logger, logging.DEBUG, "not written", eventId="e0")
        logs.log(logger, logging.INFO, "purchase accepted", eventId="e1", partition=4, offset=7)
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["msg"] == "purchase accepted" and entry["service"] == "test" and entry["level"] == "info"
    assert (entry["eventId"], entry["partition"], entry["offset"]) == ("e1", 4, 7)
