"""tools/trace.py's logic on Zipkin-shaped JSON (the issue 24 span contract as Zipkin stores it:
tags as strings, kinds upper case, INTERNAL spans without a kind, microseconds): the tree, the
store trace followed through the purchase.store.* tags, the milestones and their gaps."""
from __future__ import annotations

import pytest

from tools import trace

EVENT = "0f6c8a9e-5d1b-4e51-9a30-2b7c1d4e8f00"
T0 = 1_796_600_000_000_000  # µs
BUY_TRACE, STORE_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736", "9a1c3e5f7b9d1f3a5c7e9b1d3f5a7c9e"


def span(trace_id, span_id, name, service, start, duration, kind=None, parent=None, **tags):
    """One span as Zipkin's API returns it (start and duration in µs from T0)."""
    out = {"traceId": trace_id, "id": span_id, "name": name, "timestamp": T0 + start,
           "localEndpoint": {"serviceName": service}, "tags": {k.replace("__", "."): str(v) for k, v in tags.items()}}
    if duration is not None:
        out["duration"] = duration
    if kind:
        out["kind"] = kind
    if parent:
        out["parentId"] = parent
    return out


def buy_spans(trace_id=BUY_TRACE, server_id="a000000000000001", producer_id="a000000000000002", at=0, status=202):
    return [
        span(trace_id, server_id, "post /api/buy", "buy", at, 6_000, "SERVER",
             http__route="/api/buy", http__response__status_code=status, purchase__event_id=EVENT),
        span(trace_id, producer_id, "send purchases", "buy", at + 400, 3_500, "PRODUCER", server_id,
             messaging__system="kafka", messaging__message__id=EVENT, messaging__destination__name="purchases",
             messaging__destination__partition__id=0, messaging__kafka__offset=12),
    ]


def consumer_span(span_id, start, duration, outcome, store=None, trace_id=BUY_TRACE, parent="a000000000000002"):
    extra = {"purchase__store__trace_id": store[0], "purchase__store__span_id": store[1]} if store else {}
    return span(trace_id, span_id, "process purchases", "persist-purchase", start, duration, "CONSUMER", parent,
                messaging__message__id=EVENT, messaging__operation__type="process", purchase__outcome=outcome,
                **extra)


def lone_purchase():
    """One record in its batch: the store span is the consumer span's child, one trace end to end."""
    return buy_spans() + [
        consumer_span("c000000000000001", 9_000, 20_000, "stored", (BUY_TRACE, "d000000000000001")),
        span(BUY_TRACE, "d000000000000001", "store purchases", "persist-purchase", 10_000, 18_000, None,
             "c000000000000001", purchase__batch__size=1, purchase__batch__inserted=1),
        span(BUY_TRACE, "e000000000000001", "insert", "persist-purchase", 11_000, 15_000, "CLIENT",
             "d000000000000001", db__system="mongodb"),
    ]


def batched_purchase():
    """A batch of several records: the store span is a root of its own trace, named by tags."""
    return buy_spans() + [
        consumer_span("c000000000000001", 9_000, 20_000, "stored", (STORE_TRACE, "d000000000000009")),
        span(STORE_TRACE, "d000000000000009", "store purchases", "persist-purchase", 10_000, 18_000, None,
             purchase__batch__size=5, purchase__batch__inserted=5),
        span(STORE_TRACE, "e000000000000009", "insert", "persist-purchase", 11_000, 15_000, "CLIENT",
             "d000000000000009"),
    ]


def shape(roots):
    return [(depth, node.span["name"], node.linked) for depth, node in trace.walk(roots)]


def test_a_lone_purchase_is_one_tree_in_time_order():
    spans = lone_purchase()
    roots = trace.build_tree(list(reversed(spans)))  # Zipkin's order is not the tree's
    assert shape(roots) == [(0, "post /api/buy", False), (1, "send purchases", False),
                            (2, "process purchases", False), (3, "store purchases", False), (4, "insert", False)]


def test_milestones_and_their_gaps():
    spans = lone_purchase()
    marks = trace.milestones(spans, EVENT)
    assert [(m.label, m.t_us - T0) for m in marks] == [
        ("accepted", 0), ("produced", 400), ("acked", 3_900), ("consumed", 9_000), ("stored", 29_000)]
    line = trace.milestone_line(marks, trace.origin_us(spans))
    assert line == ("accepted +0.0 ms --0.4 ms--> produced +0.4 ms --3.5 ms--> acked +3.9 ms "
                    "--5.1 ms--> consumed +9.0 ms --20.0 ms--> stored +29.0 ms")


