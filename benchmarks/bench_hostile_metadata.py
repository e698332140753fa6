"""Hostile metadata (issue 21): time and peak memory of the evidence reader on the worst cases, each
read in a fresh process so that one case's memory does not hide another's.

    python benchmarks/bench_hostile_metadata.py [--payload-gb 1]

Cases, made here: a PNG with four zTXt chunks of zlib(4 MiB of zeros) and then a zTXt and a
compressed iTXt of zlib(b"A" * payload) (about 1 MB on disk per GB); a ComfyUI ``prompt`` of
``"[" * 1_000_000``; a prompt holding a lone surrogate escape; a JPEG with 20,000 APP1 XMP packets
and the AI claim in the last; a PNG of 400,000 empty chunks. Prints, per case: seconds, the
reading process's RSS before the read and its peak RSS (Linux), and what the reader concluded.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib

from _table import print_table

READ = r"""
import json, sys, time
from i2pscan.provenance.evidence import EvidenceReader
reader = EvidenceReader()
data = open(sys.argv[1], "rb").read()
reader.read(b"\x89PNG\r\n\x1a\n", "warm.png")
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
before = rss("VmRSS:")
started = time.perf_counter()
ev = reader.read(data, sys.argv[1])
seconds = time.perf_counter() - started
cols = ev.columns()
print(json.dumps({"seconds": seconds, "before_mb": before, "peak_mb": rss("VmHWM:"), "provenance": ev.provenance,
                  "generator": ev.generator}))
"""


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(chunks: bytes, text: dict[str, str] | None = None) -> bytes:
    import numpy as np
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(buf, "PNG", pnginfo=info)
    data = buf.getvalue()
    return data[:33] + chunks + data[33:]


def cases(payload: int) -> dict[str, bytes]:
    zeros = zlib.compress(b"\0" * (4 << 20), 9)
    c = zlib.compressobj(9)
    block = b"A" * (16 << 20)
    big = b"".join(c.compress(block) for _ in range(max(1, payload // len(block)))) + c.flush()
    bomb = b"".join(_chunk(b"zTXt", f"k{i}".encode() + b"\0\0" + zeros) for i in range(4))
    bomb += _chunk(b"zTXt", b"big\0\0" + big) + _chunk(b"iTXt", b"big2\0\x01\x00\0\0" + big)
    a1111 = {"parameters": "a fox\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1"}
    sig = b"http://ns.adobe.com/xap/1.0/\x00"
    claim = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
             b'<rdf:Description xmlns:I="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" I:DigitalSourceType='
             b'"http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"/></rdf:RDF></x:xmpmeta>')

    def app1(body: bytes) -> bytes:
        return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    return {
        f"text bomb: 4 x 4 MiB zeros + zTXt and iTXt of {payload / (1 << 30):g} GiB": _png(bomb, a1111),
        'nested JSON prompt "[" * 1,000,000': _png(b"", {**a1111, "prompt": "[" * 1_000_000}),
        "lone surrogate escape in a prompt": _png(b"", {"prompt": json.dumps(
            {"3": {"class_type": "CLIPTextEncode", "inputs": {"text": "\ud800"}}})}),
        "20,000 XMP packets, the claim in the last": jpeg[:2] + app1(sig + b"<x:xmpmeta/>") * 20_000
        + app1(sig + claim) + jpeg[2:],
        "400,000 empty PNG chunks": _png(_chunk(b"teXt", b"") * 400_000, a1111),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--payload-gb", type=float, default=1.0, help="size of the text bomb's big chunks, inflated")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in cases(int(args.payload_gb * (1 << 30))).items():
            path = os.path.join(tmp, "case.png" if data.startswith(b"\x89PNG") else "case.jpg")
            with open(path, "wb") as fh:
                fh.write(data)
            r = subprocess.run([sys.executable, "-c", READ, path], capture_output=True, text=True, timeout=600)
            if r.returncode:
                rows.append([name, len(data), "-", "-", f"failed: {r.stderr.strip().splitlines()[-1][:80]}"])
                continue
            out = json.loads(r.stdout)
            rows.append([name, len(data), out["seconds"], out["before_mb"], out["peak_mb"],
                         f"{out['provenance']} ({out['generator']})"])
    print_table("evidence reader on hostile metadata (a fresh process per case: its RSS before the read, and its "
                "peak RSS over its whole life, imports included)",
                ["case", "bytes on disk", "seconds", "RSS before MB", "peak RSS MB", "read as"], rows)


if __name__ == "__main__":
    main()
