"""The review page builder and `i2pscan report --html`, without a browser (see test_review_browser.py)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from i2pscan.io.decode import decode
from i2pscan.io.pixels import save_image
from i2pscan.report.schema import META_KEY, SCHEMA
from i2pscan.report.review import build

HOSTILE = "<img src=x onerror=alert(1)>.png"


def _img(path: Path, seed: int = 0, size: tuple[int, int] = (300, 400)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8), path)
    return path


def make_report(path: Path, rows: list[dict], provenance: list[dict] | None = None, meta: dict | None = None,
                row_group_size: int | None = None) -> Path:
    """A report as scan writes it (SCHEMA), optionally with the provenance columns."""
    base = pa.schema([f for f in SCHEMA if f.name not in ("provenance", "generator", "c2pa", "provenance_detail")])
    full = [{**{k: None for k in base.names}, **r} for r in rows]
    table = pa.Table.from_pylist(full, schema=base)  # without provenance: a report from before those columns
    if provenance is not None:
        for name in ("provenance", "generator", "c2pa", "provenance_detail"):
            table = table.append_column(name, pa.array([p.get(name) for p in provenance], pa.string()))
    meta = meta if meta is not None else {"detector": {"threshold": 0.5}, "options": {"threshold": None},
                                          "detector_path": "/x/det.safetensors", "started": "t0"}
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def page_data(index: Path) -> tuple[dict, list[dict]]:
    """The metadata and rows a built page embeds, as the page's script reads them."""
    text = index.read_text(encoding="utf-8")
    blocks = dict(re.findall(r'<script type="application/json" id="(\w+)">(.*?)</script>', text, re.S))
    meta = json.loads(blocks["meta"])
    rows = [dict(zip(meta["fields"], r)) for r in json.loads(blocks["data"])]
    return meta, rows


def test_cli_builds_page_with_thumbnails_flagged_first(tmp_path, run_cli, chdir):
    rows = []
    for k, (name, score, verdict) in enumerate([("a.png", 0.2, "real"), ("b.png", 0.9, "synthetic"),
                                                  ("c.png", 0.7, "synthetic"), ("d.png", 0.95, "real")]):
        _img(tmp_path / "imgs" / name, seed=k, size=(300 + k, 500))
        rows.append({"path": f"imgs/{name}", "score": score, "verdict": verdict})
    rows.append({"path": "imgs/bad.jpg", "verdict": "error", "error": "cannot identify image"})
    make_report(tmp_path / "r.parquet", rows)

    r = run_cli("report", "r.parquet", "--html", "page", "--max-thumbs", "2", "--workers", "0")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == os.path.join("page", "index.html") + "\n"
    assert "review page: 5 files, 2 thumbnails" in r.stderr
    meta, data = page_data(tmp_path / "page" / "index.html")
    assert [d["path"] for d in data] == [row["path"] for row in rows]  # every row, report order
    # thumbnails for the two flagged files, by score; none for the real ones (cap) or the error row
    assert {d["path"]: d["thumb"] for d in data if d["thumb"]} == {
        "imgs/b.png": "0000001." + build.thumbs_mod.EXTENSION, "imgs/c.png": "0000002." + build.thumbs_mod.EXTENSION}
    assert sorted(os.listdir(tmp_path / "page" / "thumbs")) == sorted(d["thumb"] for d in data if d["thumb"])
    for name in os.listdir(tmp_path / "page" / "thumbs"):
        info = decode(str(tmp_path / "page" / "thumbs" / name))
        assert info.error is None and max(info.width, info.height) == 256
    assert meta["root"] == str(tmp_path) and meta["threshold"] == 0.5 and meta["rows"] == 5
    assert meta["verdicts"] == {"real": 2, "synthetic": 2, "error": 1}
    assert meta["has_provenance"] is False


