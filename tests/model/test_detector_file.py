"""Hostile detector files (issue 13): every variant of a valid file that is not exactly what
finetune writes is refused at load, before any work, with exit 2 and one line saying what is wrong."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from helpers import tamper_detector
from i2pscan.model import tensorfile
from i2pscan.io.pixels import save_image
from i2pscan.model.detector import Detector
from i2pscan.errors import I2PError


def m(**changes):
    """A metadata edit: dotted keys set (or deleted with ...) values."""
    def edit(meta):
        for dotted, value in changes.items():
            *parents, last = dotted.split("__")
            target = meta
            for p in parents:
                target = target[p]
            if value is ...:
                del target[last]
            else:
                target[last] = value
    return {"meta_edit": edit}


def t(fn):
    return {"tensor_edit": fn}


def _head(tensors):
    return next(k for k in sorted(tensors) if k.startswith("head.") and tensors[k].dim() == 2)


def _values(tensors):
    return next(k for k in sorted(tensors) if k.endswith(".values"))


def _indices(tensors):
    return next(k for k in sorted(tensors) if k.endswith(".indices"))


def _cast(pick, dtype):
    return t(lambda ts: ts.update({pick(ts): ts[pick(ts)].to(dtype)}))


def _set(pick, fn):
    return t(lambda ts: ts.update({pick(ts): fn(ts[pick(ts)])}))


NAN = float("nan")

# (case id, edit, fragment of the one-line error)
VARIANTS = [
    ("temperature-tiny", m(temperature=1e-300), "temperature: 1e-300 is less than the minimum of 0.05"),
    ("temperature-huge", m(temperature=1e308), "temperature: 1e+308 is greater than the maximum of 20"),
    ("temperature-zero", m(temperature=0), "temperature: 0 is less than the minimum"),
    ("temperature-negative", m(temperature=-1.0), "temperature: -1.0 is less than the minimum"),
    ("temperature-string", m(temperature="1"), "temperature: '1' is not of type 'number'"),
    ("temperature-nan", m(temperature=NAN), "metadata temperature is not a finite number"),
    ("threshold-one", m(threshold=1.0), "disagrees with threshold 1 at temperature"),
    ("threshold-zero", m(threshold=0.0), "disagrees with threshold 0 at temperature"),
    ("threshold-above-one", m(threshold=1.5), "threshold: 1.5 is greater than the maximum of 1"),
    ("threshold-string", m(threshold="0.5"), "threshold: '0.5' is not of type 'number'"),
    ("threshold-logit-disagrees", m(threshold=0.7856), "disagrees with threshold 0.7856"),
    ("threshold-logit-huge", m(threshold_logit=1e308), "threshold_logit: 1e+308 is greater than the maximum"),
    ("threshold-one-logit-huge", m(threshold=1.0, threshold_logit=1e308), "greater than the maximum of 10000"),
    ("threshold-logit-null", m(threshold_logit=None), "threshold_logit: None is not of type 'number'"),
    ("threshold-logit-inf", m(threshold_logit=float("inf")), "threshold_logit: inf is greater than the maximum"),
    ("layers-duplicate", m(head__config__layers=[1, 1, 3]), "layers: [1, 1, 3] has non-unique elements"),
    ("layers-empty", m(head__config__layers=[]), "layers: [] should be non-empty"),
    ("layers-string", m(head__config__layers=["1"]), "layers[0]: '1' is not of type 'integer'"),
    ("layers-beyond-L*", m(head__config__layers=[1, 6]), "must be blocks in 1..L*"),
    ("head-config-unknown-key", m(head__config__extra=1), "Additional properties are not allowed ('extra'"),
    ("head-size-30000", m(head__config__in_dim=30000), "in_dim: 30000 is greater than the maximum of 16384"),
    ("head-size-claimed", m(head__config__proj_dim=10000), "has shape"),
    ("head-hidden-zero", m(head__config__hidden_dim=0), "hidden_dim: 0 is less than the minimum of 1"),
    ("head-gate-missing", m(head__config__gate_init=...), "'gate_init' is a required property"),
    ("head-gate-zero", m(head__config__gate_init=[0.0, 1.0]), "gate_init[0]: 0.0 is less than or equal to the minimum"),
    ("head-gate-sum", m(head__config__gate_init=[0.9, 0.9]), "gate weights do not sum to 1"),
    ("head-config-list", m(head__config=[1, 2]), "head.config: [1, 2] is not of type 'object'"),
    ("head-list", m(head=[1]), "metadata head: [1] is not of type 'object'"),
    ("head-no-config", m(head__config=...), "'config' is a required property"),
    ("head-layers-disagree", m(head__layers=[1]), "head layers disagree"),
    ("preprocessing-unknown-key", m(preprocessing__resize=256), "Additional properties are not allowed ('resize'"),
    ("preprocessing-mean-nan", m(preprocessing__mean=[NAN, 0.5, 0.5]), "preprocessing.mean[0] is not a finite number"),
    ("preprocessing-std-zero", m(preprocessing__std=[0.0, 0.2, 0.2]), "std[0]: 0.0 is less than or equal to the minimum"),
    ("preprocessing-mean-short", m(preprocessing__mean=[0.5, 0.5]), "mean: [0.5, 0.5] is too short"),
    ("preprocessing-crop-zero", m(preprocessing__crop_size=0), "crop_size: 0 is less than the minimum of 1"),
    ("preprocessing-crop-mode", m(preprocessing__crop_mode="bogus"), "crop_mode: 'bogus' is not one of"),
    ("preprocessing-crop-mismatch", m(preprocessing__crop_size=999), "crop size 999 does not match the backbone"),
    ("preprocessing-empty", m(preprocessing={}), "'crop_size' is a required property"),
    ("notes-wrong-type", m(notes=123), "notes: 123 is not of type 'string'"),
    ("notes-long", m(notes="x" * 20_000), "notes: 'xxxx"),
    ("notes-20MB", m(notes="x" * 20_000_000), "of metadata (at most 4,194,304 allowed)"),
    ("unknown-top-level-key", m(extra=1), "Additional properties are not allowed ('extra'"),
    ("missing-mask", m(mask=...), "'mask' is a required property"),
    ("architecture-unknown", m(architecture="cnn"), "architecture 'cnn' is not one of i2p, rine, univfd"),
    ("architecture-rine-on-i2p", m(architecture="rine"), "metadata record:"),
    ("backbone-sha-short", m(backbone__sha256="abc"), "backbone.sha256: 'abc' does not match"),
    ("backbone-sha-other", m(backbone__sha256="0" * 64), "backbone weights differ from those it was trained on"),
    ("backbone-name-int", m(backbone__name=5), "backbone.name: 5 is not of type 'string'"),
    ("backbone-name-unknown", m(backbone__name="ViT-Nope"), "unknown backbone 'ViT-Nope'"),
    ("backbone-quickgelu-missing", m(backbone__model_config={}), "'quick_gelu' is a required property"),
    ("backbone-blocks-zero", m(backbone__num_blocks=0), "num_blocks: 0 is less than the minimum of 1"),
    ("backbone-width-wrong", m(backbone__width=63), "head input width 64 does not match the backbone's features (63)"),
    ("backbone-unknown-key", m(backbone__evil=1), "Additional properties are not allowed ('evil'"),
    ("last-block-string", m(last_block="4"), "last_block: '4' is not of type 'integer'"),
    ("last-block-zero", m(last_block=0), "last_block: 0 is less than the minimum of 1"),
    ("last-block-beyond", m(last_block=99), "L* = 99 is beyond the backbone's 6 blocks"),
    ("view-unknown", m(view="nope"), "view: 'nope' is not one of ['cls', 'cls+patchmean']"),
    ("mask-list", m(mask=[1]), "metadata mask: [1] is not of type 'object'"),
    ("mask-strategy", m(mask__strategy="evil"), "mask.strategy: 'evil' is not one of"),
    ("mask-tensors-missing-one", m(mask__tensors=[]), "do not match the tuned tensors it records"),
    ("training-string", m(training="x"), "metadata training: 'x' is not of type 'object'"),
    ("training-unknown-key", m(training__evil=1), "Additional properties are not allowed ('evil'"),
    ("calibration-importance", m(calibration__importance=[2.0]), "importance[0]: 2.0 is greater than the maximum of 1"),
    ("created-int", m(created=5), "created: 5 is not of type 'string'"),
    ("version-list", m(i2pscan_version=[1]), "i2pscan_version: [1] is not of type 'string'"),
    # tensors
    ("head-fp16", _cast(_head, torch.float16), "is float16, not float32"),
    ("head-fp64", _cast(_head, torch.float64), "is float64, not float32"),
    ("head-bf16", _cast(_head, torch.bfloat16), "is bfloat16, not float32"),
    ("head-int64", _cast(_head, torch.int64), "is int64, not float32"),
    ("head-int8", _cast(_head, torch.int8), "is int8, not float32"),
    ("head-bool", _cast(_head, torch.bool), "is bool, not float32"),
    ("delta-fp16", _cast(_values, torch.float16), "is float16, not float32"),
    ("delta-fp64", _cast(_values, torch.float64), "is float64, not float32"),
    ("delta-int8", _cast(_values, torch.int8), "is int8, not float32"),
    ("indices-int64-small", _cast(_indices, torch.int64), "is int64 although its indices fit int32"),
    ("indices-float", _cast(_indices, torch.float32), "is not a 1-D int32 index list"),
    ("indices-out-of-range", _set(_indices, lambda x: x + 10**9), "fall outside the tensor"),
    ("indices-repeat", _set(_indices, lambda x: torch.zeros_like(x)), "repeat"),
    ("indices-2d", _set(_indices, lambda x: x[None]), "is not a 1-D int32 index list"),
    ("head-huge-finite", _set(_head, lambda x: torch.full_like(x, 3e38)), "gives no finite score for a neutral"),
    ("delta-huge-finite", _set(_values, lambda x: torch.full_like(x, 3e38)), "gives no finite score for a neutral"),
    ("head-nan", _set(_head, lambda x: torch.full_like(x, NAN)), "holds NaN or infinite values"),
    ("delta-inf", _set(_values, lambda x: torch.full_like(x, float("inf"))), "holds NaN or infinite values"),
    ("head-tensor-missing", t(lambda ts: ts.pop(_head(ts))), "head tensors do not match its configuration (missing"),
    ("head-tensor-extra", t(lambda ts: ts.update({"head.evil": torch.zeros(3)})), "unexpected ['evil']"),
    ("foreign-tensor", t(lambda ts: ts.update({"evil.payload": torch.zeros(3)})), "unexpected tensor evil.payload"),
    ("head-wrong-shape", _set(_head, lambda x: x[:, :-1].contiguous()), "has shape"),
    ("delta-orphan-indices", t(lambda ts: ts.pop(_values(ts))), "has no values"),
    ("delta-not-eligible", t(lambda ts: ts.update({"delta.visual.conv1.weight.values": torch.zeros(1),
                                                    "delta.visual.conv1.weight.indices": torch.zeros(1, dtype=torch.int32)})),
     "do not match the tuned tensors it records"),
]


def _flip_data(data: bytes) -> bytes:
    b = bytearray(data)
    b[-5] ^= 0x10
    return bytes(b)


def _flip_meta_digit(data: bytes) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    header = data[8:8 + n]
    i = header.index(b'temperature\\": ') + len(b'temperature\\": ')
    digit = header[i:i + 1]
    new = b"7" if digit != b"7" else b"3"
    return data[:8 + i] + new + data[8 + i + 1:]


def _drop_checksum(data: bytes) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    del header["__metadata__"]["i2pscan.sha256"]
    text = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", n) + text + b" " * (n - len(text)) + data[8 + n:]


def _version(data: bytes) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header["__metadata__"]["i2pscan.format"] = "99"
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the header may grow: give it its own length (tensor offsets follow it)
    return struct.pack("<Q", len(text)) + text + data[8 + n:]


RAW = [
    ("bit-flip-in-tensors", _flip_data, "does not match the checksum it records"),
    ("digit-changed-in-metadata", _flip_meta_digit, "does not match the checksum it records"),
    ("no-checksum", _drop_checksum, "records no checksum"),
    ("format-99", _version, "has format version 99"),
    ("truncated", lambda d: d[: len(d) // 2], "not a readable safetensors file"),
    ("empty", lambda d: b"", "not a readable safetensors file"),
    ("header-claims-1TB", lambda d: struct.pack("<Q", 1 << 40) + d[8:], "claims 1,099,511,627,776 bytes of metadata"),
    ("pickle", lambda d: b"\x80\x04\x95" + d[3:], "is a pickle"),
    ("random-bytes", lambda d: bytes(np.random.default_rng(0).integers(0, 255, 4096, dtype=np.uint8)),
     "bytes of metadata (at most 4,194,304 allowed)"),
    ("header-not-json", lambda d: struct.pack("<Q", 16) + b"{not json at al}" + d[8:], "not a readable safetensors file"),
]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    save_image(np.random.default_rng(0).integers(0, 255, (70, 70, 3), dtype=np.uint8), folder / "a.png")
    return folder


def _assert_refused(bad, fragment, run_cli, image_dir, tmp_path):
    with pytest.raises(I2PError) as info:
        Detector.load(bad)
    assert fragment in str(info.value), str(info.value)
    r = run_cli("scan", image_dir, "-d", bad, "-o", tmp_path / "r.parquet", "--workers", "0")
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], lines
    assert "internal error" not in lines[0]
    assert len(lines[0]) < 600
    assert r.stdout == "" and not (tmp_path / "r.parquet").exists() and not (tmp_path / "r.parquet.parts").exists()


@pytest.mark.parametrize("case,edit,fragment", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_hostile_variant_is_refused(detector_file, tmp_path, run_cli, image_dir, case, edit, fragment):
    bad = tamper_detector(detector_file, tmp_path / "bad.safetensors", **edit)
    _assert_refused(bad, fragment, run_cli, image_dir, tmp_path)


@pytest.mark.parametrize("case,edit,fragment", RAW, ids=[v[0] for v in RAW])
def test_hostile_bytes_are_refused(detector_file, tmp_path, run_cli, image_dir, case, edit, fragment):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(edit(detector_file.read_bytes()))
    _assert_refused(bad, fragment, run_cli, image_dir, tmp_path)


def test_a_calibration_is_not_a_detector(tmp_path, run_cli, image_dir):
    tensorfile.write(tmp_path / "cal.safetensors", "calibration", {"x": torch.zeros(1)}, {"a": 1})
    _assert_refused(tmp_path / "cal.safetensors", "is an i2pscan calibration file, not a detector file", run_cli,
                    image_dir, tmp_path)


def test_the_valid_file_loads_and_its_checksum_is_recorded(detector_file):
    det = Detector.load(detector_file)
    assert det.architecture == "i2p" and det.meta["architecture"] == "i2p"
    assert np.isfinite(det.score(torch.zeros(2, 3, 64, 64))).all()
    kind, meta, tensors = tensorfile.read(detector_file, ("detector",))
    again = tamper_detector(detector_file, detector_file.parent / "again.safetensors")
    assert again.read_bytes() == detector_file.read_bytes()  # same content, same bytes


def test_a_huge_claimed_head_allocates_nothing(detector_file, tmp_path, monkeypatch):
    """The sizes a file claims are checked on the meta device: no real DetectorHead is built."""
    import i2pscan.model.detector_file as det_mod

    devices = []
    real = det_mod.DetectorHead

    def spy(config):
        devices.append(torch.get_default_device().type)
        return real(config)

    monkeypatch.setattr(det_mod, "DetectorHead", spy)
    bad = tamper_detector(detector_file, tmp_path / "bad.safetensors",
                          meta_edit=lambda meta: meta["head"]["config"].update(proj_dim=16384, hidden_dim=16384))
    with pytest.raises(I2PError, match="has shape"):
        Detector.load(bad)
    assert devices == ["meta"]
