"""The benchmark's table: each measure beside its raw baseline and target."""
from __future__ import annotations

from bench.common import TARGETS


def verdict(ok) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def table(results: dict) -> str:
    rows = [("measure", "function", "raw baseline", "ratio", "target")]
    for name, cold in results.get("coldstart", {}).items():
        parts = {k: v for k, v in cold.items() if k != "rounds"}
        *split, total = parts.items()
        rows.append((f"cold start {name}: {total[0]} median (min-max) s",
                     f"{total[1]['median']} ({total[1]['min']}-{total[1]['max']})",
                     ", ".join(f"{k} {v['median']}" for k, v in split), "", f"{cold['rounds']} rounds"))
    produce = results.get("produce")
    if produce:
        for fn, raw in zip(produce["buy"], produce["raw"], strict=False):
            ratio = round(fn["per_s"] / raw["per_s"], 2) if raw["per_s"] else None
            ok = None
            if fn["concurrency"] == max(level["concurrency"] for level in produce["buy"]):
                ok = fn["per_s"] >= TARGETS["buy_rps"] and (fn["p99"] or 1e9) < TARGETS["buy_p99_ms"]
            rows.append((f"buy c={fn['concurrency']} req/s (p50/p99 ms)",
                         f"{fn['per_s']:.0f} ({fn['p50']}/{fn['p99']})",
                         f"{raw['per_s']:.0f} ({raw['p50']}/{raw['p99']})", ratio,
                         f">=2000/s p99<50ms: {verdict(ok)}" if ok is not None else ""))
        for fn, ceiling in zip(produce["buy"], produce.get("ceiling", []), strict=False):
            ratio = round(fn["per_s"] / ceiling["per_s"], 2) if ceiling["per_s"] else None
            rows.append((f"HTTP ceiling c={ceiling['concurrency']} req/s (p50/p99 ms): buy / ceiling",
                         f"{fn['per_s']:.0f} ({fn['p50']}/{fn['p99']})",
                         f"{ceiling['per_s']:.0f} ({ceiling['p50']}/{ceiling['p99']})", ratio, ""))
        for raw in produce.get("raw_other_linger", []):
            rows.append((f"raw produce linger {produce['other_linger_ms']} c={raw['concurrency']} msgs/s (p50/p99 ms)",
                         "", f"{raw['per_s']:.0f} ({raw['p50']}/{raw['p99']})", "",
                         f"(raw above: linger {produce.get('buy_linger_ms')} ms, buy's)"))
        for raw in produce.get("raw_kafka_python", []):
            rows.append((f"raw produce kafka-python c={raw['concurrency']} msgs/s (p50/p99 ms)", "",
                         f"{raw['per_s']:.0f} ({raw['p50']}/{raw['p99']})", "", "(buy's client before issue 12)"))
        rows.append(("raw produce pipelined msgs/s", "", f"{produce['raw_pipelined']['per_s']:.0f}", "", ""))
    persist = results.get("persist")
    if persist:
        ok = persist["ratio"] >= TARGETS["persist_ratio"] if persist["ratio"] is not None else None
        pairs = ", ".join(str(r) for r in persist.get("pair_ratios", []))
        rows.append((f"persist docs/s ({persist['records']} records, medians of 2 alternating pairs)",
                     persist["function"]["per_s"], persist["raw"]["per_s"], persist["ratio"],
                     f">=0.90 of raw: {verdict(ok)}" + (f" (pairs: {pairs})" if pairs else "")))
        before = results.get("persist_sqlite")
        if before:
            ratio = round(persist["function"]["per_s"] / before["function"]["per_s"], 3) \
                if persist["function"]["per_s"] and before["function"]["per_s"] else None
            rows.append((f"persist docs/s on the store before issue 23 (FerretDB on SQLite): function, raw; "
                         f"function/raw {before['ratio']}",
                         before["function"]["per_s"], before["raw"]["per_s"], ratio,
                         f"new/old >=0.8: {verdict(ratio >= 0.8 if ratio is not None else None)}"))
        if persist["function"].get("cpu_us_per_record") or persist["raw"].get("cpu_us_per_record"):
            fn_us, raw_us = persist["function"].get("cpu_us_per_record"), persist["raw"].get("cpu_us_per_record")
            rows.append(("persist CPU µs per record", fn_us, raw_us,
                         round(fn_us / raw_us, 2) if fn_us and raw_us else None, ""))
    e2e = results.get("e2e")
    if e2e:
        s = e2e["stored"]
        ok = (s["p99"] or 1e9) < TARGETS["e2e_p99_ms"] and e2e["offered_rate"] >= TARGETS["e2e_rate"] \
            and e2e["achieved_rate"] >= 0.95 * e2e["offered_rate"]
        rows.append((f"e2e buy->stored p50/p99 ms @{e2e['offered_rate']}/s offered ({e2e['achieved_rate']}/s done)",
                     f"{s['p50']}/{s['p99']} (n={s['count']}, missing {s['missing']})", "", "",
                     f"p99<1s at 1000/s: {verdict(ok)}"))
        h = e2e["history_probes"]
        rows.append(("e2e buy->visible in history p50/p99 ms (probes)",
                     f"{h['p50']}/{h['p99']} (n={h['found']}/{h['count']})", "", "", ""))
    history = results.get("history")
    if history:
        for step in history["steps"]:
            fn, raw = step["function"], step["raw"]
            ratio = round(fn["p50"] / raw["p50"], 2) if fn.get("p50") and raw.get("p50") else None
            ok = (fn["p50"] or 1e9) <= TARGETS["history_p50_ms"] and (fn["p99"] or 1e9) <= TARGETS["history_p99_ms"] \
                if step is history["steps"][-1] else None
            rows.append((f"history first page p50/p99 ms, {step['documents']:,} docs, {history['users']:,} users",
                         f"{fn['p50']}/{fn['p99']} (n={fn['n']}, {fn['statuses']})",
                         f"{raw['p50']}/{raw['p99']} (n={raw['n']})",
                         ratio, f"p50<=10ms p99<=50ms: {verdict(ok)}" if ok is not None else ""))
        at_scale = history.get("at_scale")
        if at_scale:
            deep = f"page {at_scale['deep_position']:,} deep"
            for key, what in (("heavy_first", "first page"), ("heavy_deep", deep)):
                fn, raw = at_scale[key]["function"], at_scale[key]["raw"]
                rows.append((f"history heavy user ({history['heavy_user_docs']:,}) {what} p50/p99 ms",
                             f"{fn['p50']}/{fn['p99']} (n={fn['n']}, {fn['statuses']})",
                             f"{raw['p50']}/{raw['p99']} (n={raw['n']})",
                             round(fn["p50"] / raw["p50"], 2) if fn.get("p50") and raw.get("p50") else None, ""))
            counts = at_scale["counts"]
            rows.append((f"count ms at {history['documents']:,} docs: one user p50/p99; all (count); all (collStats)",
                         f"{counts['per_user']['p50']}/{counts['per_user']['p99']}; {counts['all']['ms']} "
                         f"(n={counts['all']['count']}); "
                         f"{counts['collstats']['ms']} (n={counts['collstats']['count']})",
                         "", "", ""))
        paged = history["heavy_paged"]
        rows.append((f"history heavy user ({history['heavy_user_docs']:,}) paged p50/p99 ms",
                     f"{paged['function']['p50']}/{paged['function']['p99']} ({paged['function']['pages']} pages, "
                     f"{paged['function']['items']} items)",
                     f"{paged['raw']['p50']}/{paged['raw']['p99']} ({paged['raw']['pages']} pages)", "", ""))
        rows.append(("server plan for the history query", str(history["server_plan"]), "", "", ""))
        if history.get("load_docs_per_s"):
            rows.append(("history load (insert_many of 10,000) docs/s", "", history["load_docs_per_s"], "", ""))
    for name, rss in results.get("rss", {}).items():
        rows.append((f"peak RSS {name} MiB (max process / tree)", f"{rss['max_process_mib']} / {rss['tree_sum_mib']}",
                     "", "", ""))
    widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
    lines = []
    for index, row in enumerate(rows):
        lines.append(" | ".join(str("" if v is None else v).ljust(widths[i]) for i, v in enumerate(row)).rstrip())
        if index == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)