def test_page_escapes_hostile_strings_and_forbids_the_network(tmp_path, run_cli, chdir):
    _img(tmp_path / HOSTILE)
    rows = [{"path": HOSTILE, "score": 0.9, "verdict": "synthetic"},
            {"path": "</script><script>alert(2)</script>.png", "score": 0.1, "verdict": "real",
             "error": "<!-- & -->"}]
    prov = [{"provenance": "<b>generated</b>", "generator": "</script><script>alert(3)</script>",
             "provenance_detail": json.dumps({"prompt": "<img src=y onerror=alert(4)>"})},
            {"provenance": "none"}]
    make_report(tmp_path / "r.parquet", rows, prov)
    r = run_cli("report", "r.parquet", "--html", "page", "--workers", "0")
    assert r.exit_code == 0, r.stderr
    html = (tmp_path / "page" / "index.html").read_text(encoding="utf-8")
    for raw in ("<img src=x", "<img src=y", "alert(2)</script>", "alert(3)</script>", "<b>generated", "<!-- &"):
        assert raw not in html
    assert html.count("<script") == 3  # the two JSON blocks and the page's own script
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert "default-src 'none'" in csp and "unsafe" not in csp and "http" not in csp
    assert not re.search(r'(src|href)="(https?:)?//', html)
    # the strings arrive intact in the data the script reads
    meta, data = page_data(tmp_path / "page" / "index.html")
    assert data[0]["path"] == HOSTILE and data[1]["error"] == "<!-- & -->"
    assert data[0]["generator"] == "</script><script>alert(3)</script>" and meta["has_provenance"] is True
    assert data[0]["thumb"]  # the hostile name is a real file: its thumbnail file is named by row index
    assert "&lt;b&gt;generated&lt;/b&gt;" in html  # the histogram's class label, escaped


def test_histograms_per_provenance_class_with_threshold(tmp_path):
    scores = [0.02, 0.12, 0.13, 0.95, 0.55, 0.45]
    rows = [{"path": f"f{i}.png", "score": s, "verdict": "synthetic" if s > 0.5 else "real"}
            for i, s in enumerate(scores)]
    prov = [{"provenance": p} for p in ["none", "none", "none", "generated", "generated", None]]
    make_report(tmp_path / "r.parquet", rows, prov, meta={"options": {"threshold": 0.3}, "detector": {"threshold": 0.5}})
    build.build_page(str(tmp_path / "r.parquet"), str(tmp_path / "page"), root=str(tmp_path))
    html = (tmp_path / "page" / "index.html").read_text(encoding="utf-8")
    figures = re.findall(r'<figure class="hist" data-class="([^"]+)">(.*?)</figure>', html, re.S)
    assert [c for c, _ in figures] == ["generated", "none", "(missing)"]
    svg = dict(figures)
    assert "none · 3 files" in svg["none"] and "generated · 2 files" in svg["generated"]
    assert all(f"{b}</title>" in svg["none"] for b in ("0.00–0.05: 1", "0.05–0.10: 0", "0.10–0.15: 2"))
    # the threshold the scan used (--threshold 0.3 over the detector's 0.5), as a line at x = 4 + 0.3 * 232
    assert all('x1="73.6"' in body and "threshold 0.3000" in body for _, body in figures)


def test_metadata_only_report_without_scores_builds(tmp_path):
    rows = [{"path": "a.png", "verdict": "unknown"}, {"path": "b.png", "verdict": "synthetic"}]
    make_report(tmp_path / "r.parquet", rows, [{"provenance": "none"}, {"provenance": "generated"}], meta={})
    summary = build.build_page(str(tmp_path / "r.parquet"), str(tmp_path / "page"), root=str(tmp_path))
    html = Path(summary.index).read_text(encoding="utf-8")
    assert "No scores to plot." in html and summary.rows == 2 and summary.thumbs == 0
    assert summary.thumb_failures == {"file not found": 2}
    meta, data = page_data(Path(summary.index))
    assert meta["threshold"] is None and [d["thumb_note"] for d in data] == ["file not found"] * 2


