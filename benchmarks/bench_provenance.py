"""Provenance evidence: how fast a --metadata-only scan is, where the time of one file goes, and
what reading the evidence adds to a model scan.

    python benchmarks/bench_provenance.py [--corpora ../shared/corpora] [--repeat 3] [--workers N]
                                          [--typical 600] [--skip-model]

In one run, on the shared corpora (provenance/ and robustness/, every file named explicitly):

* ``scan --metadata-only`` end to end (``i2pscan.scan.scan`` with no model): files/s;
* the same on ``--typical`` generated files without C2PA, as uploads look (camera JPEGs of
  1-2 MP with EXIF and XMP, A1111/ComfyUI PNGs, WebPs, plain PNGs), in this process and with
  two decoding workers (the issue's goal: at least 500 files/s on two cores);
* per file, the evidence reader's two parts: C2PA reading (c2pa-python, offline) against header
  parsing (PNG text chunks, JPEG/WebP segments, XMP with defusedxml, EXIF);
* a tiny-backbone model scan of the robustness corpus with and without the evidence reader, on
  the same files in the same run, interleaved (the issue's goal: at most 10 % overhead). With
  ``--workers 0`` everything runs in this process, so its CPU time is reported beside the wall
  time: on a shared machine it moves far less.

Each timing is the best of ``--repeat`` runs (the machine is shared; the best run is the least
disturbed), after one warm-up run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from _table import machine, print_table
from bench_scan import detector_for
from i2pscan.provenance.containers import read_headers
from i2pscan.provenance.evidence import EvidenceReader
from i2pscan.model.device import resolve_device
from i2pscan.scan.options import ScanOptions
from i2pscan.scan.session import run_scan

HERE = Path(__file__).resolve().parent


def corpus_files(root: Path, name: str) -> list[str]:
    return sorted(str(p) for p in (root / name).rglob("*") if p.is_file())


def typical_files(folder: Path, n: int) -> list[str]:
    """``n`` files without C2PA, made once into ``folder``: what a moderation queue holds."""
    import io
    import json

    import numpy as np
    from PIL import Image, PngImagePlugin

    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f".made-{n}"
    paths = [folder / f"{i:05d}.{('jpg', 'png', 'webp', 'jpg', 'png')[i % 5]}" for i in range(n)]
    if marker.exists():
        return [str(p) for p in paths]
    rng = np.random.default_rng(0)
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:CreatorTool="Adobe Lightroom 13.0"/>'
           b'</rdf:RDF></x:xmpmeta>')
    for i, path in enumerate(paths):
        kind = i % 5
        size = (1600, 1200) if kind == 0 else (768, 512)
        base = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize(size)
        if path.suffix == ".jpg":
            exif = Image.Exif()
            exif[0x010F], exif[0x0110], exif[0x0131] = "Canon", "Canon EOS R5", "Adobe Lightroom 13.0"
            exif.get_ifd(0x8769)[0x9003] = "2024:05:01 10:00:00"
            image.save(path, "JPEG", quality=88, exif=exif.tobytes(), xmp=xmp if kind == 0 else None)
        elif path.suffix == ".png":
            info = PngImagePlugin.PngInfo()
            if kind == 1:
                info.add_text("parameters", "a castle\nNegative prompt: blur\nSteps: 20, Sampler: Euler, "
                                            "CFG scale: 7, Seed: 1, Model: sd_xl_base_1.0")
            else:
                info.add_text("prompt", json.dumps({"3": {"class_type": "KSampler", "inputs": {"seed": i}},
                                                    "6": {"class_type": "CLIPTextEncode",
                                                          "inputs": {"text": "a castle " * 20}}}))
                info.add_text("workflow", json.dumps({"nodes": [{"id": k} for k in range(40)], "links": []}))
            image.save(path, "PNG", pnginfo=info, compress_level=1)
        else:
            buf = io.BytesIO()
            image.save(buf, "WEBP", quality=80)
            path.write_bytes(buf.getvalue())
    marker.touch()
    return [str(p) for p in paths]


def best_rate(run, n_files: int, repeat: int) -> float:
    run()  # warm-up: imports, the C2PA context, worker start-up
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return n_files / best


def per_file_ms(paths: list[str], repeat: int) -> tuple[list[float], list[float]]:
    """(C2PA ms, header-parsing ms) per file, best of ``repeat``."""
    reader = EvidenceReader()
    c2pa_ms, header_ms = [], []
    for path in paths:
        data = Path(path).read_bytes()
        reader.read(data, path)  # warm-up
        best_c, best_h = float("inf"), float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            found = read_headers(data)  # EXIF parsed here too, as in --metadata-only
            t1 = time.perf_counter()
            reader.c2pa.read(data, path, found)
            t2 = time.perf_counter()
            best_h, best_c = min(best_h, t1 - t0), min(best_c, t2 - t1)
        c2pa_ms.append(best_c * 1e3)
        header_ms.append(best_h * 1e3)
    return c2pa_ms, header_ms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpora", default=str(HERE.parents[1] / "shared" / "corpora"),
                   help="the shared corpora (default: ../shared/corpora beside the repository)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workers", type=int, default=0, help="decoding processes (0: in this process)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--model-repeat", type=int, default=5, help="runs of each model scan (interleaved)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier timings on a shared machine)")
    p.add_argument("--typical", type=int, default=600, help="generated files without C2PA (0: none)")
    p.add_argument("--typical-dir", default="/tmp/i2pscan-bench-typical", help="where they are made (kept)")
    p.add_argument("--skip-model", action="store_true", help="leave out the model-scan table")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.corpora)
    if not (root / "provenance").is_dir():
        raise SystemExit(f"no corpora at {root} (pass --corpora)")
    print(f"machine: {machine()}; {args.workers} worker process(es); best of {args.repeat}")
    provenance_files = corpus_files(root, "provenance")
    robustness_files = corpus_files(root, "robustness")
    both = provenance_files + robustness_files

    md = ScanOptions(metadata_only=True, workers=args.workers, batch_size=16)
    rows = []
    for label, files in (("provenance/", provenance_files), ("robustness/", robustness_files), ("both", both)):
        rate = best_rate(lambda: run_scan(files, None, None, md), len(files), args.repeat)
        rows.append([f"--metadata-only, {label}", len(files), rate])
    if args.typical:
        typical = typical_files(Path(args.typical_dir), args.typical)
        for workers in sorted({args.workers, 2}):
            options = ScanOptions(metadata_only=True, workers=workers, batch_size=16)
            rate = best_rate(lambda: run_scan(typical, None, None, options), len(typical), args.repeat)
            rows.append([f"--metadata-only, typical without C2PA, {workers} worker(s)", len(typical), rate])
    print_table("scan --metadata-only (files/s, end to end: read, header, evidence, rows)",
                ["corpus", "files", "files/s"], rows)

    c2pa_ms, header_ms = per_file_ms(both, args.repeat)
    with_manifest = [i for i, path in enumerate(both) if EvidenceReader().read(Path(path).read_bytes(),
                                                                                     path).c2pa is not None]
    rows = []
    for label, idx in (("all files", range(len(both))), ("files with a C2PA manifest", with_manifest)):
        c = [c2pa_ms[i] for i in idx]
        h = [header_ms[i] for i in idx]
        rows.append([label, len(c), statistics.mean(c), statistics.median(c), statistics.mean(h),
                     statistics.median(h), f"{statistics.mean(c) / statistics.mean(h):.1f}x"])
    print_table("time per file of the evidence reader's parts (ms)",
                ["files", "n", "C2PA mean", "C2PA median", "header mean", "header median", "C2PA / header"], rows)

    if args.skip_model:
        return
    device = resolve_device(args.device)
    tiny = detector_for("i2p-tiny", "default", 6, device)
    base = ScanOptions(workers=args.workers, batch_size=16, read_provenance=False)
    full = ScanOptions(workers=args.workers, batch_size=16)
    run_scan(robustness_files[:8], None, tiny, full)  # warm-up
    timings = {"without provenance": [], "with provenance": []}
    cpu = {"without provenance": [], "with provenance": []}
    for _ in range(args.model_repeat):  # interleaved, so that a disturbance hits both alike
        for label, options in (("without provenance", base), ("with provenance", full)):
            started, started_cpu = time.perf_counter(), time.process_time()
            run_scan(robustness_files, None, tiny, options)
            timings[label].append(time.perf_counter() - started)
            cpu[label].append(time.process_time() - started_cpu)
    n = len(robustness_files)
    baseline, baseline_cpu = min(timings["without provenance"]), min(cpu["without provenance"])
    rows = []
    for label in timings:
        wall, cpu_s = min(timings[label]), min(cpu[label])
        rows.append([label, n, n / wall, f"{wall / baseline:.3f}x", f"{wall / baseline - 1:+.1%}", cpu_s,
                     f"{cpu_s / baseline_cpu - 1:+.1%}"])
    print_table(f"tiny-backbone model scan of robustness/ ({args.workers} workers, {torch.get_num_threads()} torch "
                f"thread(s), best of {args.model_repeat}; baseline: the same scan without provenance)",
                ["scan", "files", "files/s", "wall vs baseline", "wall overhead", "CPU s (this process)",
                 "CPU overhead"], rows)


if __name__ == "__main__":
    main()
