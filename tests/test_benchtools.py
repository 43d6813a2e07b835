"""The benchmark tables: interleaved overhead rows and ratios from a hand-made pytest-benchmark JSON."""
from fastbayes import benchtools


def _data():
    return {"benchmarks": [
        {"name": "a", "group": "train step m [element]", "stats": {"median": 0.01},
         "extra_info": {"provider": "fastbayes", "interleaved_ms": {"plain": 2.0, "fastbayes": 3.0, "peer": 8.0}}},
        {"name": "b", "group": "per call", "stats": {"median": 1e-5},
         "extra_info": {"provider": "x", "interleaved_us": {"plain": 20.0, "x": 30.0}}},
        {"name": "c", "group": "op", "stats": {"median": 0.5}, "extra_info": {"provider": "reference"}},
    ]}


def test_overhead_rows_divide_by_the_groups_plain_provider():
    rows = {(r["group"], r["provider"]): r for r in benchtools.overhead_rows(_data())}
    assert rows[("train step m [element]", "peer")]["ratio"] == 4.0
    assert rows[("train step m [element]", "fastbayes")]["ratio"] == 1.5
    assert rows[("per call", "x")]["ratio"] == 1.5 and rows[("per call", "x")]["median_ms"] == 0.03
    assert ("op", "reference") not in rows
    md = benchtools.overhead_table(_data(), fmt="md")
    assert "| train step m [element] | peer | 8.0000 | 4.00× |" in md
    assert benchtools.overhead_table({"benchmarks": []}, fmt="md") == ""


def test_interleaved_times_every_function_round_robin():
    calls = []
    ms = benchtools.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert set(ms) == {"a", "b"} and all(v >= 0 for v in ms.values())