def test_streams_row_groups_and_keeps_the_global_best_thumbnails(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "BATCH_ROWS", 7)
    rng = np.random.default_rng(3)
    scores = rng.random(50)
    rows = [{"path": f"d/{i:02d}.png", "score": float(s), "verdict": "synthetic" if s > 0.6 else "real"}
            for i, s in enumerate(scores)]
    for i in range(50):
        _img(tmp_path / "d" / f"{i:02d}.png", seed=i, size=(8, 8))
    make_report(tmp_path / "r.parquet", rows, row_group_size=5)
    summary = build.build_page(str(tmp_path / "r.parquet"), str(tmp_path / "page"), max_thumbs=6,
                               root=str(tmp_path))
    _, data = page_data(Path(summary.index))
    assert [d["path"] for d in data] == [r["path"] for r in rows]
    assert np.allclose([d["score"] for d in data], scores, atol=2e-6)
    flagged = sorted((i for i, s in enumerate(scores) if s > 0.6), key=lambda i: -scores[i])
    order = flagged + sorted((i for i, s in enumerate(scores) if s <= 0.6), key=lambda i: -scores[i])
    assert {i for i, d in enumerate(data) if d["thumb"]} == set(order[:6])
    assert summary.thumbs == 6


def test_non_utf8_file_name_gets_its_thumbnail(tmp_path):
    name = os.fsdecode(b"caf\xe9.png")
    _img(tmp_path / name)
    make_report(tmp_path / "r.parquet", [{"path": "caf\\xe9.png", "path_raw": b"caf\xe9.png", "score": 0.9,
                                          "verdict": "synthetic"}])
    summary = build.build_page(str(tmp_path / "r.parquet"), str(tmp_path / "page"), root=str(tmp_path))
    assert summary.thumbs == 1 and summary.thumb_failures == {}


def test_rebuild_replaces_an_earlier_page(tmp_path, run_cli, chdir):
    _img(tmp_path / "a.png")
    make_report(tmp_path / "r.parquet", [{"path": "a.png", "score": 0.9, "verdict": "synthetic"}])
    assert run_cli("report", "r.parquet", "--html", "page", "--workers", "0").exit_code == 0
    (tmp_path / "page" / "thumbs" / "stale.webp").write_bytes(b"x")
    r = run_cli("report", "r.parquet", "--html", "page", "--max-thumbs", "0", "--workers", "0")
    assert r.exit_code == 0, r.stderr
    assert os.listdir(tmp_path / "page" / "thumbs") == []


