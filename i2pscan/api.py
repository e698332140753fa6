"""The public API's implementation: scan, load_detector, calibrate, finetune, evaluate.

``i2pscan/__init__.py`` exports them. Heavy libraries (torch, open_clip, sklearn) are imported by
the functions that need them, so that importing i2pscan, and a metadata-only scan, stay light.
"""


from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Sequence

__version__ = "0.1.0"

if TYPE_CHECKING:
    from i2pscan.evaluate import EvalResult
    from i2pscan.model.detector import Detector
    from i2pscan.scan.session import ScanOutcome
    from i2pscan.train.calibrate import Calibration
    from i2pscan.train.finetune import FinetuneResult


def load_detector(name_or_path: str = "rine-2class", *, device: str = "auto", pretrained: str | None = None,
                  precision: str = "auto") -> Detector:
    """A shipped detector by name (``rine-2class``, ``univfd``) or a detector file, verified and
    built on ``device`` (``auto``: a GPU when there is one). ``pretrained``: the backbone's weights
    when the recorded source is not available here; ``precision`` (``auto``, ``bf16``, ``fp32``):
    the backbone's arithmetic on CUDA. Raises I2PError for a file it refuses, naming what differs."""
    from i2pscan.model.detector import Detector
    from i2pscan.model.device import resolve_device

    return Detector.load(name_or_path, device=resolve_device(device), pretrained=pretrained, precision=precision)


def scan(paths: Sequence[str], output: str | None = None, detector: Detector | str | None = None, *,
         resume: bool = False, overwrite: bool = False, metadata_only: bool = False,
         on_row: Callable[[dict], None] | None = None, ray: str | None = None, device: str = "auto",
         pretrained: str | None = None, precision: str | None = None, extensions: Sequence[str] | None = None,
         hidden: bool = False, follow_symlinks: bool = False, exclude: Sequence[str] = (),
         stdin: Iterable[bytes] | None = None, flush_rows: int = 2048, **options) -> ScanOutcome:
    """Scan files and folders (``-``: paths read from ``stdin``) into one report row per file.

    ``output``: a Parquet report (``DIR/``: a dataset folder of part files), written in closed
    shards so that ``resume=True`` finishes a stopped scan; ``overwrite`` replaces a report.
    ``detector``: a loaded Detector, a name or a file (default: ``rine-2class``, announced in the
    log); ``metadata_only`` runs no model and loads none. ``on_row(row)`` gets each row in input
    order. ``options``: those of :class:`i2pscan.scan.options.ScanOptions` (``crops``, ``combine``,
    ``threshold``, ``batch_size``, ``workers``, ``want_hash``, ``max_pixels``, ``evidence``,
    ``c2pa_trust``...). Returns a :class:`~i2pscan.scan.session.ScanOutcome`; raises I2PError
    before any work for a bad request, and ``ScanStopped`` (with the rows kept) when the scan
    stops early.
    """
    import logging

    from i2pscan.io.discover import DiscoverOptions, discover
    from i2pscan.scan.options import check_metadata_only, default_extensions, resolve_options
    from i2pscan.scan.session import run_scan

    import os

    from i2pscan.provenance.evidence import EvidenceReader

    log = logging.getLogger("i2pscan")
    evidence = EvidenceReader.from_trust_file(options.get("c2pa_trust"))  # a bad bundle stops before any work
    if options.get("c2pa_trust"):
        options["c2pa_trust"] = os.path.abspath(options["c2pa_trust"])  # the report records which file it was
    if metadata_only:
        check_metadata_only({**options, "pretrained": pretrained, "precision": precision})
        if detector is not None:
            raise ValueError("metadata_only scans run no detector")
    exts = tuple(extensions or default_extensions(metadata_only))
    files = discover(paths, DiscoverOptions(exts, hidden, follow_symlinks, tuple(exclude)), stdin=stdin)
    if not files:
        log.warning(f"no image files found (extensions: {' '.join(exts)}; --ext, --hidden change what is picked up)")
    batch_size = 32
    if not metadata_only:
        if not hasattr(detector, "model"):
            if detector is None:
                from i2pscan.model.shipped import DEFAULT_DETECTOR

                detector = DEFAULT_DETECTOR
                log.info(f"no --detector given: using the shipped {DEFAULT_DETECTOR} (RINE, ECCV 2024; `i2pscan info "
                         f"{DEFAULT_DETECTOR}`); choose another with -d or I2PSCAN_DETECTOR, or scan without a model "
                         f"with --metadata-only")
            detector = load_detector(detector, device=device, pretrained=pretrained, precision=precision or "auto")
        from i2pscan.model.device import default_batch_size

        batch_size = default_batch_size(detector.device)
    resolved = resolve_options(batch_size, metadata_only=metadata_only, **options)
    return run_scan(files, output, detector, resolved, resume=resume, overwrite=overwrite, on_row=on_row, ray=ray,
                    inputs=list(paths), flush_rows=flush_rows, evidence=evidence)


