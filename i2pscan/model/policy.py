"""Crop policies: ``N:mean`` or ``N:max`` scores N crops of each image and combines their logits.

A detector has a threshold and a temperature fitted per policy; a scan names the one it uses.
Plain data, no torch: a metadata-only scan imports this and nothing heavier.
"""

from __future__ import annotations

from typing import Sequence

from i2pscan.errors import ConfigError

COMBINE = ("mean", "max")
DEFAULT_POLICY = "1:mean"
# what finetune fits by default: the centre crop, centre + corners (5), and the 3x3 grid (9), by mean and by max
STANDARD_POLICIES = ("1:mean", "5:mean", "5:max", "9:mean", "9:max")


def policy_key(crops: int, combine: str) -> str:
    """``1:mean``, ``9:max``, ...; one crop is the same under either combination."""
    return f"{crops}:{'mean' if crops == 1 else combine}"


def parse_policy(text: str) -> tuple[int, str]:
    """``"9:max"`` -> (9, "max"); raises I2PError for anything else."""
    crops, sep, combine = str(text).strip().partition(":")
    if not sep or not crops.isdigit() or int(crops) < 1 or combine not in COMBINE:
        raise ConfigError(f"crop policy {text!r} is not N:mean or N:max (N crops per image, e.g. 9:max)")
    return int(crops), combine


def normalise_policies(policies: Sequence[str]) -> tuple[str, ...]:
    """Sorted, unique policy keys, always with the centre crop ``1:mean``."""
    keys = {policy_key(*parse_policy(p)) for p in policies} | {DEFAULT_POLICY}
    return tuple(sorted(keys, key=lambda k: (int(k.split(":")[0]), k)))
