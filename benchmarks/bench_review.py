"""Review page (`i2pscan report --html`): build time and peak memory against report size, thumbnail
throughput, and how fast the page opens and filters in headless Chromium.

    python bench_review.py [--rows 20000,200000,1000000] [--thumbs 40] [--browser]

Build: each size runs in its own process (peak RSS is that process's own), with no thumbnails
(files do not exist), beside a baseline measured in the same run: reading the whole report into
Python rows (`pq.read_table(...).to_pylist()`), what a builder without streaming would hold.
Memory is the growth of the process's peak RSS over its size after imports.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _table import machine, print_table

CHILD = r"""
import json, resource, sys, time
import pyarrow.parquet as pq
from i2pscan.report.review import build_page
mode, report, out = sys.argv[1:4]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if mode == "build":
    build_page(report, out, max_thumbs=int(sys.argv[4]), root="/nonexistent", workers=0)
else:
    rows = pq.read_table(report).to_pylist()
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"s": time.perf_counter() - t, "rss_mib": grown}))
"""


def make_report(path: Path, rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from i2pscan.report.schema import META_KEY, SCHEMA

    rng = np.random.default_rng(0)
    # SCHEMA has the provenance columns (PROVENANCE_COLUMNS) since they joined the report
    meta = {META_KEY: json.dumps({"detector": {"threshold": 0.5}}).encode()}
    writer = pq.ParquetWriter(path, SCHEMA.with_metadata(meta), compression="zstd")
    classes = np.array(["none", "generated", "captured", "camera-exif", "ai-edited"])
    step = 100_000
    for start in range(0, rows, step):
        n = min(step, rows - start)
        score = rng.random(n).astype(np.float32)
        verdict = np.where(score > 0.5, "synthetic", "real")
        cols = {name: pa.nulls(n, SCHEMA.field(name).type) for name in SCHEMA.names}
        cols["path"] = pa.array([f"uploads/{(start + i) // 1000:04d}/image-{start + i:07d}.jpg" for i in range(n)])
        cols["size_bytes"] = pa.array(rng.integers(10_000, 5_000_000, n))
        cols["width"] = pa.array(np.full(n, 1024, np.int32))
        cols["height"] = pa.array(np.full(n, 768, np.int32))
        cols["format"] = pa.array(["JPEG"] * n)
        cols["score"] = pa.array(score)
        cols["logit"] = pa.array(score)
        cols["verdict"] = pa.array(verdict)
        prov = classes[rng.integers(0, len(classes), n)]
        extra = {"provenance": pa.array(prov), "generator": pa.array(np.where(prov == "generated", "SDXL", None)),
                 "c2pa": pa.nulls(n, pa.string()), "provenance_detail": pa.nulls(n, pa.string())}
        writer.write_table(pa.table({**cols, **extra}, schema=writer.schema))
    writer.close()


def child(mode: str, report: Path, out: Path, thumbs: int = 0) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, mode, str(report), str(out), str(thumbs)],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench_build(sizes: list[int], work: Path) -> None:
    rows = []
    for n in sizes:
        report = work / f"r{n}.parquet"
        make_report(report, n)
        base = child("load", report, work / "unused")
        built = child("build", report, work / f"page{n}")
        page = work / f"page{n}" / "index.html"
        rows.append([f"{n:,}", f"{report.stat().st_size / 2**20:.1f}", f"{base['s']:.2f}",
                     f"{base['rss_mib']:.0f}", f"{built['s']:.2f}", f"{n / built['s']:,.0f}",
                     f"{built['rss_mib']:.0f}", f"{built['rss_mib'] / max(base['rss_mib'], 1):.2f}x",
                     f"{page.stat().st_size / 2**20:.1f}"])
    print_table("build (no thumbnails) vs reading the whole report into Python rows",
                ["rows", "report MiB", "read-all s", "read-all peak +MiB", "build s", "rows/s", "build peak +MiB",
                 "RSS vs read-all", "index.html MiB"], rows)


def bench_thumbs(count: int, work: Path) -> None:
    import numpy as np

    from i2pscan.io.pixels import save_image
    from i2pscan.report.review.thumbs import make_thumbs

    rng = np.random.default_rng(1)
    src = work / "photos"
    src.mkdir(exist_ok=True)
    jobs = []
    for i in range(count):
        path = src / f"{i:04d}.jpg"
        base = rng.integers(0, 255, (3,), dtype=np.uint8)
        image = np.clip(base + rng.normal(0, 20, (1200, 1600, 3)), 0, 255).astype(np.uint8)  # 1.9 MP
        save_image(image, path, quality=90)
        jobs.append((i, str(path)))
    rows = []
    baseline = None
    for workers in (0, 2):
        out = work / f"thumbs{workers}"
        out.mkdir(exist_ok=True)
        t = time.perf_counter()
        notes = make_thumbs(jobs, str(out), workers)
        s = time.perf_counter() - t
        assert all(v is None for v in notes.values())
        rate = count / s
        baseline = baseline or rate
        rows.append([f"{workers} (in process)" if workers == 0 else str(workers), count, f"{s:.2f}", f"{rate:.1f}",
                     f"{rate / baseline:.2f}x"])
    print_table(f"thumbnails of {count} JPEGs of 1.9 MP (256 px WebP)",
                ["workers", "files", "s", "files/s", "vs in process"], rows)


def bench_browser(sizes: list[int], work: Path) -> None:
    from playwright.sync_api import sync_playwright

    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                    args=["--no-sandbox"] if os.geteuid() == 0 else [])
        for n in sizes:
            index = work / f"page{n}" / "index.html"
            if not index.exists():
                continue
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            t = time.perf_counter()
            page.goto(index.resolve().as_uri(), timeout=600_000)
            page.wait_for_selector("body[data-ready=true]", timeout=600_000)
            ready = time.perf_counter() - t
            timings = page.evaluate("""async () => {
                const wait = () => new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)));
                const time = async (f) => { const t = performance.now(); f(); await wait(); return performance.now() - t; };
                const sel = document.getElementById('f-verdict');
                const filter = await time(() => { sel.value = 'synthetic'; sel.dispatchEvent(new Event('change')); });
                const q = document.getElementById('q');
                const search = await time(() => { q.value = 'image-00'; q.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', bubbles: true})); });
                const next = await time(() => document.dispatchEvent(new KeyboardEvent('keydown', {key: 'ArrowRight', bubbles: true})));
                const sort = document.getElementById('sort');
                const resort = await time(() => { sort.value = 'path'; sort.dispatchEvent(new Event('change')); });
                return [filter, search, next, resort];
            }""")
            heap = page.evaluate("() => performance.memory ? performance.memory.usedJSHeapSize / 1048576 : null")
            rows.append([f"{n:,}", f"{ready:.2f}", *[f"{t:.0f}" for t in timings],
                         f"{heap:.0f}" if heap else "?"])
            page.close()
        browser.close()
    print_table("headless Chromium: open and interact (ms after the page is ready)",
                ["rows", "open to ready s", "filter ms", "search ms", "arrow key ms", "re-sort ms", "JS heap MiB"],
                rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="20000,200000,1000000", help="report sizes, comma-separated")
    parser.add_argument("--thumbs", type=int, default=40, help="JPEGs for the thumbnail benchmark (0: skip)")
    parser.add_argument("--browser", action="store_true", help="also time the pages in headless Chromium")
    args = parser.parse_args()
    sizes = [int(x) for x in args.rows.split(",") if x]
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bench_build(sizes, work)
        if args.thumbs:
            bench_thumbs(args.thumbs, work)
        if args.browser:
            bench_browser(sizes, work)


if __name__ == "__main__":
    main()
