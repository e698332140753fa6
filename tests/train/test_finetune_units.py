"""Unit tests of finetune's pure steps, each against the rule it must keep (no backbone, no images
decoded; the whole file runs in about a second): the config's refusals at their boundaries, the
validation split, the class check, the temperature (against a brute-force NLL grid) and the
threshold (against a brute-force search over every candidate cut)."""

import math
from types import SimpleNamespace

import numpy as np
import pytest

from i2pscan.train import finetune as ft
from i2pscan.train import validation
from i2pscan.errors import I2PError
from i2pscan.train.finetune import FinetuneConfig
from i2pscan.train.loop import auc_standard_error, better_epoch
from i2pscan.train.thresholds import expected_fpr, fit_temperature, threshold_at_fpr, thresholds_for
from i2pscan.train.samples import FileSet, LabelledImage, LabelledSample, split_by_subset, split_stratified
from i2pscan.train.sensitivity import STRATEGIES

# -- FinetuneConfig: every refusal names its option; the limits themselves are where the docs say -----

RANGE_RHO_Q = "`rho` and `q` must be in (0, 1]"
RANGE_FPR = "`target_fpr` must be in (0, 1)"
RANGE_SPLIT = "`val_split` must be in (0, 1)"
AT_LEAST_1 = "`epochs`, `batch_size` and `accumulate` must be at least 1"
TARGET = "`sensitivity_target` must be embedding or taps"


@pytest.mark.parametrize("option, accepted, refused, message", [
    ("rho", [1e-9, 0.5, 1.0], [0.0, -0.1, 1.0000001, 1.5], RANGE_RHO_Q),
    ("q", [1e-9, 0.5, 1.0], [0.0, -0.1, 1.0000001, 1.5], RANGE_RHO_Q),
    ("target_fpr", [1e-9, 0.5, 0.999999], [0.0, -0.1, 1.0, 1.5], RANGE_FPR),
    ("val_split", [1e-9, 0.5, 0.999999], [0.0, -0.1, 1.0, 1.5], RANGE_SPLIT),
    ("epochs", [1, 2], [0, -1], AT_LEAST_1),
    ("batch_size", [1, 2], [0, -1], AT_LEAST_1),
    ("accumulate", [1, 2], [0, -1], AT_LEAST_1),
    ("sensitivity_target", ["embedding", "taps"], ["TAPS", "tap", ""], TARGET),
    ("head", ["i2p", "rine", "univfd"], ["RINE", ""], "`head` must be one of i2p, rine, univfd"),
    ("head_dropout", [0.0, 0.5, 0.999], [-0.1, 1.0], "`head_dropout` must be in [0, 1)"),
    ("select_by", ["saliency", "ratio"], ["t/s"], "`select_by` must be one of saliency, ratio"),
    ("val_by", ["auto", "subset", "random"], ["generator"], "`val_by` must be one of auto, subset, random"),
    ("saliency_head", ["probe", "warmup"], ["head"], "`saliency_head` must be one of probe, warmup"),
    ("sensitivity_norm", ["none", "tensor", "group"], ["rank"], "`sensitivity_norm` must be one of none, tensor, group"),
    ("sensitivity_projections", [1, 8], [0, -1], "`sensitivity_projections` must be at least 1"),
    ("warmup_views", [1, 3], [0], "`warmup_views` must be at least 1"),
    ("warmup_steps", [None, 0, 5], [-1], "`warmup_steps` must be at least 0"),
    ("drift_penalty", [0.0, 1e4], [-1e-9], "`drift_penalty` must be at least 0"),
])
def test_config_accepts_its_limits_and_refuses_just_past_them(option, accepted, refused, message):
    for value in accepted:  # every other option at its default: each check stands on its own
        assert getattr(FinetuneConfig(**{option: value}), option) == value
    for value in refused:
        with pytest.raises(I2PError) as err:
            FinetuneConfig(**{option: value})
        assert str(err.value) == message, (option, value)


def test_config_strategy_refusal_lists_every_strategy():
    with pytest.raises(I2PError) as err:
        FinetuneConfig(strategy="lowest")
    assert str(err.value) == "`strategy` must be one of i2p, low-sensitivity, task-fisher, random, head-only, full"
    assert {FinetuneConfig(strategy=s).strategy for s in STRATEGIES} == set(STRATEGIES)


