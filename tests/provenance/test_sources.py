"""Generator evidence from every place generators write it, one test per place, each on a file made
here in the real format (issue 20): EXIF IFD0 and the Exif IFD (UserComment where OpenAI puts it,
MakerNote, ImageDescription, Artist, Software, XPComment), XMP (IPTC source type and AI system,
CreatorTool, dc:description, photoshop and tiff fields), PNG/WebP/JPEG text, C2PA ingredients."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from i2pscan.provenance.evidence import EvidenceReader
from i2pscan.provenance.generators import known_generator

A1111 = ("a castle on a hill\nNegative prompt: blurry\n"
         "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model: juggernautXL_v9")


@pytest.fixture(scope="module")
def reader():
    return EvidenceReader()


def _image() -> Image.Image:
    return Image.fromarray(np.full((32, 32, 3), 90, np.uint8))


def _jpeg(ifd0: dict | None = None, sub: dict | None = None, xmp: bytes | None = None, comment: bytes | None = None) -> bytes:
    e = Image.Exif()
    for k, v in (ifd0 or {}).items():
        e[k] = v
    if sub:
        e.get_ifd(0x8769).update(sub)
    buf = io.BytesIO()
    kwargs = {"exif": e.tobytes()} if ifd0 or sub else {}
    if xmp is not None:
        kwargs["xmp"] = xmp
    if comment is not None:
        kwargs["comment"] = comment
    _image().save(buf, "JPEG", **kwargs)
    return buf.getvalue()


def _xmp(attrs: str = "", body: str = "") -> bytes:
    return ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
            'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/" '
            'xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" xmlns:tiff="http://ns.adobe.com/tiff/1.0/"'
            f' {attrs}>{body}</rdf:Description></rdf:RDF></x:xmpmeta>').encode()


def _png(text: dict[str, str]) -> bytes:
    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    buf = io.BytesIO()
    _image().save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def test_openai_user_comment_and_maker_note_in_ifd0(reader):
    # what Pillow's getexif() shows for DALL·E files: {37510: 'Made with OpenAI DALL-E', 37500: 'OpenAI--…'}
    for comment, generator in (("Made with OpenAI DALL-E", "DALL·E"), ("Made with OpenAI Labs", "DALL·E")):
        ev = reader.read(_jpeg({0x9286: comment, 0x927C: b"OpenAI--a1b2c3d4"}), "o.jpg")
        assert (ev.provenance, ev.generator) == ("generated", generator), comment
        assert ev.reason == f"EXIF UserComment (in IFD0) names DALL·E: “{comment}”"
        assert ev.detail["exif"]["matched"][0] == "exif:UserComment"
    maker_only = reader.read(_jpeg({0x927C: b"OpenAI--a1b2c3d4\x00\x01binary"}), "m.jpg")
    assert (maker_only.provenance, maker_only.generator) == ("generated", "OpenAI")


def test_user_comment_in_the_exif_ifd_and_other_text_tags(reader):
    ev = reader.read(_jpeg(sub={0x9286: b"ASCII\x00\x00\x00Made with OpenAI DALL-E"}), "s.jpg")
    assert (ev.provenance, ev.generator) == ("generated", "DALL·E")
    assert ev.reason == "EXIF UserComment names DALL·E: “Made with OpenAI DALL-E”"
    assert reader.read(_jpeg({0x010E: "Made with Google AI"}), "g.jpg").generator == "Google Imagen/Gemini"
    edited = reader.read(_jpeg({0x010E: "Edited with Google AI"}), "e.jpg")
    assert (edited.provenance, edited.generator) == ("ai-edited", "Google Imagen/Gemini")
    assert reader.read(_jpeg({0x013B: "Midjourney"}), "a.jpg").generator == "Midjourney"
    xp = reader.read(_jpeg({0x9C9C: "Created with Grok".encode("utf-16-le") + b"\0\0"}), "x.jpg")
    assert (xp.provenance, xp.generator) == ("generated", "Grok")
    # free text that merely mentions a weak name is no claim (a camera photo of the night sky)
    sky = reader.read(_jpeg({0x010F: "Canon", 0x0110: "EOS R5", 0x010E: "Gemini and Leonardo over the ridge"}), "n.jpg")
    assert (sky.provenance, sky.generator) == ("camera-exif", None)
    assert sky.reason == "only camera EXIF (Canon EOS R5), which anyone can write"


def test_software_names_every_listed_generator():
    names = {"DALL·E 3": "DALL·E", "OpenAI Labs": "DALL·E", "ChatGPT": "ChatGPT", "gpt-image-1": "ChatGPT",
             "Midjourney v7": "Midjourney", "Adobe Firefly Image 3": "Adobe Firefly", "Imagen 3": "Google Imagen/Gemini",
             "Gemini 2.5 Flash Image": "Google Imagen/Gemini", "Grok": "Grok", "Ideogram 2.0": "Ideogram",
             "Leonardo.Ai": "Leonardo.Ai", "NovelAI": "NovelAI", "Fooocus 2.5": "Fooocus", "InvokeAI 4.2": "InvokeAI",
             "stable-diffusion-webui-forge": "Forge", "ComfyUI": "ComfyUI", "AUTOMATIC1111": "AUTOMATIC1111",
             "FLUX.1 [dev]": "FLUX", "Recraft V3": "Recraft"}
    for text, generator in names.items():
        assert known_generator(text) == generator, text
    assert known_generator("Adobe Photoshop 26.0") is None and known_generator("Canon EOS R5 Firmware 1.1") is None


def test_xmp_fields(reader):
    cases = [(_xmp('Iptc4xmpExt:AISystemUsed="Imagen 3"'), "generated", "Google Imagen/Gemini"),
             (_xmp('Iptc4xmpExt:DigitalSourceType="http://cv.iptc.org/newscodes/digitalsourcetype/'
                   'trainedAlgorithmicMedia" xmp:CreatorTool="Midjourney"'), "generated", "Midjourney"),
             (_xmp(body='<dc:description><rdf:Alt><rdf:li xml:lang="x-default">Made with Google AI</rdf:li>'
                        '</rdf:Alt></dc:description>'), "generated", "Google Imagen/Gemini"),
             (_xmp('photoshop:Credit="Edited with Google AI"'), "ai-edited", "Google Imagen/Gemini"),
             (_xmp('tiff:Software="Ideogram"'), "generated", "Ideogram"),
             (_xmp('xmp:CreatorTool="Adobe Lightroom 13"'), "none", None)]
    for packet, provenance, generator in cases:
        ev = reader.read(_jpeg(xmp=packet), "x.jpg")
        assert (ev.provenance, ev.generator) == (provenance, generator), packet
    ev = reader.read(_jpeg(xmp=cases[1][0]), "x.jpg")
    assert ev.reason == "XMP declares trainedAlgorithmicMedia (IPTC digital source type), Midjourney"


def test_png_webp_and_jpeg_text(reader):
    mj = reader.read(_png({"Description": "a fox --v 7 Job ID: 1b2c3d4e-0000-4000-8000-000000000000",
                           "Author": "someone"}), "m.png")
    assert (mj.provenance, mj.generator) == ("generated", "Midjourney")
    nai = reader.read(_png({"Software": "NovelAI", "Source": "NovelAI Diffusion V4 4F3A1C2B",
                            "Comment": json.dumps({"uc": "lowres", "sampler": "k_euler", "steps": 28})}), "n.png")
    assert (nai.generator, nai.reason) == ("NovelAI", "NovelAI generation parameters in PNG text Comment")
    comment = reader.read(_jpeg(comment=A1111.encode()), "c.jpg")
    assert (comment.generator, comment.detail["text"]["model"]) == ("AUTOMATIC1111", "juggernautXL_v9")
    e = Image.Exif()
    e.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + A1111.encode("utf-16-be")
    buf = io.BytesIO()
    _image().save(buf, "WEBP", exif=e.tobytes())
    webp = reader.read(buf.getvalue(), "w.webp")
    assert (webp.generator, webp.reason) == ("AUTOMATIC1111", "AUTOMATIC1111 generation parameters in EXIF UserComment")
    comfy = reader.read(_png({"prompt": json.dumps({"4": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev"}},
                                                    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox"}}})}),
                        "c.png")
    assert comfy.reason == "ComfyUI workflow in PNG text prompt" and comfy.detail["text"]["model"] == "flux1-dev"


def test_c2pa_ingredient_generated_makes_the_edit_generated(reader):
    from c2pa_fixtures import make_ca_and_signer, sign_edit_of, sign_jpeg

    _, chain, key = make_ca_and_signer()
    plain = _jpeg()
    made = sign_jpeg(plain, chain, key, "trainedAlgorithmicMedia", agent="Adobe Firefly")
    edit = reader.read(sign_edit_of(plain, made, chain, key), "e.jpg")
    assert (edit.provenance, edit.generator, edit.c2pa) == ("generated", "Adobe Firefly", "valid-untrusted")
    assert edit.reason == ("C2PA manifest signed by i2pscan test signer (not a trusted signer) has an ingredient "
                           "declared trainedAlgorithmicMedia (Adobe Firefly)")
    composite = sign_jpeg(plain, chain, key, "compositeWithTrainedAlgorithmicMedia")
    assert reader.read(sign_edit_of(plain, composite, chain, key), "c.jpg").provenance == "ai-edited"


def test_avif_xmp_reaches_the_evidence_through_the_decoder(tmp_path, run_cli):
    if "AVIF" not in Image.SAVE:
        pytest.skip("this Pillow writes no AVIF")
    packet = _xmp('Iptc4xmpExt:DigitalSourceType="http://cv.iptc.org/newscodes/digitalsourcetype/'
                  'trainedAlgorithmicMedia"')
    _image().save(tmp_path / "a.avif", "AVIF", xmp=packet)
    r = run_cli("scan", tmp_path / "a.avif", "--metadata-only", "--workers", "0", "--format", "jsonl")
    row = json.loads(r.stdout)
    assert (r.exit_code, row["verdict"], row["provenance"], row["flagged_by"]) == (1, "synthetic", "generated", "metadata")


def test_heif_decodes_out_of_the_box(corpus_file):
    from i2pscan.io.decode import decode

    info = decode(str(corpus_file("provenance/c2pa-rs/sample1.heif")))
    assert (info.error, info.format, info.width, info.height) == (None, "HEIF", 1440, 960)


@pytest.fixture
def corpus_file():
    from helpers import CORPORA

    def get(name: str) -> Path:
        path = CORPORA / name
        if not path.is_file():
            pytest.skip("../shared/corpora is not present on this machine")
        return path

    return get


@pytest.mark.slow
def test_model_scan_counts_files_no_detector_scores(tmp_path, detector_file, run_cli, corpus_file, chdir):
    d = Path("d")
    d.mkdir()
    _image().save(d / "photo.jpg")
    (d / "raw.dng").write_bytes((lambda b: b.getvalue())(_tiff()))
    (d / "drawing.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>')
    (d / "still.jxl").write_bytes(corpus_file("provenance/c2pa-rs/sample1.jxl").read_bytes())
    (d / "phone.HEIC").write_bytes(corpus_file("provenance/c2pa-rs/sample1.heif").read_bytes())
    (d / "notes.txt").write_text("not an image")
    r = run_cli("scan", "d", "-d", detector_file, "--workers", "0", "--format", "jsonl", "--threshold", "0.999999")
    rows = {Path(x["path"]).name: x for x in map(json.loads, r.stdout.splitlines())}
    assert sorted(rows) == ["drawing.svg", "phone.HEIC", "photo.jpg", "raw.dng", "still.jxl"]
    assert r.exit_code == 3
    assert rows["phone.HEIC"]["verdict"] == "real" and rows["phone.HEIC"]["format"] == "HEIF"
    assert rows["raw.dng"]["error"].startswith("camera raw image (DNG): not scored;")
    assert rows["drawing.svg"]["error"].startswith("SVG vector drawing: not scored;")
    assert "3 unreadable (3 of them in formats no detector scores: 1 DNG, 1 JXL, 1 SVG)" in r.stderr
    r = run_cli("scan", "d", "-d", detector_file, "--workers", "0", "-q", "--ext", "jpg")
    assert r.exit_code == 0
    r = run_cli("scan", "d", "-d", detector_file, "--workers", "0", "--ext", "jpg")
    assert "left out 4 image file(s) whose extension is not in the list scanned" in r.stderr


def _tiff() -> io.BytesIO:
    buf = io.BytesIO()
    _image().save(buf, "TIFF")
    return buf


def test_nothing_in_the_extension_lists_is_both_scored_and_unscored():
    from i2pscan.io.formats import IMAGE_EXTENSIONS, SCANNED_EXTENSIONS, UNSCORED_EXTENSIONS

    assert not set(IMAGE_EXTENSIONS) & set(UNSCORED_EXTENSIONS)
    assert {"heic", "heif", "avif", "dng", "svg", "jxl", "cr3", "nef"} <= set(SCANNED_EXTENSIONS)


def _app1(body: bytes) -> bytes:
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body
