"""history: pymongo find vs the history function as the collection grows, then at scale: a user's
first page, the heavy user's first and deep (before=) pages, and what counting costs"""
from __future__ import annotations

import datetime as dt
import json
import random
import time

from purchase_common import storage

from bench.common import bench_docs, count_all, pct, say
from bench.profiling import peak_rss_mb
from load import loadgen

HISTORY_BASE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


class HistorySection:
    """history: pymongo find vs the history function as the collection grows (a part of bench.run.Bench)."""

    def load_history_docs(self, collection, upto: int, done: int) -> int:
        users, heavy = self.sizes["history_users"], self.sizes["heavy_docs"]
        heavy_every = max(self.sizes["history_docs"] // heavy, 1)
        base = HISTORY_BASE
        batch = 10_000
        started = time.monotonic()
        while done < upto:
            n = min(batch, upto - done)
            collection.insert_many(bench_docs(done, n, users, heavy_every, base), ordered=False)
            done += n
        say(f"history collection at {done} documents ({(time.monotonic() - started):.0f}s for this step)")
        return done

    def timed_history(self, history_port: int, collection, pick, budget_s: float, samples: int) -> dict:
        """The same page through pymongo and through the function, alternating; pick() gives
        (userId, before cursor or None) for each sample."""
        target = loadgen.Target(f"http://127.0.0.1:{history_port}", None)
        conn = loadgen.HttpConnection(target, 60)
        raw_lat, fn_lat, statuses = [], [], {}
        deadline = time.monotonic() + budget_s
        for _ in range(samples):
            if time.monotonic() > deadline:
                break
            user, before = pick()
            started = time.perf_counter()
            storage.find_user_purchases(collection, user, storage.HISTORY_DEFAULT_LIMIT, before)
            raw_lat.append(time.perf_counter() - started)
            if time.monotonic() > deadline:
                break
            query = f"?before={before}" if before else ""
            started = time.perf_counter()
            try:
                # gunicorn drops keep-alive connections idle > 2 s (the pymongo query runs meanwhile).
                status, _ = loadgen.PythonLoad.request_with_one_retry(
                    conn, f"GET /api/user/{user}/purchases{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            except OSError:
                conn.close()
                status = 0
            fn_lat.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
        conn.close()
        return {"raw": {"n": len(raw_lat), **pct(raw_lat)},
                "function": {"n": len(fn_lat), **pct(fn_lat), "statuses": {str(k): v for k, v in statuses.items()}}}

    def deep_cursor(self, collection, position: int) -> str:
        """The heavy user's cursor after its `position` newest purchases (bench_docs gives it every
        heavy_every-th purchase, one millisecond apart per index)."""
        heavy, heavy_every = self.sizes["heavy_docs"], max(self.sizes["history_docs"] // self.sizes["heavy_docs"], 1)
        when = HISTORY_BASE + dt.timedelta(milliseconds=(heavy - position) * heavy_every)
        return storage.encode_cursor(collection.find_one({"userId": "heavy-user", "timestamp": when}))

    def timed_counts(self, collection, users: list[str]) -> dict:
        """What counting costs at this size: one user's purchases (served by the userId index), and
        the whole collection, exact (count: FerretDB reads every document) and from collStats."""
        per_user = []
        for user in random.sample(users, min(20, len(users))):
            started = time.perf_counter()
            collection.count_documents({"userId": user})
            per_user.append(time.perf_counter() - started)
        started = time.perf_counter()
        stats = collection.database.command("collStats", collection.name)
        collstats = {"count": stats.get("count"), "ms": round((time.perf_counter() - started) * 1000, 1)}
        total, total_s = count_all(self.stack.mongodb_uri, collection.database.name, collection.name)
        return {"per_user": {"n": len(per_user), **pct(per_user)},
                "all": {"count": total, "ms": round(total_s * 1000, 1)}, "collstats": collstats}

    def paged_history(self, history_port: int, collection, user: str, budget_s: float) -> dict:
        target = loadgen.Target(f"http://127.0.0.1:{history_port}", None)
        conn = loadgen.HttpConnection(target, 60)
        latencies, items, cursor, statuses = [], 0, None, {}
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            query = f"?limit={storage.HISTORY_DEFAULT_LIMIT}" + (f"&before={cursor}" if cursor else "")
            raw = f"GET /api/user/{user}/purchases{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
            started = time.perf_counter()
            try:
                code, headers, payload = conn.request_with_headers(raw)
            except OSError:
                conn.close()
                statuses[0] = statuses.get(0, 0) + 1
                break
            latencies.append(time.perf_counter() - started)
            statuses[code] = statuses.get(code, 0) + 1
            if code != 200:
                break
            items += len(json.loads(payload))
            cursor = headers.get("x-next-cursor")
            if not cursor:
                break
        conn.close()
        # Raw pymongo paging baseline: the same queries, same budget.
        raw_lat, raw_items, before = [], 0, None
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            started = time.perf_counter()
            docs = storage.find_user_purchases(collection, user, storage.HISTORY_DEFAULT_LIMIT, before)
            raw_lat.append(time.perf_counter() - started)
            raw_items += len(docs)
            if len(docs) < storage.HISTORY_DEFAULT_LIMIT:
                break
            before = storage.encode_cursor(docs[-1])
        return {"function": {"pages": len(latencies), "items": items, "complete": cursor is None and items > 0,
                             **pct(latencies), "statuses": {str(k): v for k, v in statuses.items()}},
                "raw": {"pages": len(raw_lat), "items": raw_items, **pct(raw_lat)}}

    def section_history(self) -> None:
        names = self.names("history")
        collection = storage.connect(self.stack.mongodb_uri, timeout_ms=120_000)[names["database"]]["purchases"]
        storage.ensure_indexes(collection)
        history = self.start_history(names)
        users = [f"u{i:05d}" for i in range(self.sizes["history_users"])]
        steps, done = [], 0
        budget = self.sizes["history_budget_s"]
        checkpoints = list(self.sizes["history_checkpoints"]) + [self.sizes["history_docs"]]
        load_started, load_s = time.monotonic(), 0.0

        def first_page():
            return random.choice(users), None

        for upto in checkpoints:
            started = time.monotonic()
            done = self.load_history_docs(collection, upto, done)
            load_s += time.monotonic() - started
            final = upto == checkpoints[-1]
            say(f"history at {done} documents: pymongo vs the function (budget {budget if final else budget // 3}s)")
            step = self.timed_history(history.port, collection, first_page, budget if final else budget // 3,
                                      self.sizes["history_samples"])
            steps.append({"documents": done, **step})
        heavy = self.sizes["heavy_docs"]
        deep = self.deep_cursor(collection, heavy - heavy // 10)
        samples = max(self.sizes["history_samples"] // 4, 10)
        say(f"history at {done} documents: the heavy user's first page and a page {heavy - heavy // 10:,} deep")
        at_scale = {
            "heavy_first": self.timed_history(history.port, collection, lambda: ("heavy-user", None), budget // 2,
                                              samples),
            "heavy_deep": self.timed_history(history.port, collection, lambda: ("heavy-user", deep), budget // 2,
                                             samples),
            "deep_position": heavy - heavy // 10,
        }
        say("history: paging the heavy user")
        paged = self.paged_history(history.port, collection, "heavy-user", min(budget, 60))
        say(f"history at {done} documents: counting (one user's, then all: FerretDB reads every document)")
        at_scale["counts"] = self.timed_counts(collection, users)
        explain = collection.find({"userId": "u00001"}).sort([("timestamp", -1), ("eventId", -1)]).limit(50).explain()
        self.results["history"] = {
            "documents": done, "users": self.sizes["history_users"], "heavy_user_docs": heavy,
            "steps": steps, "at_scale": at_scale, "heavy_paged": paged,
            "server_plan": {**{k: explain.get(k) for k in ("filterPushdown", "sortPushdown", "limitPushdown")},
                            "indexes": plan_indexes(explain)},
            "load_s": round(load_s, 1), "load_docs_per_s": round(done / load_s) if load_s else None,
            "load_and_measure_s": round(time.monotonic() - load_started, 1),
        }
        self.results["rss"]["history"] = peak_rss_mb(history.proc.pid)
        self.stop_process(history)


def plan_indexes(explain: dict) -> list[str]:
    """The indexes the server's plan reads (FerretDB on PostgreSQL: PostgreSQL's plan nodes;
    MongoDB: its winning plan's IXSCAN stages)."""
    found, stack = [], [explain.get("queryPlanner", {})]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            found += [node[k] for k in ("Index Name", "indexName") if k in node]
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return sorted(set(found))