@pytest.mark.parametrize("strategy", ["i2p", "task-fisher"])
def test_config_one_warmup_step_is_enough_for_saliency_of_the_warmed_up_head(strategy):
    assert FinetuneConfig(strategy=strategy, warmup_steps=1, saliency_head="warmup").warmup_steps == 1
    with pytest.raises(I2PError, match=f"^`strategy` {strategy} ranks weights .* `warmup_steps` must be at least 1"):
        FinetuneConfig(strategy=strategy, warmup_steps=0, saliency_head="warmup")
    assert FinetuneConfig(strategy=strategy, warmup_steps=0).warmup_steps == 0  # the probe needs no warm-up


def test_config_drift_penalty_needs_drift_images():
    with pytest.raises(I2PError) as err:
        FinetuneConfig(drift_penalty=1.0, drift_samples=0)
    assert str(err.value).startswith("`drift_penalty` is scaled by the drift images' embeddings")
    assert FinetuneConfig(drift_penalty=0.0, drift_samples=0).drift_samples == 0


# -- samples on disk: each file has bytes of its own (a byte-identical copy counts as the same file) --


def _sample(root, labels, subsets=None, name="s") -> LabelledSample:
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for i, label in enumerate(labels):
        path = root / f"{name}{i:03d}.png"
        path.write_bytes(f"{name} {i} {label}".encode())
        items.append(LabelledImage(str(path), int(label), subsets[i] if subsets else "g"))
    return LabelledSample(items, str(root))


class _Warnings:
    """The warning lines the library logged (the CLI prints them as ``warning: ...``)."""

    def __init__(self, caplog):
        self.caplog = caplog

    def lines(self) -> list[str]:
        return [r.getMessage() for r in self.caplog.records if r.levelname == "WARNING"]

    def __eq__(self, other) -> bool:
        return self.lines() == other

    def __repr__(self) -> str:
        return repr(self.lines())

    def clear(self) -> None:
        self.caplog.clear()


@pytest.fixture
def warnings(caplog):
    caplog.set_level("WARNING", logger="i2pscan")
    return _Warnings(caplog)


def test_check_classes_refuses_one_class_data_with_its_counts():
    def labelled(labels):
        return LabelledSample([LabelledImage(f"/x/{i}.png", lab, "g") for i, lab in enumerate(labels)], "/x")

    validation.check_classes(labelled([0, 1]), "training")  # one image of each class is enough
    with pytest.raises(I2PError) as err:
        validation.check_classes(labelled([0, 0, 0]), "training")
    assert str(err.value) == "the training data has 3 real and 0 fake images; both are needed"
    with pytest.raises(I2PError) as err:
        validation.check_classes(labelled([1, 1]), "validation")
    assert str(err.value) == "the validation data has 0 real and 2 fake images; both are needed"
    with pytest.raises(I2PError) as err:
        validation.check_classes(labelled([]), "validation")
    assert str(err.value) == "the validation data has 0 real and 0 fake images; both are needed"


def test_split_is_stratified_disjoint_and_deterministic_per_seed(tmp_path, warnings):
    labels = [0] * 30 + [1] * 30
    subsets = (["a"] * 10 + ["b"] * 20) * 2
    sample = _sample(tmp_path, labels, subsets)
    config = FinetuneConfig(val_split=0.2, seed=3, target_fpr=0.25, val_by="random")
    train, val, overlap = ft.hold_out_validation(sample, None, config)
    assert overlap == 0 and warnings == []
    assert sorted(train.paths + val.paths) == sorted(sample.paths) and not set(train.paths) & set(val.paths)
    assert val.counts()["subsets"] == {"a": {"real": 2, "fake": 2}, "b": {"real": 4, "fake": 4}}
    expect_train, expect_val = split_stratified(sample, 0.2, 3)
    assert train.paths == [sample.paths[i] for i in expect_train]
    assert val.paths == [sample.paths[i] for i in expect_val]
    again = ft.hold_out_validation(sample, None, config)
    assert again[0].paths == train.paths and again[1].paths == val.paths
    other = ft.hold_out_validation(sample, None, FinetuneConfig(val_split=0.2, seed=4, target_fpr=0.25, val_by="random"))
    assert other[1].paths != val.paths and len(other[1].items) == len(val.items)


