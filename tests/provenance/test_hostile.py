"""Hostile metadata of issue 21, each case a file made here: text that Parquet refuses (a lone
surrogate), PNG text bombs that fit the old limits, nested JSON, and a claim in a 5th XMP packet.
One file must never cost a scan: its evidence, at worst, is a note."""

from __future__ import annotations

import io
import json
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, PngImagePlugin

from i2pscan.provenance.evidence import EvidenceReader

A1111 = "a fox\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Model: sd_xl_base_1.0"
SURROGATE_PROMPT = '{"3":{"class_type":"CLIPTextEncode","inputs":{"text":"\\ud800"}}}'  # the JSON escape, as written


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(text: dict[str, str] | None = None, extra: bytes = b"") -> bytes:
    info = PngImagePlugin.PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(buf, "PNG", pnginfo=info)
    data = buf.getvalue()
    return data[:33] + extra + data[33:]  # after IHDR


def test_a_lone_surrogate_in_a_prompt_never_ends_a_scan(tmp_path, run_cli, chdir):
    Path("d").mkdir()
    Path("d/evil.png").write_bytes(_png({"prompt": SURROGATE_PROMPT}))
    Path("d/good.png").write_bytes(_png({"parameters": A1111}))
    for fmt in ("table", "jsonl"):
        r = run_cli("scan", "d", "--metadata-only", "--workers", "0", "-o", f"r-{fmt}.parquet", "--format", fmt)
        assert r.exit_code == 1, r.stderr
        rows = pq.read_table(f"r-{fmt}.parquet").to_pylist()
        assert [Path(x["path"]).name for x in rows] == ["evil.png", "good.png"]
        evil = rows[0]
        assert evil["verdict"] == "synthetic" and evil["generator"] == "ComfyUI"
        detail = json.loads(evil["provenance_detail"])
        assert detail["text"]["prompt"] == "\\ud800"  # escaped, visibly
        assert "text: lone surrogates (not valid Unicode) shown as \\uXXXX" in detail["notes"]
    r = run_cli("scan", "d", "--metadata-only", "--workers", "0", "--format", "jsonl")
    assert json.loads(r.stdout.splitlines()[0])["provenance_detail"]["text"]["prompt"] == "\\ud800"


def test_a_row_arrow_refuses_becomes_an_error_row_and_the_others_are_kept():
    from i2pscan.report.schema import rows_table

    good = {"path": "a.png", "path_raw": None, "verdict": "real", "score": 0.1}
    bad = {"path": "b.png", "path_raw": None, "verdict": "real", "error": None, "reason": "x\ud800"}
    table = rows_table([good, bad, dict(good, path="c.png")])
    rows = table.to_pylist()
    assert [r["path"] for r in rows] == ["a.png", "b.png", "c.png"]
    assert rows[1]["verdict"] == "error" and rows[1]["error"].startswith("the row could not be written to the report")
    assert rows[0]["score"] == pytest.approx(0.1) and rows[2]["verdict"] == "real"


