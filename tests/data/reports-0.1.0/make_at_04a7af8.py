import os, sys, numpy as np
sys.path.insert(0, "/tmp/old")
import i2pscan; assert i2pscan.__file__.startswith("/tmp/old"), i2pscan.__file__
from i2pscan import console
console.set_quiet(True)
from i2pscan.decode import save_image
from i2pscan.backbone import load_backbone
from i2pscan.calibrate import CalibrateConfig, calibrate
from i2pscan.finetune import FinetuneConfig, finetune
from i2pscan.samples import load_labelled
from i2pscan.augment import Augment
from i2pscan.detector import Detector
from i2pscan.scan import ScanOptions, scan, report_metadata
from i2pscan.report import ReportWriter

def noise(path, seed, size=72):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_image(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8), path)

# a tiny labelled sample: noise "real", smoothed noise "fake"
for i in range(12):
    noise(f"train/real/{i:02d}.png", 1000 + i)
    a = np.random.default_rng(2000 + i).integers(0, 255, (72, 72, 3)).astype(np.float32)
    a = (a + np.roll(a, 1, 0) + np.roll(a, 1, 1) + np.roll(a, 1, (0, 1))) / 4
    os.makedirs("train/fake", exist_ok=True)
    save_image(a.astype(np.uint8), f"train/fake/{i:02d}.png")
sample = load_labelled("train")
cal = calibrate(load_backbone("i2p-tiny"), sample, CalibrateConfig(top_k=2, folds=3))
finetune(load_backbone("i2p-tiny"), cal, sample, "detector.safetensors",
         FinetuneConfig(epochs=1, batch_size=8, sensitivity_samples=8, saliency_samples=8, warmup_steps=5,
                        augment=Augment(blur_p=0.0, jpeg_p=0.0), target_fpr=0.25, rho=0.01))
for i in range(10):
    noise(f"photos/{i:02d}.png", i)
paths = [f"photos/{i:02d}.png" for i in range(10)]
det = Detector.load("detector.safetensors")
opts = ScanOptions(workers=0, batch_size=2)
# a scan killed mid-way: shards of the first 6 files, never merged
w = ReportWriter("killed.parquet", report_metadata(det, opts, ["photos"]), shard_rows=2)
scan(det, paths[:6], opts, w)
w.flush(); w._lock.close()
# a finished report of the first 6 files, to be extended
w = ReportWriter("finished.parquet", report_metadata(det, opts, ["photos"]), shard_rows=2)
scan(det, paths[:6], opts, w)
w.close({p: i for i, p in enumerate(paths)}, {"finished": "2026-12-06T00:00:00+00:00"})
# a metadata-only report of the first 6 files, killed
mo = ScanOptions(workers=0, batch_size=2, metadata_only=True)
w = ReportWriter("metadata.parquet", report_metadata(None, mo, ["photos"]), shard_rows=2)
scan(None, paths[:6], mo, w)
w.flush(); w._lock.close()
print("ok")
