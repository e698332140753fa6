"""The detectors that ship with i2pscan (DESIGN §1.4): their names, their files, and their cards.

Plain data and paths, no torch: ``info`` and ``detectors`` read the files' headers alone.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from i2pscan.errors import EnvironmentFailure, InputError

SHIPPED = ("rine-2class", "univfd")
DEFAULT_DETECTOR = "rine-2class"


def shipped_path(name: str) -> Path:
    """The package-data file of a shipped detector."""
    with resources.as_file(resources.files("i2pscan.weights") / f"{name}.safetensors") as path:
        return Path(path)


def resolve(spec: str | os.PathLike) -> str:
    """A detector given as a shipped name or a file path -> the file to load.

    A name wins only when no file of that name exists here (``./univfd`` is always the file).
    Raises I2PError for neither.
    """
    spec = os.fspath(spec)
    if os.path.exists(spec) or os.path.sep in spec or spec.endswith(".safetensors"):
        return spec
    if spec in SHIPPED:
        path = shipped_path(spec)
        if not path.is_file():
            raise EnvironmentFailure(f"the shipped detector {spec} is missing from this installation ({path}); reinstall i2pscan")
        return str(path)
    raise InputError(f"no detector file {spec} and no shipped detector of that name (shipped: {', '.join(SHIPPED)}; "
                     f"`i2pscan detectors` lists them)")


def shipped() -> list[tuple[str, dict]]:
    """(name, metadata) of every shipped detector, read from the files' headers alone."""
    from i2pscan.model.tensorfile import read_meta

    return [(name, read_meta(shipped_path(name), ("detector",))[1]) for name in SHIPPED]


def shipped_name(path: str | os.PathLike) -> str | None:
    """The shipped name of a detector file, if it is one of the shipped files."""
    for name in SHIPPED:
        try:
            if os.path.samefile(path, shipped_path(name)):
                return name
        except OSError:
            continue
    return None


#: What ``i2pscan info NAME`` shows; the conversion script writes these into the files.
CARDS = {
    "rine-2class": {
        "name": "rine-2class",
        "title": "RINE, the authors' 2-class ProGAN checkpoint",
        "paper": "C. Koutlis, S. Papadopoulos, \"Leveraging Representations from Intermediate Encoder-blocks for "
                 "Synthetic Image Detection\", ECCV 2024 (arXiv 2402.19091)",
        "source": "https://github.com/mever-team/rine @ 9b7fd5857cc205d0412be6aeee0d7611b95bd620 : "
                  "ckpt/model_2class_trainable.pth",
        "licence": "Apache-2.0",
        "training_data": "ForenSynths (Wang et al. 2020) training set, ProGAN images of 2 LSUN classes "
                         "(car, cat) and their real counterparts",
        "reported": "accuracy and average precision on 20 test sets (ForenSynths GANs, UnivFD's diffusion "
                    "and DALL-E sets) and their mean, paper §4, RINE's rows for the 2-class ProGAN training; "
                    "its figures could not be read here, so none is quoted (the abstract states +10.6% "
                    "absolute over the previous best, averaged over the 20 sets); not reproduced here",
        "original_file": "model_2class_trainable.pth",
        "original_sha256": "680d301b6d191da85b9dabcebf42cd3df20c5c669fa8320c498f835d02bf5ccb",
    },
    "univfd": {
        "name": "univfd",
        "title": "UnivFD, the authors' linear probe on CLIP ViT-L/14",
        "paper": "U. Ojha, Y. Li, Y. J. Lee, \"Towards Universal Fake Image Detectors that Generalize Across "
                 "Generative Models\", CVPR 2023 (arXiv 2302.10174)",
        "source": "https://github.com/WisconsinAIVision/UniversalFakeDetect @ "
                  "76a0e3e60a8a06458707a625d269ba815a2e5919 : pretrained_weights/fc_weights.pth",
        "licence": "MIT",
        "training_data": "ForenSynths (Wang et al. 2020) training set, ProGAN images of 4 LSUN classes "
                         "(car, cat, chair, horse) and their real counterparts",
        "reported": "mean accuracy 81.38% over 19 test generators (paper Table 3, accuracy, row 'Ours LC', "
                    "the linear probe shipped here; the same mean appears in later papers' tables); mean AP "
                    "99.31 on the GANs and 95.00 on the diffusion and autoregressive models (§6.1, the AP "
                    "table being Table 2); not reproduced here",
        "original_file": "fc_weights.pth",
        "original_sha256": "477100745713bcc957beb2b40859536859b6483fd6301b3b9293151b194c7847",
    },
}