def test_open_without_a_display_says_where_the_page_is(tmp_path, run_cli, chdir, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    make_report(tmp_path / "r.parquet", [{"path": "a.png", "score": 0.9, "verdict": "synthetic"}])
    r = run_cli("report", "r.parquet", "--html", "page", "--open", "--workers", "0")
    assert r.exit_code == 0, r.stderr
    index = os.path.join("page", "index.html")
    assert r.stdout == index + "\n"
    assert f"no display to open a browser on: open {index} in a browser" in r.stderr


def test_relative_paths_resolve_against_root(tmp_path, run_cli, chdir):
    _img(tmp_path / "scanned" / "a.png")
    make_report(tmp_path / "r.parquet", [{"path": "a.png", "score": 0.9, "verdict": "synthetic"}])
    r = run_cli("report", "r.parquet", "--html", "page", "--root", "scanned", "--workers", "0")
    assert r.exit_code == 0, r.stderr
    meta, data = page_data(tmp_path / "page" / "index.html")
    assert meta["root"] == str(tmp_path / "scanned") and data[0]["thumb"]


@pytest.mark.parametrize("args,message", [
    (["--open"], "Error: --open goes with --html DIR"),
    (["--max-thumbs", "3"], "Error: --max-thumbs goes with --html DIR"),
    (["--html", "afile"], "Error: Invalid value for '--html': Directory 'afile' is a file."),
    (["--html", "full"], "Error: --html full: the folder is not empty and holds no review page; name a new or empty folder"),
    (["--html", "no/such/page"], "Error: --html no/such/page: folder"),
    (["--max-thumbs", "-1", "--html", "page"], "Invalid value for '--max-thumbs'"),
])
def test_cli_errors(tmp_path, run_cli, chdir, args, message):
    make_report(tmp_path / "r.parquet", [{"path": "a.png", "score": 0.9, "verdict": "synthetic"}])
    (tmp_path / "afile").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    r = run_cli("report", "r.parquet", *args)
    assert r.exit_code == 2 and message in r.stderr and r.stdout == ""
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine" and not (tmp_path / "page").exists()


def test_cli_refuses_what_is_not_a_report(tmp_path, run_cli, chdir):
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    r = run_cli("report", "junk.parquet", "--html", "page")
    assert r.exit_code == 2 and r.stderr.startswith("Error: junk.parquet is not a readable Parquet report: ")
    r = run_cli("report", "other.parquet", "--html", "page")
    assert r.exit_code == 2 and r.stderr == "Error: other.parquet is not an i2pscan report (no path, verdict column)\n"
    r = run_cli("report", "missing.parquet", "--html", "page")
    assert r.exit_code == 2 and "does not exist" in r.stderr
    assert not (tmp_path / "page").exists()


def _misbehaving_decoder(monkeypatch, crash: str = "", hang: str = ""):
    """Decoding that exits its process on ``crash`` and hangs on ``hang`` (forked workers inherit it)."""
    import multiprocessing
    import time

    import i2pscan.io.work as work_module

    if multiprocessing.get_start_method() != "fork":
        pytest.skip("the crash is injected by patching the parent, which only forked workers inherit")
    real = work_module.decode

    def decode(path, *args, **kwargs):
        if crash and path.endswith(crash):
            os._exit(1)  # as a decoder segfault would
        if hang and path.endswith(hang):
            time.sleep(3600)  # a decoder stuck in C code
        return real(path, *args, **kwargs)

    monkeypatch.setattr(work_module, "decode", decode)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1, 2])
def test_thumbnails_decode_in_the_isolated_pool_a_crash_or_hang_is_a_placeholder(tmp_path, monkeypatch, workers):
    """Issue 21.6: whatever the worker count (0 included: at least one isolated process), a decoder
    that crashes or hangs costs its file a placeholder and the rest get thumbnails."""
    from i2pscan.report.review import thumbs

    paths = [str(_img(tmp_path / f"{i}.png", seed=i, size=(20, 30))) for i in range(5)]
    _misbehaving_decoder(monkeypatch, crash="2.png", hang="3.png")
    out = tmp_path / "thumbs"
    out.mkdir()
    done = []
    jobs = [(10 + i, p) for i, p in enumerate(paths)]
    notes = thumbs.make_thumbs(jobs, str(out), workers=workers, on_done=lambda: done.append(1), timeout_s=2)
    assert notes == {10: None, 11: None, 12: "the decoder crashed on this file (its process exited with code 1)",
                     13: "the decoder hung on this file (no result after 2 s; its process was stopped)", 14: None}
    assert sorted(os.listdir(out)) == [thumbs.thumb_name(i) for i in (10, 11, 14)]
    assert len(done) == 5  # progress counts every file, the crashed one included


def test_the_review_page_survives_a_crashing_decoder_and_says_so_in_one_line(tmp_path, run_cli, chdir, monkeypatch):
    for name in ("a.png", "b.png", "c.png"):
        _img(tmp_path / name)
    make_report(tmp_path / "r.parquet", [{"path": n, "score": 0.9, "verdict": "synthetic"} for n in ("a.png", "b.png", "c.png")])
    _misbehaving_decoder(monkeypatch, crash="b.png")
    r = run_cli("report", "r.parquet", "--html", "page", "--workers", "0")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == os.path.join("page", "index.html")
    line, = [x for x in r.stderr.splitlines() if x.startswith("review page:")]
    assert "3 files, 2 thumbnails (1 files gave none, e.g. the decoder crashed on this file" in line
    assert sorted(os.listdir(tmp_path / "page")) == ["index.html", "thumbs"]  # no .thumbs-* left behind


