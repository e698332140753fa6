"""The review page in a real headless Chromium (Debian's `chromium`, driven by Playwright).

Skips, saying why, only where no browser is installed (.ci/run installs one with apt-get).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from test_review import HOSTILE, _img, make_report, page_data

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")

pytestmark = pytest.mark.slow  # each test starts a browser


def _chromium() -> str | None:
    for path in (os.environ.get("I2PSCAN_CHROMIUM"), *CANDIDATES, shutil.which("chromium")):
        if path and os.access(path, os.X_OK):
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'")
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium found (apt-get install chromium, as .ci/run does, or set I2PSCAN_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"] if os.geteuid() == 0 else [])
        yield b
        b.close()


@pytest.fixture
def open_page(browser):
    """Open a built page in a fresh browser context; records dialogs and script errors."""
    contexts = []

    def go(index: Path, context=None):
        if context is None:
            context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
            contexts.append(context)
        page = context.new_page()
        page.events = []
        page.on("dialog", lambda d: (page.events.append(("dialog", d.message)), d.dismiss()))
        page.on("pageerror", lambda e: page.events.append(("pageerror", str(e))))
        page.goto(Path(index).resolve().as_uri())
        page.wait_for_selector("body[data-ready=true]", timeout=30000)
        return page

    yield go
    for c in contexts:
        c.close()


def _cards(page) -> list[tuple[str, str]]:
    return [tuple(c) for c in page.eval_on_selector_all(".card", "cs => cs.map(c => [c.dataset.path, c.dataset.verdict])")]


def _selected(page) -> int:
    return page.eval_on_selector(".card.sel", "c => Number(c.dataset.pos)")


PROMPT = "<img src=z onerror=alert(9)> an astronaut"


def _generated_png(path: Path) -> None:
    """A PNG carrying Automatic1111 generation parameters (with a hostile prompt)."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", PROMPT + "\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64, "
                                         "Model: sd_xl_base_1.0")
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, pnginfo=info)


@pytest.fixture
def scanned(tmp_path, toy_dir, detector_file, run_cli, chdir):
    """A real scan of toy images, a hostile name and a corrupt file; then its review page."""
    picks = {"ai": sorted((toy_dir / "tconv" / "val" / "ai").iterdir())[:4],
             "nature": sorted((toy_dir / "tconv" / "val" / "nature").iterdir())[:4]}
    for kind, files in picks.items():
        for f in files:
            dest = tmp_path / "in" / kind / f.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dest)
    _img(tmp_path / "in" / HOSTILE, seed=9)
    _generated_png(tmp_path / "in" / "sdxl.png")
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    r = run_cli("scan", "in", "-d", detector_file, "-o", "report.parquet", "--workers", "0", "-q")
    assert r.exit_code in (0, 1), r.stderr
    r = run_cli("report", "report.parquet", "--html", "page", "--workers", "0")
    assert r.exit_code == 0, r.stderr
    return tmp_path / "page" / "index.html"