def calibrate(data: str, out: str | None = None, *, backbone: str = "ViT-L-14", pretrained: str | None = None,
              quick_gelu: bool | None = None, device: str = "auto", max_per_class: int | None = None,
              subsets: Sequence[str] = (), split: str | None = None, **config) -> Calibration:
    """Which backbone layers carry forgery cues in the labelled sample ``data`` (a folder of
    real/fake folders or a path,label manifest): the per-layer probe scores, importance, critical
    layers S and L*. ``config``: CalibrateConfig's fields (``top_k``, ``gamma``, ``folds``,
    ``view``, ``seed``, ``batch_size``, ``workers``). Written to ``out`` when given."""
    from i2pscan.model.backbone import load_backbone
    from i2pscan.model.device import default_batch_size, resolve_device
    from i2pscan.io.pool import default_workers
    from i2pscan.train.calibrate import CalibrateConfig, calibrate as run
    from i2pscan.train.samples import load_labelled

    where = resolve_device(device)
    config = {k: v for k, v in config.items() if v is not None}
    config.setdefault("batch_size", default_batch_size(where))
    config.setdefault("workers", default_workers())
    cfg = CalibrateConfig(**config)
    sample = load_labelled(data, max_per_class=max_per_class, seed=cfg.seed, subsets=subsets, split=split)
    model = load_backbone(backbone, pretrained or "default", device=where, quick_gelu=quick_gelu)
    result = run(model, sample, cfg)
    if out is not None:
        result.save(out)
    return result


def finetune(data: str, calibration: str | Calibration, out: str, *, pretrained: str | None = None,
             val: str | None = None, resume: bool = False, device: str = "auto", max_per_class: int | None = None,
             subsets: Sequence[str] = (), split: str | None = None, on_mask: Callable | None = None,
             **config) -> FinetuneResult:
    """Train a detector on the labelled sample ``data`` with the backbone and critical layers of
    ``calibration`` (a file or a Calibration) and write it to ``out``. ``config``: FinetuneConfig's
    fields (``strategy``, ``rho``, ``q``, ``epochs``, ``target_fpr``...). ``val``: validation data
    (default: a held-out part of ``data``); ``resume`` continues from the checkpoint a stopped run
    left; ``on_mask(mask)`` is called with the tuned-weight mask before training starts."""
    from i2pscan.train.finetune import finetune as run

    model, cal, train, held_out, cfg = _training_inputs(data, calibration, pretrained, val, device, max_per_class,
                                                         subsets, split, config)
    return run(model, cal, train, out, cfg, val=held_out, resume=resume, on_mask=on_mask)


def plan_mask(data: str, calibration: str | Calibration, *, pretrained: str | None = None, val: str | None = None,
              device: str = "auto", max_per_class: int | None = None, subsets: Sequence[str] = (),
              split: str | None = None, **config):
    """The mask :func:`finetune` would train with the same arguments (``finetune --dry-run``): it
    holds out the same validation images, warms up a head and scores the weights; writes nothing."""
    from i2pscan.train.finetune import plan_mask as plan

    model, cal, train, held_out, cfg = _training_inputs(data, calibration, pretrained, val, device, max_per_class,
                                                         subsets, split, config)
    return plan(model, cal, train, cfg, val=held_out)


def _training_inputs(data, calibration, pretrained, val, device, max_per_class, subsets, split, config):
    from i2pscan.io.pool import default_workers
    from i2pscan.model.backbone import load_backbone
    from i2pscan.model.device import default_batch_size, resolve_device
    from i2pscan.model.weights import recorded_weights
    from i2pscan.train.calibrate import Calibration
    from i2pscan.train.finetune import FinetuneConfig
    from i2pscan.train.samples import load_labelled

    where = resolve_device(device)
    config = {k: v for k, v in config.items() if v is not None}
    config.setdefault("batch_size", default_batch_size(where))
    config.setdefault("workers", default_workers())
    cfg = FinetuneConfig(**config)
    cal = calibration if isinstance(calibration, Calibration) else Calibration.load(calibration)
    train = load_labelled(data, max_per_class=max_per_class, seed=cfg.seed, subsets=subsets, split=split)
    held_out = load_labelled(val, subsets=subsets) if val else None
    model = load_backbone(cal.backbone["name"], recorded_weights(cal.backbone, pretrained), device=where,
                          quick_gelu=cal.backbone["model_config"].get("quick_gelu"))
    return model, cal, train, held_out, cfg


def evaluate(data: str, detectors: Sequence[str] = ("rine-2class",), *, perturbations: Sequence[str] = ("none",),
             device: str = "auto", pretrained: str | None = None, precision: str | None = None,
             max_per_class: int | None = None, subsets: Sequence[str] = (), split: str | None = None, seed: int = 0,
             **options) -> EvalResult:
    """Accuracy, AP, AUC and TPR at the target FPR per subset (generator) of the labelled sample
    ``data``, for each detector (names or files), scored as a scan scores them; several
    detectors give one table with a ``detector`` column. ``options``: ScanOptions' fields."""
    from i2pscan.evaluate import combine, evaluate_detectors
    from i2pscan.model.device import default_batch_size, resolve_device
    from i2pscan.model.shipped import resolve
    from i2pscan.scan.options import resolve_options
    from i2pscan.train.samples import load_labelled

    where = resolve_device(device)
    sample = load_labelled(data, max_per_class=max_per_class, seed=seed, subsets=subsets, split=split)
    specs = list(dict.fromkeys(detectors))
    for spec in specs:
        resolve(spec)  # a misspelt second detector stops before the first one's evaluation
    resolved = resolve_options(default_batch_size(where), **options)
    results = evaluate_detectors(specs, lambda spec: load_detector(spec, device=device, pretrained=pretrained,
                                                                   precision=precision or "auto"),
                                 sample, resolved, tuple(perturbations))
    return combine(results)