def test_other_columns_reach_the_page_and_an_empty_report_builds(tmp_path):
    make_report(tmp_path / "r.parquet", [{"path": "a.png", "score": 0.4, "verdict": "real"}])
    table = pq.read_table(tmp_path / "r.parquet")
    table = table.append_column("evidence", pa.array([{"kind": "xmp", "says": "<ai>"}]))
    pq.write_table(table, tmp_path / "extra.parquet")
    _, data = page_data(Path(build.build_page(str(tmp_path / "extra.parquet"), str(tmp_path / "p1"),
                                              root=str(tmp_path)).index))
    assert data[0]["evidence"] == {"kind": "xmp", "says": "<ai>"} and data[0]["thumb_note"] == "file not found"

    make_report(tmp_path / "empty.parquet", [])
    summary = build.build_page(str(tmp_path / "empty.parquet"), str(tmp_path / "p2"), root=str(tmp_path))
    meta, data = page_data(Path(summary.index))
    assert summary.rows == 0 and data == [] and meta["verdicts"] == {}
    assert "No scores to plot." in Path(summary.index).read_text(encoding="utf-8")


def test_open_uses_the_system_browser_when_there_is_a_display(tmp_path, run_cli, chdir, monkeypatch):
    opened = []
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(build.webbrowser, "open", lambda url: opened.append(url) or True)
    make_report(tmp_path / "r.parquet", [{"path": "a.png", "score": 0.9, "verdict": "synthetic"}])
    r = run_cli("report", "r.parquet", "--html", "page", "--open", "--workers", "0")
    assert r.exit_code == 0, r.stderr
    assert opened == [(tmp_path / "page" / "index.html").as_uri()] and "no display" not in r.stderr


def test_a_failed_rebuild_leaves_the_earlier_page_whole(tmp_path, monkeypatch):
    _img(tmp_path / "a.png")
    make_report(tmp_path / "r.parquet", [{"path": "a.png", "score": 0.9, "verdict": "synthetic"}])
    first = build.build_page(str(tmp_path / "r.parquet"), str(tmp_path / "page"), root=str(tmp_path))
    before = {p: p.read_bytes() for p in (tmp_path / "page").rglob("*") if p.is_file()}
    assert len(before) == 2

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build.thumbs_mod, "make_thumbs", killed)
    with pytest.raises(KeyboardInterrupt):
        build.build_page(str(tmp_path / "r.parquet"), str(tmp_path / "page"), root=str(tmp_path))
    assert {p: p.read_bytes() for p in (tmp_path / "page").rglob("*") if p.is_file()} == before
    assert sorted(os.listdir(tmp_path / "page")) == ["index.html", "thumbs"]
    # a build killed harder leaves its temporary folder; the next build clears it
    (tmp_path / "page" / ".thumbs-abc").mkdir()
    monkeypatch.undo()
    assert build.build_page(str(tmp_path / "r.parquet"), str(tmp_path / "page"), root=str(tmp_path)).thumbs == 1
    assert sorted(os.listdir(tmp_path / "page")) == ["index.html", "thumbs"] and first.index.endswith("index.html")


def test_page_files_get_the_modes_the_umask_gives(tmp_path):
    _img(tmp_path / "a.png")
    make_report(tmp_path / "r.parquet", [{"path": "a.png", "score": 0.9, "verdict": "synthetic"}])
    old = os.umask(0o022)
    try:
        summary = build.build_page(str(tmp_path / "r.parquet"), str(tmp_path / "page"), root=str(tmp_path))
    finally:
        os.umask(old)
    assert os.stat(summary.index).st_mode & 0o777 == 0o644
    assert os.stat(tmp_path / "page" / "thumbs").st_mode & 0o777 == 0o755