def test_page_renders_filters_keyboard_and_exports_decisions_that_evaluate_reads(
        scanned, open_page, tmp_path, run_cli, detector_file):
    page = open_page(scanned)
    cards = _cards(page)
    assert len(cards) == 11 and ("in/broken.jpg", "error") in cards
    verdicts = [v for _, v in cards]
    assert verdicts == sorted(verdicts, key=lambda v: {"synthetic": 0, "real": 1, "error": 2}[v])  # flagged first
    assert page.locator(".card img").count() == 10  # a thumbnail for every readable file
    assert page.eval_on_selector_all(".card img", "imgs => imgs.every(i => i.complete && i.naturalWidth > 0)")
    assert page.locator("svg .threshold").count() >= 2  # a histogram per provenance class, threshold marked
    assert page.eval_on_selector_all(".hist", "h => h.map(x => x.dataset.class)")[0] == "generated"

    # provenance: the declared generator shows on its card, its parameters in the large view
    generated = page.locator('.card[data-path="in/sdxl.png"]')
    assert generated.get_attribute("data-verdict") == "synthetic"
    assert generated.locator(".badge.prov-generated").text_content() == "generated"
    generated.dblclick()
    assert PROMPT in page.text_content("#v-detail")
    page.keyboard.press("Escape")
    page.select_option("#f-prov", "generated")
    assert _cards(page) == [("in/sdxl.png", "synthetic")]
    page.select_option("#f-prov", "")

    # filters: error rows, verdict, search
    page.check("#f-errors")
    assert _cards(page) == [("in/broken.jpg", "error")]
    assert page.locator(".card .error").text_content() != ""
    page.uncheck("#f-errors")
    page.select_option("#f-verdict", "real")
    assert {v for _, v in _cards(page)} == {"real"}
    page.select_option("#f-verdict", "")
    page.fill("#q", "/NATURE/")
    page.keyboard.press("Enter")
    assert sorted(p for p, _ in _cards(page)) == sorted(f"in/nature/{f}" for f in os.listdir(tmp_path / "in" / "nature"))
    page.fill("#q", "")
    page.keyboard.press("Enter")
    assert len(_cards(page)) == 11

    # keyboard: arrows move the selection, Enter opens the large view, Escape closes it
    assert _selected(page) == 0
    page.keyboard.press("ArrowRight")
    assert _selected(page) == 1
    columns = page.evaluate("() => { const c = [...document.querySelectorAll('.card')];"
                            " return c.filter(x => x.offsetTop === c[0].offsetTop).length; }")
    page.keyboard.press("ArrowDown")
    assert _selected(page) == min(1 + columns, 10)
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowLeft")
    assert _selected(page) == 0
    page.keyboard.press("Enter")
    assert page.is_visible("#viewer")
    assert page.text_content("#v-name") == cards[0][0]
    page.keyboard.press("ArrowRight")  # next file inside the large view
    assert page.text_content("#v-name") == cards[1][0]
    page.keyboard.press("Escape")
    assert not page.is_visible("#viewer")

    # decisions by keyboard: the truth of each toy file, from its folder
    truth = {}
    for pos, (path, _) in enumerate(cards):
        if "/ai/" in path or "/nature/" in path:
            page.click(f'.card[data-pos="{pos}"]')
            page.keyboard.press("s" if "/ai/" in path else "r")
            truth[str(tmp_path / path)] = "synthetic" if "/ai/" in path else "real"
    assert page.text_content("#export") == "Export decisions (8)"
    assert page.locator(".card.d-synthetic").count() == 4 and page.locator(".card.d-real").count() == 4

    # they persist in the browser: a reload keeps them
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.text_content("#export") == "Export decisions (8)"
    page.select_option("#f-decision", "real")
    assert len(_cards(page)) == 4

    with page.expect_download() as info:
        page.click("#export")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    exported = elsewhere / "decisions.csv"
    info.value.save_as(exported)
    rows = list(csv.DictReader(io.StringIO(exported.read_text(encoding="utf-8"))))
    assert {r["path"]: r["label"] for r in rows} == truth
    assert page.events == []

    # the exported CSV is a labelled manifest: evaluate reads it from any folder
    r = run_cli("evaluate", exported, "-d", detector_file, "--workers", "0", "--out", tmp_path / "e.csv")
    assert r.exit_code == 0, r.stderr
    table = list(csv.DictReader(open(tmp_path / "e.csv")))
    assert [(t["subset"], t["n_real"], t["n_fake"], t["errors"]) for t in table] == [("decisions", "4", "4", "0")]


def test_hostile_strings_stay_inert(tmp_path, open_page, chdir):
    _img(tmp_path / HOSTILE)
    rows = [{"path": HOSTILE, "score": 0.9, "verdict": "synthetic"},
            {"path": "'\"><svg onload=alert(5)>.png", "score": 0.2, "verdict": "real", "error": "<script>alert(6)</script>"}]
    prov = [{"provenance": "generated", "generator": "</script><script>alert(3)</script>",
             "provenance_detail": '{"prompt": "<img src=y onerror=alert(4)>"}'},
            {"provenance": "<b onmouseover=alert(7)>x</b>", "generator": "javascript:alert(8)"}]
    make_report(tmp_path / "r.parquet", rows, prov)
    from i2pscan.report.review import build_page

    summary = build_page("r.parquet", "page", root=str(tmp_path))
    page = open_page(Path(summary.index))
    assert [p for p, _ in _cards(page)] == [HOSTILE, "'\"><svg onload=alert(5)>.png"]
    assert page.locator(".card .name").first.text_content() == HOSTILE
    for pos in range(2):
        page.click(f'.card[data-pos="{pos}"]')
        page.keyboard.press("Enter")
        page.wait_for_timeout(200)
        page.hover(".v-side")
        page.keyboard.press("Escape")
    page.hover(".badge.prov-other")
    counts = page.evaluate("""() => ({
        img_x: document.querySelectorAll('img[src="x"], img[src="y"]').length,
        svg: document.querySelectorAll('#grid svg, #viewer svg').length,
        scripts: document.scripts.length,
        bold: document.querySelectorAll('#grid b, #controls b').length })""")
    assert counts == {"img_x": 0, "svg": 0, "scripts": 3, "bold": 0}
    assert page.events == []  # no alert() dialog, no script error


