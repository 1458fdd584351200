"""Issue 31, item 9: chart layout (Monitor axis labels, memory across a stopped gap, panel place; the Data page histogram)."""

from __future__ import annotations

import pandas as pd

from app import monitor_view


def _rows(times: list[float]) -> list[dict]:
    return [{"time": t, "ranks": [{"pid": 1, "rank": 0, "rss_bytes": 2**30}], "host_used_bytes": 2**33,
             "host_total_bytes": 2**34} for t in times]


def test_memory_axis_counts_run_time_not_the_stopped_gap():
    """Stopped for an hour, then resumed: the axis goes on from where it was (as Run time does), so the line does
    not run straight across the hour."""
    dev, host, on_gpu = monitor_view.resource_frames(_rows([1000, 1002, 1004, 4604, 4606]))
    assert not on_gpu
    assert list(dev["t"]) == [0, 2, 4, 4, 6]
    assert list(host["t"].drop_duplicates()) == [0, 2, 4, 6]


def test_a_flat_series_gets_short_axis_labels():
    """One loss point (or a constant gradient norm) drew ticks like "11.936600"; "~g" trims them to 11.9366."""
    df = pd.DataFrame({"step": [1], "series": ["loss"], "value": [11.9366]})
    spec = monitor_view.line_chart(df, "step", "step", "loss").to_dict()
    assert spec["encoding"]["y"]["axis"]["format"] == "~g"
    spec = monitor_view.line_chart(df, "step", "step", "lr", y_format=".1e").to_dict()
    assert spec["encoding"]["y"]["axis"]["format"] == ".1e"


def _panel_index(at) -> int:
    """Where the live panel (the one with the headline metrics) sits among the page's top-level elements."""
    return next(i for i, node in at.main.children.items() if hasattr(node, "get") and node.get("metric"))


def test_the_panel_keeps_its_place_when_a_run_ends(app, runs_root):
    """A run that turns stopped redraws the page with a notice above the buttons; the panel used to move down one
    place, and until the redraw finished its charts were drawn into the button row that had taken its old place."""
    from pages_helpers import goto, make_run

    make_run(runs_root, "live", "running", alive=True)
    make_run(runs_root, "ended", "stopped", steps=4)
    goto(app, "pages/monitor.py")
    app.selectbox(key="mon.run").set_value("live").run()
    live = _panel_index(app)
    app.selectbox(key="mon.run").set_value("ended").run()
    assert app.info, "the stopped run's notice is shown"
    assert _panel_index(app) == live


def test_histogram_bars_stand_on_the_axis_and_the_cut_part_on_the_kept_part():
    """The token histogram drew each bar as a thin floating dash at its height (x2 with a stacked y)."""
    from types import SimpleNamespace

    from app import data_view

    stats = SimpleNamespace(lengths=[5, 5, 5, 40, 41], max_length=40)  # what the histogram reads of TokenStats
    spec = data_view.length_histogram(stats, {"x": "x", "y": "y"}).to_dict()
    bars = spec["layer"][0]
    assert bars["encoding"]["y2"]["field"] == "bottom"
    rows = {(r["start"], r["cut"]): r for r in spec["datasets"][bars["data"]["name"]]}
    kept = next(r for (start, cut), r in rows.items() if not cut and r["count"] == 3)
    assert (kept["bottom"], kept["top"]) == (0, 3)
    cut = next(r for (start, c), r in rows.items() if c)  # 41 tokens, in the bin of the kept 40
    assert (cut["bottom"], cut["top"]) == (1, 2)