def test_split_by_subset_holds_out_whole_generators_by_default(tmp_path, warnings):
    labels = [0] * 30 + [1] * 30
    subsets = (["a"] * 10 + ["b"] * 10 + ["c"] * 10) * 2
    sample = _sample(tmp_path, labels, subsets)
    train, val, _ = ft.hold_out_validation(sample, None, FinetuneConfig(val_split=0.2, seed=3, target_fpr=0.25))
    held = set(val.counts()["subsets"])
    assert len(held) == 1 and not held & set(train.counts()["subsets"])  # round(0.2 * 3) = 1 generator
    assert val.counts()["subsets"][held.pop()] == {"real": 10, "fake": 10}
    expect_train, expect_val = split_by_subset(sample, 0.2, 3)
    assert val.paths == [sample.paths[i] for i in expect_val] and train.paths == [sample.paths[i] for i in expect_train]
    protocol = validation.validation_protocol(train, val)
    assert protocol["validation"] == "held-out generators" and protocol["temperature_floor"] is None
    assert protocol["val_subsets"] == sorted(val.counts()["subsets"])
    # at most all but one generator validates; one generator cannot be split by generator
    _, most = split_by_subset(sample, 0.99, 0)
    assert len({sample.items[i].subset for i in most}) == 2
    one = _sample(tmp_path / "one", [0, 1] * 5)
    with pytest.raises(I2PError) as err:
        ft.hold_out_validation(one, None, FinetuneConfig(val_by="subset", target_fpr=0.5))
    assert str(err.value) == ("`val_by` subset needs training data of two subsets (generators) or more; it has 1")
    train, val, _ = ft.hold_out_validation(one, None, FinetuneConfig(target_fpr=0.5))  # auto: a fraction
    in_dist = validation.validation_protocol(train, val)
    assert in_dist["validation"] == "in-distribution" and in_dist["temperature_floor"] == 1.0


def test_split_of_tiny_classes(tmp_path, warnings):
    # two reals: one validates, one trains (each side keeps both classes)
    two = _sample(tmp_path / "two", [0, 0] + [1] * 10)
    train, val, _ = ft.hold_out_validation(two, None, FinetuneConfig(val_split=0.2, target_fpr=0.5))
    assert train.counts()["real"] == val.counts()["real"] == 1 and val.counts()["fake"] == 2
    assert warnings == []  # one real: floor(0.5 * 2) = 1, the conformal rank exists
    # one real: it trains, and validation has no real image to set a threshold with
    one = _sample(tmp_path / "one", [0] + [1] * 10)
    with pytest.raises(I2PError) as err:
        ft.hold_out_validation(one, None, FinetuneConfig(val_split=0.2))
    assert str(err.value) == "the validation data has 0 real and 2 fake images; both are needed"
    # no fake at all: the training data is refused first
    reals = _sample(tmp_path / "reals", [0] * 8)
    with pytest.raises(I2PError) as err:
        ft.hold_out_validation(reals, None, FinetuneConfig(val_split=0.25))
    assert str(err.value) == "the training data has 6 real and 0 fake images; both are needed"


def test_split_with_val_data_keeps_both_as_given(tmp_path, warnings):
    train = _sample(tmp_path / "train", [0, 1, 0, 1])
    val = _sample(tmp_path / "val", [0] * 20 + [1], name="v")
    got_train, got_val, overlap = ft.hold_out_validation(train, val, FinetuneConfig(target_fpr=0.05))
    assert got_train.items == train.items and got_val.items == val.items and overlap == 0
    assert warnings == []  # exactly 1/target-fpr real validation images: enough
    one_class = _sample(tmp_path / "val1", [0, 0, 0], name="w")
    with pytest.raises(I2PError) as err:
        ft.hold_out_validation(train, one_class, FinetuneConfig())
    assert str(err.value) == "the validation data has 3 real and 0 fake images; both are needed"


def test_split_refuses_validation_files_that_are_training_files(tmp_path):
    train = _sample(tmp_path / "train", [0, 1, 0, 1])
    copy = tmp_path / "val" / "copy.png"  # the same bytes under another name
    copy.parent.mkdir()
    copy.write_bytes((tmp_path / "train" / "s003.png").read_bytes())
    val = LabelledSample([LabelledImage(str(copy), 1, "g"), LabelledImage(train.paths[2], 0, "g")],
                         str(tmp_path / "val"))
    with pytest.raises(I2PError) as err:
        ft.hold_out_validation(train, val, FinetuneConfig())
    assert str(err.value) == (f"2 training image(s) are also validation images (the same file or the same bytes, "
                              f"e.g. {train.paths[2]}); give `val` data of its own, or `split` to keep only "
                              f"training images in DATA")
    only_copy = LabelledSample(val.items[:1], val.source)
    with pytest.raises(I2PError, match=r"^1 training image\(s\) are also validation images .*e\.g\. .*s003\.png\)"):
        ft.hold_out_validation(train, only_copy, FinetuneConfig())


