"""coldstart: exec -> serving for each function, split into its parts, on an idle moment of the run"""
from __future__ import annotations

import json
import statistics
import time
import urllib.error
import urllib.request

from bench.common import purchase_record, say
from tools.common import free_port, poll_until

POLL_S = 0.005  # how finely the first answer is looked for


def _status(url: str, body: bytes | None = None) -> int | None:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def _summary(runs: list[dict]) -> dict:
    return {key: {"median": round(statistics.median(r[key] for r in runs), 3),
                  "min": round(min(r[key] for r in runs), 3), "max": round(max(r[key] for r in runs), 3)}
            for key in runs[0]}


class ColdStartSection:
    """coldstart: exec -> first answer for buy and history, exec -> first record stored for the
    consumer, each split into its parts (a part of bench.run.Bench)."""

    def cold_http(self, name: str, names: dict, url_path: str, body: bytes | None, expected: int) -> dict:
        """exec -> port accepting (interpreter, imports, gunicorn boot) -> first `expected` answer
        (for buy: the Kafka producer's connection and first acknowledged send)."""
        started = time.monotonic()
        process = (self.start_buy if name == "buy" else self.start_history)(names)  # returns once listening
        listening = time.monotonic()
        url = f"http://127.0.0.1:{process.port}{url_path}"
        poll_until(lambda: _status(url, body) == expected, 30, POLL_S, f"{name}'s first {expected}")
        answered = time.monotonic()
        self.stop_process(process)
        return {"exec_to_listening_s": listening - started, "listening_to_first_answer_s": answered - listening,
                "exec_to_first_answer_s": answered - started}

    def cold_consumer(self, names: dict) -> dict:
        """exec -> /healthz answering -> the one waiting record stored (group join and first poll)."""
        from kafka import KafkaProducer

        self.topic(names["topic"])
        key, value, headers = purchase_record(0)
        producer = KafkaProducer(bootstrap_servers=self.stack.kafka_bootstrap, acks="all")
        producer.send(names["topic"], key=key, value=value, headers=headers).get(timeout=30)
        producer.close(timeout=10)
        event_id = dict(headers)["ce_id"].decode()
        collection = self.mongo[names["database"]]["purchases"]
        health_port = free_port()
        started = time.monotonic()
        process = self.start_consumer(names, health_port=health_port, wait=False)
        poll_until(lambda: _status(f"http://127.0.0.1:{health_port}/healthz") == 200, 30, POLL_S,
                   "the consumer's /healthz")
        healthy = time.monotonic()
        poll_until(lambda: collection.find_one({"eventId": event_id}, {"_id": 1}), 60, POLL_S,
                   "the waiting record stored")
        stored = time.monotonic()
        self.stop_process(process)
        return {"exec_to_healthz_s": healthy - started, "healthz_to_first_stored_s": stored - healthy,
                "exec_to_first_stored_s": stored - started}

    def section_coldstart(self) -> None:
        rounds = self.sizes["cold_rounds"]
        names = self.names("cold")
        self.topic(names["topic"])
        buy_body = json.dumps({"username": "cold", "userId": "cold-1", "price": 1}).encode()
        runs: dict = {"buy": [], "history": [], "consumer": []}
        for index in range(rounds):
            say(f"cold start round {index + 1}/{rounds}: buy, history, consumer")
            runs["buy"].append(self.cold_http("buy", names, "/api/buy", buy_body, 202))
            runs["history"].append(self.cold_http("history", names, "/api/user/cold-1/purchases", None, 200))
            runs["consumer"].append(self.cold_consumer(dict(names, topic=f"{names['topic']}-{index}",
                                                            group=f"{names['group']}-{index}")))
        self.results["coldstart"] = {name: {"rounds": len(r), **_summary(r)} for name, r in runs.items()}
