"""The bench's knee rule and its reading of py-spy's output (bench/sweeps.py): what the curves'
"where it stops keeping up" and "what saturates there" rest on."""

from __future__ import annotations

from bench.sweeps import PROFILE_HZ, PROFILE_S, idle_knee, knee, own_samples


def point(load: int, events_per_s: float, worst_window_p99_ms: float = 10.0) -> dict:
    return {"load": load, "events_per_s": events_per_s, "worst_window_p99_ms": worst_window_p99_ms}


def test_no_knee_while_delivery_keeps_pace_with_the_load_and_p99_stays_in_target():
    assert knee([point(3, 300), point(15, 1500), point(60, 5000, 50.0)]) is None


def test_the_knee_is_the_first_point_whose_worst_window_p99_is_over_target():
    found = knee([point(3, 300), point(15, 1500, 50.1), point(60, 6000, 400)])
    assert found == (1, "worst 1-s window p99 50.1 ms > 50 ms")


def test_the_knee_is_the_first_point_whose_delivery_grew_less_than_half_as_much_as_its_load():
    # 4x the load: 2.1x the events/s keeps up (more than half), 1.9x does not
    assert knee([point(15, 1000), point(60, 2100)]) is None
    assert knee([point(15, 1000), point(60, 1900), point(150, 1900)]) == (
        1,
        "delivered events/s grew 1.90x for 4x the load",
    )


def test_idle_knee_is_the_first_point_over_the_memory_target_or_with_a_refused_viewer():
    fine = {"connections": 1000, "connected_ok": 1000, "kb_per_connection": 15.9}
    assert idle_knee([fine]) is None
    assert idle_knee([fine, {**fine, "kb_per_connection": 16.1}]) == (1, "16.1 KB per idle viewer > 16 KB")
    assert idle_knee([fine, {**fine, "connected_ok": 998}]) == (1, "2 viewers refused")


def test_own_samples_sums_py_spys_collapsed_stacks_by_leaf_function_not_by_line():
    collapsed = "\n".join(
        [
            "run (asyncio/runners.py:118);send (uvicorn/h11.py:500) 30",
            "run (asyncio/runners.py:118);send (uvicorn/h11.py:512) 20",
            "worker (crew.py:10);publish (stream.py:7) 10",
            "",
        ]
    )
    profile = own_samples(collapsed)
    assert profile["samples"] == 60
    assert profile["gil_busy_share"] == round(60 / (PROFILE_S * PROFILE_HZ), 2)
    assert profile["top_own"] == [
        {"function": "send (uvicorn/h11.py)", "samples": 50, "share": 0.833},
        {"function": "publish (stream.py)", "samples": 10, "share": 0.167},
    ]