def test_page_loads_nothing_from_outside(tmp_path, open_page, chdir):
    make_report(tmp_path / "r.parquet", [{"path": "a.png", "score": 0.9, "verdict": "synthetic"}])
    from i2pscan.report.review import build_page

    page = open_page(Path(build_page("r.parquet", "page", root=str(tmp_path)).index))
    blocked = page.evaluate("""() => new Promise(done => {
        const seen = [];
        document.addEventListener('securitypolicyviolation', e => seen.push(e.violatedDirective));
        const img = document.createElement('img');
        img.src = 'http://127.0.0.1:9/tracker.png';
        document.body.appendChild(img);
        const s = document.createElement('script');
        s.textContent = 'window.injected = 1';
        document.body.appendChild(s);
        fetch('http://127.0.0.1:9/x').catch(() => {});
        setTimeout(() => done([seen.sort(), window.injected === undefined]), 500);
    })""")
    directives, no_injection = blocked
    assert no_injection
    assert set(directives) >= {"img-src", "script-src-elem", "connect-src"}


def test_screenshot_is_not_blank(scanned, open_page, tmp_path):
    from PIL import Image

    page = open_page(scanned)
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot))
    pixels = np.asarray(Image.open(shot).convert("RGB"), np.int16)
    assert pixels.shape[:2] == (900, 1280)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 200 and pixels.std() > 20


def test_twenty_thousand_rows_paginate(tmp_path, open_page):
    rng = np.random.default_rng(0)
    scores = rng.random(20000)
    verdicts = np.where(scores > 0.7, "synthetic", "real")
    verdicts[::97] = "error"
    rows = [{"path": f"batch{i // 1000:02d}/img{i:05d}.jpg", "size_bytes": i,
             "score": None if v == "error" else float(s), "verdict": str(v), "error": "boom" if v == "error" else None}
            for i, (s, v) in enumerate(zip(scores, verdicts))]
    make_report(tmp_path / "r.parquet", rows, row_group_size=4096)
    from i2pscan.report.review import build_page

    page = open_page(Path(build_page(str(tmp_path / "r.parquet"), str(tmp_path / "page"), max_thumbs=0,
                                     root=str(tmp_path)).index))
    assert page.locator(".card").count() == 120
    assert page.text_content("#status").startswith("showing 1–120 of 20,000 matching (20,000 files)")
    assert page.text_content("#page-info") == "page 1 of 167"
    page.keyboard.press("End")
    assert page.text_content("#page-info") == "page 167 of 167"
    assert {v for _, v in _cards(page)} == {"error"}  # errors sort last
    page.keyboard.press("Home")
    page.keyboard.press("n")
    assert page.text_content("#page-info") == "page 2 of 167"
    page.select_option("#f-verdict", "synthetic")
    n_synthetic = int((verdicts == "synthetic").sum())
    assert f"of {n_synthetic:,} matching" in page.text_content("#status")
    page.fill("#f-min", "0.9")
    page.keyboard.press("Tab")
    expected = int(((verdicts == "synthetic") & (scores.astype(np.float32) >= 0.9)).sum())
    assert f"of {expected:,} matching" in page.text_content("#status")
    page.fill("#q", "batch07/")
    page.keyboard.press("Enter")
    shown = _cards(page)
    assert shown and all(p.startswith("batch07/") and v == "synthetic" for p, v in shown)
    _, data = page_data(tmp_path / "page" / "index.html")
    assert len(data) == 20000


