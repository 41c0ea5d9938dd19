"""bench/hey.py: reading what rakyll/hey v0.1.5 prints (summary and -o csv), no server."""
from __future__ import annotations

import pytest

from bench import hey

# Captured from hey v0.1.5 (-z 1s -c 4) against a server answering 503 to every seventh request;
# the doubled `%` and the unplaced p99 (`0%% in 0.0000 secs`, fewer than 100 answers) are hey's own.
SUMMARY = """
Summary:
  Total:\t1.0253 secs
  Slowest:\t0.0480 secs
  Fastest:\t0.0024 secs
  Average:\t0.0423 secs
  Requests/sec:\t93.6333
\x20\x20
  Total data:\t2400 bytes
  Size/request:\t25 bytes

Response time histogram:
  0.002 [1]\t|
  0.007 [3]\t|\u25a0
  0.048 [89]\t|\u25a0\u25a0\u25a0\u25a0


Latency distribution:
  10%% in 0.0438 secs
  25%% in 0.0439 secs
  50%% in 0.0440 secs
  75%% in 0.0441 secs
  90%% in 0.0443 secs
  95%% in 0.0445 secs
  0%% in 0.0000 secs

Details (average, fastest, slowest):
  DNS+dialup:\t0.0000 secs, 0.0000 secs, 0.0005 secs
  DNS-lookup:\t0.0000 secs, 0.0000 secs, 0.0000 secs
  req write:\t0.0000 secs, 0.0000 secs, 0.0003 secs
  resp wait:\t0.0008 secs, 0.0002 secs, 0.0039 secs
  resp read:\t0.0415 secs, 0.0001 secs, 0.0476 secs

Status code distribution:
  [202]\t82 responses
  [503]\t14 responses



"""

# Every request failed before an answer: no latencies, NaN averages, only the error distribution.
ALL_ERRORS = """
Summary:
  Total:\t0.0020 secs
  Slowest:\t0.0000 secs
  Fastest:\t0.0000 secs
  Average:\t NaN secs
  Requests/sec:\t5015.3621
\x20\x20

Response time histogram:


Latency distribution:

Details (average, fastest, slowest):
  DNS+dialup:\t NaN secs, 0.0000 secs, 0.0000 secs

Status code distribution:

Error distribution:
  [7]\tPost "http://127.0.0.1:18978/api/buy": dial tcp 127.0.0.1:18978: connect: connection refused
  [3]\tPost "http://127.0.0.1:18978/api/buy": context deadline exceeded (Client.Timeout exceeded while awaiting headers)
"""

CSV = """response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset
0.0018,0.0002,0.0000,0.0001,0.0009,0.0005,202,0.0003
0.0027,0.0002,0.0000,0.0001,0.0018,0.0000,202,0.0002
0.0447,0.0000,0.0000,0.0000,0.0007,0.0440,503,0.0021
0.0012,0.0000,0.0000,0.0000,0.0003,0.0009,202,0.0500
"""


def test_summary_gives_rate_percentiles_and_statuses():
    report = hey.parse(SUMMARY)
    assert report.total_s == pytest.approx(1.0253)
    assert report.requests_per_s == pytest.approx(93.6333)
    assert report.statuses == {202: 82, 503: 14}
    assert report.errors == {}
    assert report.ms(50) == 44.0 and report.ms(95) == 44.5
    # The histogram's `[89]` is not a status code, and the unplaced p99 is missing, not 0.
    assert report.ms(99) is None and 0 not in report.percentiles
    assert report.rate(202) == pytest.approx(82 / 1.0253)
    assert report.not_status(202) == 14


def test_summary_when_every_request_failed_counts_the_errors():
    report = hey.parse(ALL_ERRORS)
    assert report.statuses == {} and report.answered == 0
    assert report.error_count == 10 and len(report.errors) == 2
    assert report.not_status(202) == 10
    assert report.rate(202) == 0
    assert report.percentiles == {} and report.ms(50) is None


def test_summary_tolerates_crlf_and_missing_blank_lines():
    text = SUMMARY.replace("\n\n", "\n").replace("\n", "\r\n")
    report = hey.parse(text)
    assert report.statuses == {202: 82, 503: 14} and report.ms(50) == 44.0


def test_csv_rows_give_nearest_rank_percentiles_and_the_rate():
    report = hey.parse(CSV)
    assert report.statuses == {202: 3, 503: 1}
    assert report.ms(50) == 1.8 and report.ms(99) == 44.7
    assert report.total_s == pytest.approx(0.0512)  # the last request's start + its latency
    assert report.requests_per_s == pytest.approx(4 / 0.0512)
    assert report.errors == {}


def test_csv_skips_broken_rows():
    report = hey.parse(CSV + "0.0010,x,,,,,202\nnot,a,row\n")
    assert report.answered == 4


@pytest.mark.parametrize("text", ["", "flag provided but not defined: -x\nUsage: hey [options...] <url>\n",
                                  "Summary:\n  Total:\t1.0 secs\n"])
def test_anything_else_is_refused(text):
    with pytest.raises(ValueError):
        hey.parse(text)


def test_command_is_bounded_by_duration_or_count():
    by_time = hey.command("/c/hey", "http://127.0.0.1:1/api/buy", '{"a":1}', 16, seconds=2.5)
    assert by_time[:5] == ["/c/hey", "-z", "2.5s", "-c", "16"] and by_time[-1] == "http://127.0.0.1:1/api/buy"
    assert ["-T", "application/json"] == by_time[by_time.index("-T"):by_time.index("-T") + 2]
    by_count = hey.command("hey", "http://x/", "{}", 8, requests=3)
    assert by_count[1:3] == ["-n", "8"]  # hey refuses -n below -c
