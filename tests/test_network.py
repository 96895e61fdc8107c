"""The network model: each collective costed by its formula, a ledger per step, and the report's
--network section."""

import pytest

from wab.analysis.report import write_report
from wab.errors import UserError
from wab.parts.network import call_time, load_links, step_time

from .test_report import golden  # noqa: F401  (the fixture)


def test_each_pattern_is_costed_by_its_formula():
    bw, lat, s, n = 1e9, 1e-5, 4e6, 4
    assert call_time("all_reduce", s, n, bw, lat) == pytest.approx(2 * 3 / 4 * s / bw + 2 * 3 * lat)
    assert call_time("all_gather", s, n, bw, lat) == pytest.approx(3 * s / bw + 3 * lat)
    assert call_time("neighbour", s, n, bw, lat) == pytest.approx(s / bw + lat)
    assert call_time("broadcast", s, n, bw, lat) == pytest.approx(s / bw + 2 * lat)
    assert call_time("all_reduce", s, 1, bw, lat) == 0.0  # alone: nothing to send
    ops = {"mean": {"bytes": 2 * s, "calls": 2, "pattern": "all_reduce"},
           "soup_gather": {"bytes": s, "calls": 1}}  # an older record: the pattern from the op's name  # fmt: skip
    expected = (2 * call_time("all_reduce", s, n, bw, lat) + call_time("all_gather", s, n, bw, lat)) / 10
    assert step_time(ops, n, 10, bw, lat) == pytest.approx(expected)


def test_links_are_read_and_checked(tmp_path):
    links = load_links()
    assert links["1GbE"] == (pytest.approx(1.25e8), pytest.approx(5e-5))
    bad = tmp_path / "links.yaml"
    bad.write_text("links:\n  slow: {bandwidth_gbps: 0, latency_us: 1}\n")
    with pytest.raises(UserError, match="link 'slow' needs bandwidth_gbps > 0"):
        load_links(bad)


def test_the_report_models_every_row_on_every_link(golden, tmp_path):  # noqa: F811
    text = write_report(golden, tmp_path / "r", links="").read_text()
    assert "### Communication on a network: an estimate (digits, cnn, N=2)" in text
    assert "| papa_all |" in text.split("Communication on a network")[1] and "Modelled, not measured" in text
    assert (tmp_path / "r" / "tables" / "network.csv").exists()
