"""Reports made by someone else, or edited: `report` (summary and --html) refuses each in one line
that names what is wrong, and a review folder's hostile leftovers are removed, never followed."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from i2pscan.report.schema import META_KEY


def _write(path, columns: dict, meta: bytes | None = b"{}"):
    columns = {"score": pa.array([0.5] * len(next(iter(columns.values()))), pa.float32()), **columns}
    table = pa.table(columns)
    if meta is not None:
        table = table.replace_schema_metadata({META_KEY: meta})
    pq.write_table(table, path)
    return path


def _duplicated_path(path):
    table = pa.Table.from_arrays([pa.array(["a.png"]), pa.array(["b.png"]), pa.array(["real"]), pa.array([0.5])],
                                 names=["path", "path", "verdict", "score"])
    pq.write_table(table, path)
    return path


CRAFTED = {
    "a duplicated path column": (_duplicated_path, "it has two columns named path"),
    "null paths": (lambda p: _write(p, {"path": pa.array(["a.png", None]), "verdict": ["real", "real"]}),
                   "1 row(s) have no path"),
    "binary paths": (lambda p: _write(p, {"path": pa.array([b"a.png"]), "verdict": ["real"]}),
                     "its path column holds binary"),
    "an integer verdict column": (lambda p: _write(p, {"path": ["a.png"], "verdict": [1]}),
                                  "its verdict column holds int64"),
    "metadata that is a list": (lambda p: _write(p, {"path": ["a.png"], "verdict": ["real"]}, json.dumps([1]).encode()),
                                "its i2pscan metadata is a JSON list, not an object"),
    "metadata that is not UTF-8": (lambda p: _write(p, {"path": ["a.png"], "verdict": ["real"]}, b"{\"x\": \"\xff\"}"),
                                   "its i2pscan metadata is not readable JSON"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
@pytest.mark.parametrize("html", [False, True])
def test_a_crafted_report_is_refused_in_one_line(tmp_path, run_cli, case, html):
    make, expected = CRAFTED[case]
    report = make(tmp_path / "r.parquet")
    args = ("report", report, "--html", tmp_path / "page") if html else ("report", report)
    r = run_cli(*args)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "internal error" not in lines[0] and expected in lines[0], r.stderr


def test_hostile_leftovers_in_the_review_folder_are_removed_not_followed(tmp_path, run_cli):
    report = _write(tmp_path / "r.parquet", {"path": ["a.png"], "verdict": ["real"]})
    page = tmp_path / "page"
    assert run_cli("report", report, "--html", page).exit_code == 0
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("keep")
    os.symlink(precious, page / ".tmp-x")  # a link named like a killed build's leftover
    os.symlink(precious, page / ".thumbs-y")
    r = run_cli("report", report, "--html", page)
    assert r.exit_code == 0, r.stderr
    assert (precious / "keep.txt").read_text() == "keep"
    assert not os.path.lexists(page / ".tmp-x") and not os.path.lexists(page / ".thumbs-y")


def test_an_index_that_is_a_link_or_a_fifo_is_not_a_review_page(tmp_path, run_cli):
    report = _write(tmp_path / "r.parquet", {"path": ["a.png"], "verdict": ["real"]})
    for make in (lambda p: os.symlink("/etc/passwd", p), os.mkfifo):
        page = tmp_path / f"page-{make.__name__}"
        page.mkdir()
        make(page / "index.html")
        r = run_cli("report", report, "--html", page)
        assert r.exit_code == 2 and "holds no review page" in r.stderr
