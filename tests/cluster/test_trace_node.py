"""One purchase followed on the node in one trace (issue 24): the client's request through the
ingress (Traefik) to the buy Revision, its Kafka send, the persist-purchase pod KEDA starts from
zero for it, the batch's write and its MongoDB command, all read back from the Zipkin pod
(k8s/overlays/node/zipkin/) the functions export to through purchase-config; the consumer's cold
start shows as the gap between the broker's ack and the record's consumption. Its file sorts after
the deploy, scaling and token tests on purpose: it needs the consumer at zero, and waits for KEDA
to take it back there after the token test's purchase."""
from __future__ import annotations

import os
import secrets
import subprocess
import time
import uuid

import requests
from clusterlib import (
    COOLDOWN_S,
    MARGIN_S,
    POLL_S,
    POLLING_INTERVAL_S,
    RESULTS,
    ROOT,
    accepted_purchase,
    pod_timeline,
    record_timeline,
    wait_until,
)
from purchase_common import config

from cluster.observe import parse_time, zipkin_url
from tools.trace import ZipkinClient

# KEDA's poll, the pod's start and the consumer's group join, then the SDK's batch export (every
# few seconds) and Zipkin's indexing.
TRACE_COMPLETE_S = POLLING_INTERVAL_S + MARGIN_S + 150
ZIPKIN_READY_S = 180
# The least a start from zero can take: KEDA's poll, a pod created and started, Python imported,
# the consumer group joined; a consumer already running consumes within milliseconds of the ack.
COLD_START_MIN_S = 1.0
# Zipkin keeps span names in lower case.
SPAN_NAMES = {"server": "post /api/buy", "producer": f"send {config.PURCHASES_TOPIC}",
              "consumer": f"process {config.PURCHASES_TOPIC}", "store": "store purchases"}


def names(spans: list[dict]) -> list[tuple[str, str]]:
    return [(service(s), s.get("name", "")) for s in spans]


def tags(span: dict) -> dict[str, str]:
    return span.get("tags") or {}


def service(span: dict) -> str:
    return (span.get("localEndpoint") or {}).get("serviceName", "")


def the_span(spans: list[dict], **where) -> dict:
    found = [s for s in spans if all((service(s) if key == "service" else s.get(key)) == value
                                     for key, value in where.items())]
    assert len(found) == 1, f"one span with {where}, found {len(found)} in {names(spans)}"
    return found[0]


def zipkin_serving(kube) -> ZipkinClient:
    """The node's Zipkin by its Service's address (what `make cluster-zipkin-url` prints), once healthy."""
    url = zipkin_url(kube)

    def healthy() -> bool:
        try:
            return requests.get(f"{url}/health", timeout=5).status_code == 200
        except requests.RequestException:
            return False
    wait_until(healthy, ZIPKIN_READY_S, POLL_S, f"Zipkin's /health at {url}")
    return ZipkinClient(url)


def buy_with_a_callers_trace(stack, user: str) -> tuple[requests.Response, str, float]:
    """One purchase through the ingress, in a trace the caller started: buy's 202, the caller's trace
    id, and the wall-clock time it was sent."""
    trace_id = secrets.token_hex(16)
    revision = stack.buy_revision
    headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    sent = time.time()
    with requests.Session() as session:
        session.headers.update(headers)
        answer, _ = accepted_purchase(session, revision, {"username": "node trace", "userId": user, "price": 3},
                                      retry_s=60)
    return answer, trace_id, sent


def trace_until_stored(zipkin: ZipkinClient, trace_id: str, kube, pods: dict[str, dict]) -> list[dict]:
    """The trace's spans once the MongoDB command under the batch's write has arrived (the last to
    end); meanwhile every persist-purchase pod seen goes into `pods` (name -> its latest state)."""
    spans: list[dict] = []

    def complete() -> bool:
        nonlocal spans
        pods.update({pod["metadata"]["name"]: pod for pod in kube.consumer_pods()})
        try:
            spans = zipkin.trace(trace_id)
        except requests.RequestException:
            return False
        found = {s.get("name") for s in spans}
        return set(SPAN_NAMES.values()) <= found and any(s.get("kind") == "CLIENT" for s in spans)
    try:
        wait_until(complete, TRACE_COMPLETE_S, 1.0, f"trace {trace_id} from buy to the MongoDB write")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; spans so far: {names(spans)}") from None
    return spans


def the_consumer_pod_started_for_it(pods: dict[str, dict], sent: float) -> dict:
    """The one persist-purchase pod there was, created after the purchase was sent (KEDA's start from zero)."""
    assert len(pods) == 1, f"one consumer pod, seen {sorted(pods)}"
    (pod,) = pods.values()
    created = parse_time(pod["metadata"]["creationTimestamp"]).timestamp()
    assert created >= int(sent), f"the consumer pod was created {sent - created:.1f} s before the purchase"
    return pod


def container_started(pod: dict) -> float:
    (status,) = pod["status"]["containerStatuses"]
    running = (status.get("state") or {}).get("running") or {}
    terminated = (status.get("state") or {}).get("terminated") or {}
    return parse_time(running.get("startedAt") or terminated.get("startedAt")).timestamp()