def test_a_batch_store_trace_hangs_under_the_record_that_names_it():
    spans = batched_purchase()
    assert trace.store_trace_ids(spans) == {STORE_TRACE}
    roots = trace.build_tree(spans)
    assert shape(roots) == [(0, "post /api/buy", False), (1, "send purchases", False),
                            (2, "process purchases", False), (3, "store purchases", True), (4, "insert", False)]


def test_the_tree_report_shows_relative_times_services_kinds_and_key_tags():
    text = trace.report(EVENT, batched_purchase())
    lines = text.splitlines()
    assert lines[0].startswith(f"purchase {EVENT}: 5 spans in 2 trace(s)")
    row = next(line for line in lines if "send purchases" in line)
    assert row.split()[:3] == ["+0.4ms", "3.5", "ms"]
    assert "buy: send purchases [PRODUCER]" in row and "topic=purchases partition=0 offset=12" in row
    linked = next(line for line in lines if "store purchases" in line)
    assert "(link) persist-purchase: store purchases [INTERNAL]" in linked and "batch=5" in linked
    assert lines[-1].startswith("milestones: accepted +0.0 ms")


def test_a_poison_record_ends_dead_lettered_and_its_dead_letter_is_not_the_produce():
    spans = buy_spans() + [
        consumer_span("c000000000000001", 9_000, 4_000, "dead_lettered"),
        span(BUY_TRACE, "f000000000000001", "send purchases.dlq", "persist-purchase", 10_000, 2_500, "PRODUCER",
             "c000000000000001", messaging__message__id=EVENT, purchase__dead_letter__reason="schema"),
    ]
    marks = trace.milestones(spans, EVENT)
    assert [m.label for m in marks][-1] == "dead-lettered"
    assert marks[1].t_us - T0 == 400 and marks[2].t_us - T0 == 3_900  # buy's producer, not the DLQ's
    assert marks[-1].t_us - T0 == 13_000


def test_a_redelivered_duplicate_does_not_move_the_milestones():
    spans = lone_purchase() + [consumer_span("c000000000000002", 50_000, 3_000, "duplicate",
                                             (STORE_TRACE, "d000000000000009"))]
    marks = trace.milestones(spans, EVENT)
    assert (marks[3].t_us - T0, marks[4].t_us - T0) == (9_000, 29_000)
    # Both deliveries are in the tree, under the producer span.
    assert [name for _, name, _ in shape(trace.build_tree(spans))].count("process purchases") == 2


def test_a_retried_request_is_a_second_tree_and_the_first_accept_counts():
    retry = buy_spans("b" * 32, "b000000000000001", "b000000000000002", at=100_000)
    spans = lone_purchase() + retry
    roots = trace.build_tree(spans)
    assert [root.span["traceId"] for root in roots] == [BUY_TRACE, "b" * 32]
    assert trace.milestones(spans, EVENT)[0].t_us == T0


def test_spans_still_on_their_way_leave_gaps_unknown():
    spans = buy_spans()
    spans[1].pop("duration")  # an unfinished span as Zipkin stores it
    marks = trace.milestones(spans, EVENT)
    assert [m.t_us is None for m in marks] == [False, False, True, True, True]
    line = trace.milestone_line(marks, trace.origin_us(spans))
    assert line == "accepted +0.0 ms --0.4 ms--> produced +0.4 ms --?--> acked ? --?--> consumed ? --?--> stored ?"
    assert "open" in trace.report(EVENT, spans)


def test_two_store_spans_naming_each_other_do_not_loop():
    first = span(STORE_TRACE, "d000000000000009", "store purchases", "persist-purchase", 0, 10, None,
                 purchase__store__trace_id="c" * 32, purchase__store__span_id="d000000000000008")
    second = span("c" * 32, "d000000000000008", "store purchases", "persist-purchase", 5, 10, None,
                  purchase__store__trace_id=STORE_TRACE, purchase__store__span_id="d000000000000009")
    nodes = list(trace.walk(trace.build_tree([first, second])))
    assert len(nodes) == 2


def test_the_same_span_found_twice_is_shown_once():
    spans = lone_purchase()
    assert len(list(trace.walk(trace.build_tree(spans + spans)))) == len(spans)


def test_waterfall_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = trace.write_waterfall(tmp_path / "trace.png", EVENT, batched_purchase())
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width == 1000 and 250 <= height <= 500
    assert 10_000 < len(data) < 300_000
