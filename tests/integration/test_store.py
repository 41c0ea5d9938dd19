"""The MongoDB-wire store itself (issue 23), through the MongoDB API only: exactly-once rests on
the unique eventId index, and history's query is served by an index on the stand-in too."""
from __future__ import annotations

import datetime as dt
import os
import random
import uuid

import pytest
from bson import ObjectId
from purchase_common import storage
from pymongo.errors import BulkWriteError, DuplicateKeyError

from devstack.servers import start_ferretdb

pytestmark = pytest.mark.integration
STAND_IN = not os.environ.get("MONGODB_URI")


@pytest.fixture(scope="module")
def purchases(servers):
    collection = storage.connect(servers.mongodb_uri)[f"store_{uuid.uuid4().hex[:8]}"]["purchases"]
    storage.ensure_indexes(collection)
    storage.ensure_indexes(collection)  # idempotent, as every function start does it again
    yield collection
    collection.database.client.drop_database(collection.database.name)


def purchase(event_id: str, user_id: str, millis: int = 0) -> dict:
    return {"eventId": event_id, "username": "store test", "userId": user_id, "priceCents": 1200,
            "timestamp": dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=millis)}


def test_a_second_purchase_with_a_stored_event_id_is_refused(purchases):
    event_id = uuid.uuid4().hex
    purchases.insert_one(purchase(event_id, "dup-a"))
    with pytest.raises(DuplicateKeyError) as refused:
        purchases.insert_one(purchase(event_id, "dup-b"))
    assert refused.value.code == storage.DUPLICATE_KEY
    # What the consumer does: an unordered batch keeps the new ones and reports the duplicate.
    fresh = uuid.uuid4().hex
    with pytest.raises(BulkWriteError) as batch:
        purchases.insert_many([purchase(event_id, "dup-c"), purchase(fresh, "dup-c")], ordered=False)
    assert [e["code"] for e in batch.value.details["writeErrors"]] == [storage.DUPLICATE_KEY]
    assert storage.insert_purchases(purchases, [purchase(event_id, "dup-d"), purchase(fresh, "dup-d")]) \
        == storage.WriteResult(0, 2, frozenset({0, 1}))
    assert sorted(d["userId"] for d in purchases.find({"eventId": {"$in": [event_id, fresh]}})) == ["dup-a", "dup-c"]