def test_split_counts_and_warns_about_calibration_images_that_validate(tmp_path, warnings):
    train = _sample(tmp_path / "train", [0, 1, 0, 1])
    val = _sample(tmp_path / "val", [0, 0, 0, 1, 1], name="v")
    cal = SimpleNamespace(sample={"files": FileSet.of([val.paths[0], val.paths[3], train.paths[0]]).entries()})
    _, _, overlap = ft.hold_out_validation(train, val, FinetuneConfig(target_fpr=0.5), cal)
    assert overlap == 2
    assert warnings == ["2 of 5 validation image(s) were in the calibration sample (they chose the critical layers): "
                        "calibrate on images that do not validate"]
    warnings.clear()
    for nothing in (None, SimpleNamespace(sample={}), SimpleNamespace(sample={"files": []})):
        assert ft.hold_out_validation(train, val, FinetuneConfig(target_fpr=0.5), nothing)[2] == 0
    assert warnings == []


def test_split_warns_when_reals_are_too_few_for_the_target_fpr(tmp_path, warnings):
    train = _sample(tmp_path / "train", [0, 1])
    val = _sample(tmp_path / "val", [0] * 18 + [1] * 40, name="v")  # many fakes: only reals count
    ft.hold_out_validation(train, val, FinetuneConfig(target_fpr=0.05))
    assert warnings == ["only 18 real validation image(s): a threshold at --target-fpr 0.05 needs at least 19 to "
                        "hold it (here a new real image is flagged with probability 0.0526 at best)"]
    warnings.clear()
    ft.hold_out_validation(train, val, FinetuneConfig(target_fpr=0.06))  # ceil(1 / 0.06 - 1) = 16
    assert warnings == []


# -- fit_temperature: the NLL minimiser over [0.05, 20], found by brute force -------------------------


def _nll(t, z, y):
    a = np.asarray(z, np.float64)[None, :] / np.atleast_1d(t)[:, None]
    return np.mean(np.logaddexp(0.0, a) - y * a, axis=1)


def _grid_minimiser(z, y, lo=0.05, hi=20.0):
    """Three ever finer log-spaced grids: the minimiser to ~1e-8 in log T."""
    a, b = math.log(lo), math.log(hi)
    for _ in range(3):
        grid = np.linspace(a, b, 2001)
        best = int(np.argmin(_nll(np.exp(grid), z, y)))
        step = grid[1] - grid[0]
        a, b = max(grid[best] - 2 * step, math.log(lo)), min(grid[best] + 2 * step, math.log(hi))
    return float(np.exp(grid[best]))


