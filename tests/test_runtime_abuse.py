"""The abuse benchmark (issue 13, "Measure"), small: a real server process under legitimate streams
beside junk and idle ones. Every legitimate request written is answered or refused with a status
(none lost), every refusal is RESOURCE_EXHAUSTED or UNAVAILABLE, junk is refused for what it is."""

from __future__ import annotations

from dyno.bench.runtime import run_bench


def test_the_abuse_benchmark_small():
    report = run_bench(what="abuse", streams=16, requests=25, junk=6, idle=8, idle_timeout_s=1.0, verbose=False)
    assert {"legit", "refusals", "client_timeout_ms", "rss_growth_mb"} <= set(report)
    legit = report["legit"]
    assert {"sent", "answered", "lost", "p50_ms", "p99_ms"} <= set(legit)
    assert legit["sent"] == 16 * 25 == legit["answered"] + legit["refused"] + legit["lost"]
    assert legit["lost"] == 0 and legit["answered"] > 0
    assert set(report["refusals"]) <= {"RESOURCE_EXHAUSTED", "UNAVAILABLE"}, report["refusals"]
    assert report["client_timeout_ms"] == 2000.0
    junk = report["junk"]["outcomes"]
    assert len(junk) == 6, junk  # each junk stream starts with another kind
    for codes in junk.values():
        assert set(codes) <= {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"} and codes.get("INVALID_ARGUMENT"), junk
    assert sum(report["idle"]["outcomes"].values()) == 8
    assert set(report["idle"]["outcomes"]) <= {"still open", "UNAVAILABLE (idle close)"}, report["idle"]
    assert report["rss_growth_mb"] < 100