def _bomb(payload: int) -> bytes:
    """Four zTXt of zlib(4 MiB of zeros), then one zTXt of zlib(b"A" * payload), ~1 MB per GB."""
    zeros = zlib.compress(b"\0" * (4 << 20), 9)
    c = zlib.compressobj(9)
    block = b"A" * (16 << 20)
    big = b"".join(c.compress(block) for _ in range(payload // len(block))) + c.flush()
    chunks = b"".join(_chunk(b"zTXt", f"k{i}".encode() + b"\0\0" + zeros) for i in range(4))
    return _png({"parameters": A1111}, chunks + _chunk(b"zTXt", b"big\0\0" + big)
                + _chunk(b"iTXt", b"big2\0\x01\x00\0\0" + big))


def test_text_bombs_stop_at_the_file_budget_at_every_inflate(monkeypatch):
    import i2pscan.provenance.containers as containers

    data = _bomb(256 << 20)
    assert len(data) < 1 << 20
    calls = []
    real = zlib.decompressobj

    class Counting:
        def __init__(self):
            self.inner = real()
            self.unconsumed_tail = b""

        def decompress(self, raw, max_length=0):
            assert max_length > 0, "zlib reads max_length=0 as no limit"
            out = self.inner.decompress(raw, max_length)
            self.unconsumed_tail = self.inner.unconsumed_tail
            calls.append(len(out))
            return out

    monkeypatch.setattr(containers.zlib, "decompressobj", Counting)
    started = time.monotonic()
    ev = EvidenceReader().read(data, "bomb.png")
    assert time.monotonic() - started < 3
    assert sum(calls) <= containers.MAX_TOTAL_TEXT_BYTES
    assert ev.generator == "AUTOMATIC1111"  # the real parameters before the bomb are kept
    assert any("budget of inflated text is spent" in n for n in ev.detail["notes"])


@pytest.mark.slow
def test_a_gigabyte_text_bomb_costs_a_scan_little(tmp_path, run_cli):
    (tmp_path / "bomb.png").write_bytes(_bomb(1 << 30))
    started = time.monotonic()
    r = run_cli("scan", tmp_path / "bomb.png", "--metadata-only", "--workers", "0", "--format", "jsonl")
    assert time.monotonic() - started < 10
    assert json.loads(r.stdout)["generator"] == "AUTOMATIC1111"


def test_nested_json_costs_only_its_own_chunk(tmp_path):
    from c2pa_fixtures import make_ca_and_signer, sign_jpeg

    nested = "[" * 1_000_000
    data = _png({"parameters": A1111, "prompt": nested, "workflow": "{" + '"a":' * 200_000})
    ev = EvidenceReader().read(data, "n.png")
    assert (ev.provenance, ev.generator) == ("generated", "AUTOMATIC1111")
    assert ev.detail["text"]["prompt"] == "a fox"
    assert any(n.startswith("text prompt: JSON nested too deep") for n in ev.detail["notes"])
    _, chain, key = make_ca_and_signer()
    signed = sign_jpeg(_png({"prompt": nested}), chain, key, "trainedAlgorithmicMedia", mime="image/png")
    ev = EvidenceReader().read(signed, "s.png")
    assert (ev.provenance, ev.c2pa) == ("generated", "valid-untrusted")
    assert ev.reason.startswith("C2PA manifest signed by i2pscan test signer (not a trusted signer) declares "
                                "trainedAlgorithmicMedia")


def _app1(body: bytes) -> bytes:
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


def test_an_ai_claim_in_a_fifth_xmp_packet_is_read():
    sig = b"http://ns.adobe.com/xap/1.0/\x00"
    plain = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
             b'<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:CreatorTool="Adobe Lightroom"/>'
             b'</rdf:RDF></x:xmpmeta>')
    claim = plain.replace(b'xmp:CreatorTool="Adobe Lightroom"',
                          b'xmlns:I="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" I:DigitalSourceType='
                          b'"http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"')
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    data = jpeg[:2] + b"".join(_app1(sig + plain) for _ in range(4)) + _app1(sig + claim) + jpeg[2:]
    ev = EvidenceReader().read(data, "x.jpg")
    assert ev.provenance == "generated"
    assert ev.detail["xmp"]["digital_source_types"] == ["trainedAlgorithmicMedia"]
    many = jpeg[:2] + b"".join(_app1(sig + b"<x:xmpmeta/>") for _ in range(20_000)) + _app1(sig + claim) + jpeg[2:]
    started = time.monotonic()
    assert EvidenceReader().read(many, "m.jpg").provenance == "generated"
    assert time.monotonic() - started < 3


@pytest.mark.slow
def test_a_large_compressed_workflow_is_scored_not_an_error_row(tmp_path, detector_file, run_cli):
    """Pillow refuses a whole PNG whose one zTXt chunk inflates past 1 MiB; a decoding worker allows
    what the evidence reader itself reads (4 MiB), so a big ComfyUI workflow costs nothing."""
    workflow = json.dumps({"nodes": [{"id": i, "type": "KSampler", "widgets_values": ["x" * 64]} for i in range(20000)]})
    assert 1 << 20 < len(workflow) < 4 << 20
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", '{"3":{"class_type":"CLIPTextEncode","inputs":{"text":"a fox"}}}')
    info.add_text("workflow", workflow, zip=True)
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / "big.png", pnginfo=info)
    r = run_cli("scan", tmp_path / "big.png", "-d", detector_file, "--workers", "1", "--format", "jsonl")
    row = json.loads(r.stdout)
    assert row["error"] is None and row["score"] is not None, row
    assert row["generator"] == "ComfyUI"