def make_trace(event_id: str, url: str) -> subprocess.CompletedProcess:
    """`make trace` as a person runs it against the node: ZIPKIN_URL from `make cluster-zipkin-url`."""
    png = RESULTS / "trace-node.png"
    return subprocess.run(["make", "--no-print-directory", "-s", "trace", f"ID={event_id}", f"ZIPKIN_URL={url}",
                           f"TRACE_ARGS=--png {png} --wait 30"], cwd=ROOT, capture_output=True, text=True,
                          timeout=180, env=dict(os.environ))


def test_a_purchase_is_one_trace_from_the_ingress_to_the_keda_started_consumers_write(stack, kube, capsys):
    stack.wait_idle_at_zero(COOLDOWN_S + 4 * POLLING_INTERVAL_S + 60)
    zipkin = zipkin_serving(kube)
    user = "t" + uuid.uuid4().hex[:10]

    answer, trace_id, sent = buy_with_a_callers_trace(stack, user)
    event_id = answer.json()["id"]
    assert answer.headers["traceparent"].split("-")[1] == trace_id, \
        "the caller's trace continues through Traefik and Knative into buy, and the 202 names it"

    pods: dict[str, dict] = {}
    spans = trace_until_stored(zipkin, trace_id, kube, pods)
    # The answered request's span (a retried 502/504 from the platform would be a second one).
    (server,) = [s for s in spans if s.get("name") == SPAN_NAMES["server"]
                 and tags(s).get("http.response.status_code") == "202"]
    producer = the_span(spans, name=SPAN_NAMES["producer"])
    consumer = the_span(spans, name=SPAN_NAMES["consumer"])
    store = the_span(spans, name=SPAN_NAMES["store"])
    insert = the_span(spans, kind="CLIENT", parentId=store["id"])

    # buy's server span -> its producer span -> the consumer's span for the record (ce_traceparent)
    # -> the batch's write (a batch of this one record) -> pymongo's insert.
    assert (service(server), server["kind"]) == ("buy", "SERVER")
    assert tags(server)["purchase.event_id"] == event_id
    assert (service(producer), producer["kind"], producer["parentId"]) == ("buy", "PRODUCER", server["id"])
    assert tags(producer)["messaging.message.id"] == event_id
    assert tags(producer)["messaging.destination.name"] == config.PURCHASES_TOPIC
    assert (service(consumer), consumer["kind"]) == ("persist-purchase", "CONSUMER")
    assert consumer["parentId"] == producer["id"], "the record's ce_traceparent names buy's producer span"
    assert tags(consumer)["messaging.message.id"] == event_id and tags(consumer)["purchase.outcome"] == "stored"
    assert tags(consumer)["messaging.consumer.group.name"] == config.CONSUMER_GROUP
    assert tags(consumer)["messaging.kafka.offset"] == tags(producer)["messaging.kafka.offset"]
    store_ids = (tags(consumer)["purchase.store.trace_id"], tags(consumer)["purchase.store.span_id"])
    assert store_ids == (trace_id, store["id"])
    assert (service(store), store.get("kind"), store["parentId"]) == ("persist-purchase", None, consumer["id"])
    assert tags(store)["purchase.batch.size"] == "1" and tags(store)["purchase.batch.inserted"] == "1"
    assert service(insert) == "persist-purchase" and insert["name"].endswith(".insert")
    assert tags(insert)["db.system"] == "mongodb"
    assert stack.stored_ids(user) == [event_id]

    # The consumer that took it is the pod KEDA started for it, and its cold start is the gap.
    pod = the_consumer_pod_started_for_it(pods, sent)
    acked_s = (producer["timestamp"] + producer["duration"]) / 1e6
    consumed_s = consumer["timestamp"] / 1e6
    stored_s = (consumer["timestamp"] + consumer["duration"]) / 1e6
    # The API's times have whole seconds: the container started in that second or later.
    assert consumed_s >= int(container_started(pod)), "consumed by a container that started after the ack"
    gap_s = consumed_s - acked_s
    assert gap_s > COLD_START_MIN_S, f"acked -> consumed {gap_s:.2f} s: the consumer was not started from zero"

    url = zipkin.base_url
    shown = make_trace(event_id, url)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"purchase {event_id}:" in shown.stdout and "--> stored +" in shown.stdout, shown.stdout

    figures = {
        "event_id": event_id, "trace_id": trace_id, "zipkin": url,
        "request_s": round(server["duration"] / 1e6, 3), "send_to_ack_s": round(producer["duration"] / 1e6, 3),
        "acked_to_consumed_s": round(gap_s, 2), "consumed_to_stored_s": round(stored_s - consumed_s, 3),
        "insert_s": round(insert["duration"] / 1e6, 4), "pod": pod_timeline(pod),
        "container_started_after_ack_s": round(container_started(pod) - acked_s, 1),
    }
    path = record_timeline("trace-node", figures)
    with capsys.disabled():
        print(f"\n[node] one purchase's trace ({path}): {figures}\n{shown.stdout}")
