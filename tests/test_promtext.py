"""The Prometheus text exposition written by hand: counters, gauges, histograms, escaping."""

from __future__ import annotations

import pytest

from prefheads.infer.promtext import Counter, Gauge, Histogram, Registry


def test_text_format_of_each_kind():
    reg = Registry()
    c = reg.add(Counter("app_requests_total", "Requests.", ("path", "code")))
    h = reg.add(Histogram("app_seconds", "Latency.", [0.1, 1]))
    depth = [3]
    reg.add(Gauge("app_depth", "Queue depth.", lambda: depth[0]))
    c.inc(path="/score", code="200")
    c.inc(2, path="/score", code="200")
    c.inc(path='/a"b\\c\n', code="503")
    for v in (0.05, 0.5, 0.5, 7):
        h.observe(v)
    depth[0] = 5
    text = reg.render()
    assert text.endswith("\n")
    lines = text.splitlines()
    assert lines[:2] == ["# HELP app_requests_total Requests.", "# TYPE app_requests_total counter"]
    assert 'app_requests_total{path="/score",code="200"} 3' in lines
    assert 'app_requests_total{path="/a\\"b\\\\c\\n",code="503"} 1' in lines
    assert ['app_seconds_bucket{le="0.1"} 1', 'app_seconds_bucket{le="1"} 3', 'app_seconds_bucket{le="+Inf"} 4',
            "app_seconds_sum 8.05", "app_seconds_count 4"] == [l for l in lines if l.startswith("app_seconds")]
    assert "# TYPE app_seconds histogram" in lines and "app_depth 5" in lines
    assert c.value(path="/score", code="200") == 3 and h.count() == 4


def test_misuse_is_an_error():
    reg = Registry()
    c = reg.add(Counter("x_total", "X.", ("a",)))
    with pytest.raises(ValueError, match="registered already"):
        reg.add(Counter("x_total", "X."))
    with pytest.raises(ValueError, match="labels"):
        c.inc(b="1")
    with pytest.raises(ValueError, match="cannot decrease"):
        c.inc(-1, a="1")
    with pytest.raises(ValueError, match="increasing"):
        Histogram("h", "H.", [1, 0.5])