def test_review_workflow_reasons_filters_bulk_notes_identity_and_export(tmp_path, open_page):
    """Issue 20's workflow and issue 21.7's identity: the reason on every card, filters for generator,
    C2PA state and flagged_by, a bulk decision on the filtered set, a note, reviewer and time in the
    export, twin names (one not UTF-8, one with a literal backslash) decided apart, bidi escaped."""
    import base64
    import json as _json

    folder = os.fsencode(tmp_path)
    twin_raw, twin_text = b"twin\xff.png", b"twin\\xff.png"
    bidi = "cat\u202egnp.exe"
    for name in (twin_raw, twin_text, b"gen.png", b"plain.png"):
        _img(Path(os.fsdecode(os.path.join(folder, name))))
    detail = _json.dumps({"c2pa": {"state": "valid-untrusted", "codes": ["signingCredential.untrusted"] * 2,
                                   "signer": {"common_name": "Some Signer"}, "source_types": ["trainedAlgorithmicMedia"]},
                          "matched": ["c2pa:trainedAlgorithmicMedia"]})
    rows = [{"path": "gen.png", "score": 0.2, "verdict": "synthetic", "flagged_by": "metadata",
             "reason": "C2PA manifest signed by Some Signer (not a trusted signer) declares trainedAlgorithmicMedia; "
                       "model score 0.2 < threshold 0.5"},
            {"path": "twin\\xff.png", "path_raw": twin_raw, "score": 0.9, "verdict": "synthetic", "flagged_by": "model",
             "reason": "model score 0.9 ≥ threshold 0.5"},
            {"path": "twin\\xff.png", "score": 0.8, "verdict": "synthetic", "flagged_by": "model",
             "reason": "model score 0.8 ≥ threshold 0.5"},
            {"path": bidi, "score": 0.1, "verdict": "real", "reason": "model score 0.1 < threshold 0.5"},
            {"path": "plain.png", "score": 0.3, "verdict": "real", "reason": "model score 0.3 < threshold 0.5"}]
    provenance = [{"provenance": "generated", "generator": "Adobe Firefly", "c2pa": "valid-untrusted",
                   "provenance_detail": detail}] + [{"provenance": "none"}] * 4
    make_report(tmp_path / "r.parquet", rows, provenance)
    from i2pscan.report.review import build_page

    page = open_page(Path(build_page(str(tmp_path / "r.parquet"), str(tmp_path / "page"), max_thumbs=0,
                                     root=str(tmp_path)).index))
    assert not page.eval_on_selector("#plots-box", "d => d.open")  # the histograms are folded
    reasons = page.eval_on_selector_all(".card .reason", "rs => rs.map(r => r.textContent)")
    assert len(reasons) == 5 and reasons[0] == "flagged by model: model score 0.9 ≥ threshold 0.5"
    assert reasons[2].startswith("flagged by metadata: C2PA manifest signed by Some Signer")
    assert page.locator(".card .badge.c2pa-valid-untrusted").text_content() == "c2pa valid-untrusted"
    names = page.eval_on_selector_all(".card .name", "ns => ns.map(n => n.textContent)")
    assert "cat\\u202egnp.exe" in names and bidi not in names  # the override is shown, not obeyed
    # filters
    page.select_option("#f-gen", "Adobe Firefly")
    assert [p for p, _ in _cards(page)] == ["gen.png"]
    page.select_option("#f-gen", "")
    page.select_option("#f-c2pa", "valid-untrusted")
    assert len(_cards(page)) == 1
    page.select_option("#f-c2pa", "")
    page.select_option("#f-by", "model")
    assert [p for p, _ in _cards(page)] == ["twin\\xff.png", "twin\\xff.png"]
    # the detail pane: labels, the duplicated code once, raw JSON only when asked
    page.select_option("#f-by", "")
    page.click('.card[data-path="gen.png"]')
    page.keyboard.press("Enter")
    evidence = page.text_content("#v-evidence")
    assert "valid-untrusted — signature and hashes hold, but the signer is on no trust list" in evidence
    assert evidence.count("signingCredential.untrusted") == 1
    assert not page.eval_on_selector("#v-raw", "d => d.open")
    # a note, with the reviewer's name
    page.fill("#reviewer", "alice")
    page.dispatch_event("#reviewer", "change")
    page.click("#v-note")
    page.keyboard.type("signed by a test key")
    page.keyboard.press("Escape")
    page.keyboard.press("s")
    # bulk: the two twins (filtered by model) marked synthetic at once, then one of them real by hand
    page.select_option("#f-by", "model")
    page.click("#bulk-synthetic")
    assert "marked 2 filtered file(s) synthetic" in page.text_content("#status")
    page.click('.card[data-pos="1"]')
    page.keyboard.press("r")
    assert page.text_content("#export") == "Export decisions (3)"
    # the large view opens each twin's own file: the byte 0xFF, and a literal backslash (not a separator)
    page.keyboard.press("Enter")
    assert page.get_attribute("#v-img", "src").endswith("/twin%5Cxff.png")
    page.keyboard.press("ArrowLeft")
    assert page.get_attribute("#v-img", "src").endswith("/twin%FF.png")
    page.keyboard.press("Escape")
    with page.expect_download() as info:
        page.click("#export")
    exported = tmp_path / "decisions.csv"
    info.value.save_as(exported)
    data = exported.read_bytes()
    lines = data.split(b"\r\n")
    assert lines[0] == b"path,label,note,reviewer,decided_at,row,path_b64"
    got = {}
    for line in lines[1:]:
        if line:
            fields = line.rsplit(b",", 2)
            exact = base64.b64decode(fields[2])
            assert line.startswith(exact + b",")  # the path column holds the same exact bytes
            got[exact] = line[len(exact) + 1:].split(b",")[0].decode()
    assert got == {os.path.join(folder, b"gen.png"): "synthetic", os.path.join(folder, twin_raw): "synthetic",
                   os.path.join(folder, twin_text): "real"}
    assert b",synthetic,signed by a test key,alice," in data
    assert page.events == []