def _synthetic(scale, n=400, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n // 2)
    return (np.where(labels == 1, 1.0, -1.0) + rng.normal(size=n)) * scale, labels


@pytest.mark.parametrize("scale", [0.2, 0.3, 1.0, 4.0, 15.0, 40.0])
def test_temperature_is_the_nll_minimiser(scale):
    z, y = _synthetic(scale)
    best = _grid_minimiser(z, y)
    assert 0.06 < best < 19  # the minimum lies inside the bounds for these scales
    t = fit_temperature(z, y)
    assert t == pytest.approx(best, rel=1e-6)
    assert _nll(t, z, y)[0] <= _nll(best, z, y)[0] + 1e-12


def test_temperature_found_where_a_gradient_step_overshoots_the_lower_bound():
    # an under-confident detector (T* ~ 0.13): the former clamped L-BFGS returned the bound 0.05 here
    rng = np.random.default_rng(22)
    y = rng.integers(0, 2, 270)
    z = (np.where(y == 1, 0.957, -0.957) + rng.normal(size=270)) * 0.302
    best = _grid_minimiser(z, y)
    assert fit_temperature(z, y) == pytest.approx(best, rel=1e-6) and best > 0.1


def test_temperature_stays_within_its_bounds_and_survives_degenerate_logits():
    z, y = _synthetic(0.01)  # the minimiser is below 0.05
    assert _grid_minimiser(z, y, lo=1e-3) < 0.04
    assert fit_temperature(z, y) == pytest.approx(0.05, rel=1e-6)
    assert fit_temperature(-z * 100, y) == pytest.approx(20.0, rel=1e-6)  # anti-informative: flatten
    separable = np.where(y == 1, 2.0, -2.0)
    assert fit_temperature(separable, y) == pytest.approx(0.05, rel=1e-6)
    assert fit_temperature(z * 100, y, bounds=(0.5, 2.0)) == pytest.approx(_grid_minimiser(z * 100, y, 0.5, 2.0),
                                                                          rel=1e-6)
    assert fit_temperature(np.zeros(0), np.zeros(0)) == 1.0
    t = fit_temperature(np.zeros(10), np.repeat([0, 1], 5))  # every T gives the same NLL: any is right
    assert 0.05 <= t <= 20


def test_temperature_of_float32_logits_is_the_float64_answer():
    z, y = _synthetic(3.0)
    z32 = z.astype(np.float32)
    assert fit_temperature(z32, y) == pytest.approx(_grid_minimiser(z32.astype(np.float64), y), rel=1e-6)


# -- threshold_at_fpr: the conformal rank, against every candidate cut tried ---------------------------


def _conformal_cut(real, fpr):
    """The lowest float32 cut c with (reals flagged by c + 1) / (n + 1) <= fpr: a new real image,
    exchangeable with these, is flagged with probability at most fpr. None allowed (too few
    reals): just above the largest."""
    z = np.asarray(real, np.float32)
    n = len(z)
    candidates = [np.float32(-np.inf)] + [np.nextafter(v, np.float32(np.inf)) for v in np.unique(z)]
    allowed = [c for c in candidates if np.sum(z >= c) + 1 <= fpr * (n + 1) + 1e-9]
    return float(min(allowed)) if allowed else float(np.nextafter(z.max(), np.float32(np.inf)))


@pytest.mark.parametrize("seed", range(6))
def test_threshold_is_the_tightest_conformal_cut(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    ties = rng.integers(-4, 5, size=n).astype(np.float32)  # many equal logits
    spread = rng.normal(size=n).astype(np.float32)
    for real in (ties, spread):
        for fpr in (0.05, 0.1, 0.25, 0.5, 0.75):
            cut = threshold_at_fpr(real, fpr)
            flagged = np.sum(real >= np.float32(cut))
            assert (flagged + 1) / (n + 1) <= max(fpr + 1e-9, 1 / (n + 1))
            assert cut == _conformal_cut(real, fpr), (seed, fpr, real)


def test_threshold_holds_in_float32_for_float64_logits():
    real = np.array([0.1, 0.2, 0.3, 0.7, 1.1], np.float64)  # none is a float32 value
    for fpr in (0.2, 0.4, 0.5):
        cut = threshold_at_fpr(real, fpr)
        assert cut == _conformal_cut(real, fpr)
        assert np.sum(real.astype(np.float32) >= np.float32(cut)) + 1 <= fpr * 6 + 1e-9


def test_threshold_edges():
    assert threshold_at_fpr(np.array([0.5, 0.5, 0.5], np.float32), 0.4) == float(np.nextafter(np.float32(0.5),
                                                                                              np.float32(1)))
    assert threshold_at_fpr(np.array([3.0, -1.0], np.float32), 1.0) == -math.inf  # flag all
    assert threshold_at_fpr(np.zeros(0, np.float32), 0.05) == -math.inf  # nothing to flag wrongly
    assert threshold_at_fpr(np.array([2.0], np.float32), 0.99) > 2.0
    # 200 reals at 5 %: flag above the 10th largest (9 flagged), 10 / 201 expected; the in-sample
    # order statistic flagged 10 and had 11 / 201 = 5.5 %
    z = np.arange(200, dtype=np.float32)
    assert np.sum(z >= np.float32(threshold_at_fpr(z, 0.05))) == 9
    assert expected_fpr(200, 0.05) == pytest.approx(10 / 201) and expected_fpr(10, 0.05) == pytest.approx(1 / 11)


def test_held_out_false_positive_rate_is_at_most_the_target_in_expectation_and_not_far_below():
    """Split conformal: over validation sets, a new real image is flagged with probability
    m / (n + 1), m = floor(target (n + 1)): at most the target, within 1 / (n + 1) of it."""
    rng = np.random.default_rng(0)
    for n, target in ((19, 0.05), (50, 0.05), (200, 0.05), (99, 0.1)):
        rates = []
        for _ in range(4000):
            cut = threshold_at_fpr(rng.normal(size=n).astype(np.float32), target)
            rates.append(np.mean(rng.normal(size=50).astype(np.float32) >= np.float32(cut)))
        mean, se = float(np.mean(rates)), float(np.std(rates) / np.sqrt(len(rates)))
        assert mean == pytest.approx(expected_fpr(n, target), abs=4 * se)
        assert mean <= target + 4 * se and mean >= target - 1 / (n + 1) - 4 * se


def test_thresholds_come_from_the_real_logits_alone_and_keep_the_fakes_they_can():
    """The threshold is the conformal cut of the reals; the fakes decide nothing but the TPR (a
    cut fitted on every validation logit sat near the top of the fakes and caught ~10 % of them)."""
    rng = np.random.default_rng(1)
    real = rng.normal(0.0, 1.0, 400).astype(np.float32)
    fake = rng.normal(2.5, 1.0, 400).astype(np.float32)
    z = np.concatenate([real, fake])
    y = np.repeat([0, 1], 400)
    got = thresholds_for({"1:mean": z, "9:max": z + 1}, y, 0.05)
    record = got["1:mean"]
    assert record["threshold_logit"] == threshold_at_fpr(real, 0.05)
    assert record["val_fpr"] == np.mean(real >= np.float32(record["threshold_logit"])) == 19 / 400  # m - 1 of n
    assert record["val_tpr"] == np.mean(fake >= np.float32(record["threshold_logit"]))
    assert 0.6 < record["val_tpr"] < 0.9 and record["val_real"] == 400
    assert record["expected_fpr"] == pytest.approx(20 / 401)
    assert got["9:max"]["threshold_logit"] == threshold_at_fpr(real + 1, 0.05)  # each policy its own
    assert record["threshold"] == pytest.approx(1 / (1 + math.exp(-record["threshold_logit"] / record["temperature"])))


def test_in_distribution_validation_never_sharpens():
    z = np.concatenate([np.full(20, -3.0), np.full(20, 3.0)]).astype(np.float32)  # separable: T wants to shrink
    y = np.repeat([0, 1], 20)
    assert thresholds_for({"1:mean": z}, y, 0.05)["1:mean"]["temperature"] == pytest.approx(0.05)
    assert thresholds_for({"1:mean": z}, y, 0.05, temperature_floor=1.0)["1:mean"]["temperature"] == pytest.approx(1.0)
    assert fit_temperature(-z, y, (1.0, 20.0)) == pytest.approx(20.0)  # the floor never stops a flattening


# -- best epoch: AUC first, the validation loss where AUCs are within a standard error ---------------


def test_auc_standard_error_is_hanley_mcneil():
    assert auc_standard_error(0.9, 10, 10) == pytest.approx(0.0740, abs=1e-4)
    assert auc_standard_error(1.0, 50, 50) == 0.0 and auc_standard_error(0.9, 0, 5) == math.inf


def test_best_epoch_is_the_auc_unless_within_noise_then_the_loss():
    def e(auc, loss):
        return {"val_auc": auc, "val_loss": loss}

    assert better_epoch(e(0.5, 9.0), None, 10, 10)
    assert better_epoch(e(0.95, 9.0), e(0.80, 0.1), 10, 10)  # 0.15 above: AUC decides
    assert not better_epoch(e(0.70, 0.01), e(0.90, 0.5), 10, 10)  # 0.2 below: AUC decides
    assert better_epoch(e(1.0, 0.2), e(1.0, 0.3), 100, 100)  # saturated: the loss decides
    assert not better_epoch(e(1.0, 0.4), e(1.0, 0.3), 100, 100)
    assert better_epoch(e(0.88, 0.2), e(0.90, 0.3), 10, 10)  # within one standard error
    assert not better_epoch(e(math.nan, 0.1), e(0.6, 0.5), 10, 10)
    assert better_epoch(e(0.6, 0.9), e(math.nan, 0.5), 10, 10)


def test_thresholds_of_a_validation_set_missing_a_class_are_numbers_not_nan():
    """No reals: nothing can be flagged wrongly (threshold -inf, probability 0, FPR 0); no fakes:
    TPR 0. The detector file's schema takes numbers (mutmut: dropping the guards gave NaN)."""
    only_fakes = thresholds_for({"1:mean": np.array([1.0, 2.0], np.float32)}, np.array([1, 1]), 0.05)["1:mean"]
    assert only_fakes["threshold_logit"] == -math.inf and only_fakes["threshold"] == 0.0
    assert (only_fakes["val_fpr"], only_fakes["val_tpr"], only_fakes["val_real"]) == (0.0, 1.0, 0)
    only_reals = thresholds_for({"1:mean": np.arange(40, dtype=np.float32)}, np.zeros(40, int), 0.05)["1:mean"]
    assert only_reals["val_tpr"] == 0.0 and only_reals["val_fpr"] == 1 / 40  # m = floor(0.05 * 41) = 2: one flagged