def test_history_pages_come_back_newest_first_across_a_cursor(purchases):
    user = "pages-" + uuid.uuid4().hex[:6]
    purchases.insert_many([purchase(f"{user}-{i:03d}", user, millis=i // 2) for i in range(7)])
    first = storage.find_user_purchases(purchases, user, 4)
    second = storage.find_user_purchases(purchases, user, 4, storage.encode_cursor(first[-1]))
    assert [d["eventId"] for d in first + second] == [f"{user}-{i:03d}" for i in reversed(range(7))]


def plan_nodes(plan: dict) -> list[dict]:
    nodes, stack = [], [plan["queryPlanner"]["Plan"]]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.get("Plans", []))
    return nodes


@pytest.mark.skipif(not STAND_IN, reason="the plan's shape is FerretDB's; a real mongod has its own")
def test_the_history_query_is_served_by_an_index_on_the_stand_in(purchases):
    # explain() comes back with PostgreSQL's plan: the stand-in's FerretDB (patched,
    # devstack/ferretdb-sort-limit-pushdown.patch) sends filter, sort and limit, and PostgreSQL
    # reads the btree FerretDB made for the functions' (userId, timestamp, eventId) index.
    sort = [("timestamp", -1), ("eventId", -1)]
    cursor = storage.decode_cursor(storage.encode_cursor(purchase("c-1", "u1", millis=5)))
    deep = {"userId": "u1", "$or": [{"timestamp": {"$lt": cursor[0]}},
                                    {"timestamp": cursor[0], "eventId": {"$lt": cursor[1]}}]}
    for query in ({"userId": "u1"}, deep):
        plan = purchases.find(query).sort(sort).limit(50).explain()
        assert (plan["filterPushdown"], plan["sortPushdown"], plan["limitPushdown"]) == (True, True, True)
        nodes = plan_nodes(plan)
        assert nodes[0]["Node Type"] == "Limit", nodes
        scans = [n for n in nodes if "Index Name" in n]
        assert len(scans) == 1 and "_userid_timestamp_" in scans[0]["Index Name"], nodes
        # The before= cursor's $or comes with its hull, timestamp <= T, a range the index answers.
        bound = "_jsonb -> 'timestamp'::text) <= " if query is deep else "_jsonb -> 'userId'::text) = "
        assert bound in scans[0]["Index Cond"], scans
    # The btree's GIN companion is the stand-in's own: the MongoDB API lists only the functions' indexes.
    assert {i["name"] for i in purchases.list_indexes()} == {"_id_", storage.EVENT_ID_INDEX, storage.HISTORY_INDEX}


def test_a_page_is_exact_when_another_type_is_stored_as_the_same_json(purchases):
    # On the stand-in an ObjectId is stored as its hex string: PostgreSQL's limited page for the
    # string userId holds the ObjectId's purchases too, and FerretDB (patched) asks again without
    # the limit. MongoDB never mixes the two.
    user = uuid.uuid4().hex[:24]
    purchases.insert_many([purchase(f"{user}-o{i}", ObjectId(user), millis=10 + i) for i in range(3)]
                          + [purchase(f"{user}-s{i}", user, millis=i) for i in range(3)])
    assert [d["eventId"] for d in storage.find_user_purchases(purchases, user, 2)] == [f"{user}-s2", f"{user}-s1"]
    assert [d["eventId"] for d in storage.find_user_purchases(purchases, ObjectId(user), 2)] \
        == [f"{user}-o2", f"{user}-o1"]


def test_limited_pages_match_the_unlimited_query_cut_short(purchases):
    # A limited find is the stand-in's pushed-down path, an unlimited one FerretDB's in-memory
    # sort: on purchases with timestamp ties, ObjectIds beside strings of the same hex and cursors
    # anywhere, the first page of each must be the same (MongoDB trivially agrees).
    rng = random.Random(23)
    users = [uuid.uuid4().hex[:24] for _ in range(3)]
    purchases.insert_many([purchase(f"mix-{i:04d}", ObjectId(rng.choice(users)) if i % 7 == 0 else rng.choice(users),
                                    millis=rng.randrange(60)) for i in range(400)])
    for _ in range(40):
        user, limit, order = rng.choice(users), rng.choice([1, 7, 50]), rng.choice([-1, 1])
        query: dict = {"userId": user}
        if rng.random() < 0.6:
            at, event_id = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=rng.randrange(60)), \
                f"mix-{rng.randrange(400):04d}"
            op = "$lt" if order < 0 else "$gt"
            query["$or"] = [{"timestamp": {op: at}}, {"timestamp": at, "eventId": {op: event_id}}]
        sort = [("timestamp", order), ("eventId", order)]
        unlimited = list(purchases.find(query, {"_id": False}).sort(sort))
        assert list(purchases.find(query, {"_id": False}).sort(sort).limit(limit)) == unlimited[:limit], query


@pytest.mark.skipif(not STAND_IN, reason="starts a stand-in of its own")
def test_stopping_the_store_by_pid_stops_postgresql_too_and_its_data_stays(tmp_path):
    store = start_ferretdb(tmp_path / "store")
    collection = storage.connect(f"mongodb://127.0.0.1:{store.port}/")["kept"]["purchases"]
    storage.ensure_indexes(collection)
    collection.insert_one(purchase("kept-1", "kept"))
    postmaster = int((tmp_path / "store" / "postgresql" / "postmaster.pid").read_text().split()[0])
    store.stop()
    assert store.proc.returncode == 0
    with pytest.raises(ProcessLookupError):
        os.kill(postmaster, 0)
    again = start_ferretdb(tmp_path / "store")
    try:
        collection = storage.connect(f"mongodb://127.0.0.1:{again.port}/")["kept"]["purchases"]
        assert [d["eventId"] for d in storage.find_user_purchases(collection, "kept", 5)] == ["kept-1"]
    finally:
        again.stop()
