"""The training loop of finetune: head warm-up on frozen features, epochs over augmented crops with
only the delta and the head learning, and validation through the scan's own logits."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn
from torch.nn.utils import parametrize

from i2pscan.progress import progress
from i2pscan.errors import InputError, TrainingFailed
from i2pscan.io.loader import ImageFiles, loader
from i2pscan.io.preprocess import Preprocess
from i2pscan.model.backbone import Backbone
from i2pscan.model.device import autocast
from i2pscan.model.head import DetectorHead
from i2pscan.model.inference import Model, file_logits
from i2pscan.model.policy import DEFAULT_POLICY
from i2pscan.model.sparse import SparseDelta
from i2pscan.train.augment import TrainTransform
from i2pscan.train.features import extract
from i2pscan.train.samples import LabelledSample


@dataclass
class RunState:
    epoch: int = 0
    step: int = 0
    best_auc: float = -1.0
    best_epoch: int = 0
    best: dict | None = None
    log: list[dict] = field(default_factory=list)
    validation: dict | None = None  # filled at the end: the saved detector's validation logits per policy


def snapshot(deltas: dict[str, SparseDelta], head: DetectorHead, val: tuple[np.ndarray, np.ndarray] | None) -> dict:
    """A copy of the tunable state, with the validation (logits, labels) it scored."""
    return {
        "deltas": {n: d.values.detach().clone() for n, d in deltas.items()},
        "head": {k: v.detach().clone() for k, v in head.state_dict().items()},
        "val_logits": None if val is None else np.array(val[0], copy=True),
        "val_labels": None if val is None else np.array(val[1], copy=True),
    }


class Trainer:
    def __init__(self, backbone, head, deltas, optimizer, train, val, view, config):
        self.backbone, self.head, self.deltas, self.optimizer = backbone, head, deltas, optimizer
        self.train, self.val, self.view, self.config = train, val, view, config
        self.layers = list(head.config.layers)
        preprocess = Preprocess.from_dict(backbone.preprocessing())
        self.transform = TrainTransform(preprocess, config.augment, config.seed)
        self.failures: dict[str, str] = {}
        self.penalty: dict[str, torch.Tensor] = {}  # {tensor: weight of each tuned entry's delta^2}

    def penalty_term(self) -> torch.Tensor | float:
        """The sensitivity-weighted penalty on the delta, sum_i w_i delta_i^2 (0 without weights)."""
        if not self.penalty:
            return 0.0
        return sum((w * self.deltas[n].values.float().square()).sum() for n, w in self.penalty.items())

    def _forward(self, pixels):
        # cached: a dense (``full``) parametrization is computed once per forward, not at every
        # read of the weight (MultiheadAttention reads in_proj_weight several times)
        with parametrize.cached(), autocast(self.backbone.device):
            return self.head(self.backbone.taps(pixels, self.layers, self.view))

    def train_epoch(self, epoch: int, run: RunState) -> float:
        c, device = self.config, self.backbone.device
        self.transform.epoch = epoch
        dataset = ImageFiles(self.train.paths, self.transform)
        batches = loader(dataset, c.batch_size, c.workers, pin_memory=device.type == "cuda",
                         shuffle_seed=c.seed * 100_003 + epoch)
        self.head.train()
        total, count, micro = 0.0, 0, 0
        self.optimizer.zero_grad(set_to_none=True)
        with progress(len(dataset), f"epoch {epoch + 1}/{c.epochs}") as bar:
            for batch in batches:
                for item in batch.items:
                    if item.info.error:
                        self.failures[self.train.paths[item.index]] = item.info.error
                if batch.pixels is not None:
                    labels = torch.as_tensor(self.train.labels[[batch.items[i].index for i in batch.ok]],
                                             dtype=torch.float32, device=device)
                    logits, embedding = self._forward(batch.pixels.to(device, non_blocking=True))
                    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)
                    if c.contrastive_weight > 0:
                        loss = loss + c.contrastive_weight * supervised_contrastive(
                            embedding, labels, c.contrastive_temperature)
                    if not torch.isfinite(loss):
                        raise TrainingFailed(f"training diverged (loss {loss.item()}) in epoch {epoch + 1}, after step "
                                             f"{run.step}: lower `lr_backbone` / `lr_head`")
                    ((loss + self.penalty_term()) / c.accumulate).backward()
                    micro += 1
                    total += loss.item() * len(labels)
                    count += len(labels)
                    if micro % c.accumulate == 0:
                        self._step(run)
                bar.advance(len(batch.items), postfix=f"loss {total / max(count, 1):.4f}")
                if c.max_steps is not None and run.step >= c.max_steps:
                    break
        if micro % c.accumulate:
            self._step(run)
        if count == 0:
            raise InputError("none of the training images could be decoded")
        return total / count

    def _step(self, run: RunState) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        run.step += 1

    @torch.no_grad()
    def validate(self) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
        logits, labels = predict(self.backbone, self.head, self.val, self.view, self.config.batch_size,
                                 self.config.workers)
        self.head.train()
        return validation_metrics(logits, labels), (logits, labels)


@torch.no_grad()
def predict(backbone, head, sample: LabelledSample, view: str, batch_size: int, workers: int,
            description: str = "validate", policy: str = DEFAULT_POLICY) -> tuple[np.ndarray, np.ndarray]:
    """Logits (as a scan with ``policy`` computes them: ``inference.file_logits``) and labels of
    the images in ``sample`` that decode."""
    preprocess = Preprocess.from_dict(backbone.preprocessing())
    logits, kept = file_logits(Model(backbone, head, "i2p", view), sample.paths, preprocess, (policy,), batch_size, workers,
                               description)
    return logits[policy], sample.labels[kept]


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil's (1982) standard error of an AUC from ``n_pos`` positives and ``n_neg`` negatives."""
    if not n_pos or not n_neg or math.isnan(auc):
        return math.inf
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def better_epoch(entry: dict, best: dict | None, n_fake: int, n_real: int) -> bool:
    """Whether epoch ``entry`` replaces the kept ``best``: a validation AUC more than one standard
    error above the best's wins, one more than a standard error below loses, and between the two
    (noise: on the training generators the AUC saturates from the first epoch) the lower
    validation loss wins. A NaN AUC never replaces a number; the first epoch is always kept."""
    if best is None:
        return True
    a, b = entry["val_auc"], best["val_auc"]
    if math.isnan(a) or math.isnan(b):
        return math.isnan(b) and not math.isnan(a)
    se = auc_standard_error(b, n_fake, n_real)
    if a > b + se or a < b - se:
        return a > b
    return entry["val_loss"] < best["val_loss"]


def validation_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    if not np.all(np.isfinite(logits)):
        raise TrainingFailed("validation scores are not finite: training diverged; lower `lr_backbone` / `lr_head`")
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.float64)
    both = len(set(labels.tolist())) == 2
    return {
        "val_auc": float(roc_auc_score(labels, logits)) if both else float("nan"),
        "val_ap": float(average_precision_score(labels, logits)) if both else float("nan"),
        "val_acc": float(np.mean((logits > 0) == labels)),
        "val_loss": float(nn.functional.binary_cross_entropy_with_logits(z, y)),
    }


@dataclass
class WarmupFeatures:
    """Frozen-backbone features of the training images: view 0 their centre crops, views 1.. crops
    under the training augmentation. The head warms up on all of them; the saliency probe fits the
    centre crops (deterministic: a probe fitted on augmented crops changed with the seed)."""

    features: dict[int, torch.Tensor]  # {block: [views * n, D]}, view-major
    labels: np.ndarray  # [views * n]
    views: int = 1

    def view(self, v: int) -> tuple[dict[int, torch.Tensor], np.ndarray]:
        """(features, labels) of view ``v`` alone."""
        n = len(self.labels) // self.views
        return {b: f[v * n:(v + 1) * n] for b, f in self.features.items()}, self.labels[v * n:(v + 1) * n]


WARMUP_VIEW_EPOCHS = -1  # augmentation "epochs" -1, -2, ...: never those of training (0, 1, ...)


def warmup_features(backbone: Backbone, train: LabelledSample, layers, view: str, config) -> WarmupFeatures:
    """Tap ``layers`` over the centre crop and ``config.warmup_views - 1`` augmented crops of every
    training image (images that fail to decode are left out of every view)."""
    preprocess = Preprocess.from_dict(backbone.preprocessing())
    chunks: dict[int, list[torch.Tensor]] = {b: [] for b in layers}
    labels, kept = [], None
    for v in range(config.warmup_views):
        transform = None
        if v:
            transform = TrainTransform(preprocess, config.augment, config.seed)
            transform.epoch = WARMUP_VIEW_EPOCHS - (v - 1)
        ex = extract(backbone, train.paths, list(layers), view, config.batch_size, config.workers,
                     description=f"warm-up: features ({v + 1}/{config.warmup_views})", transform=transform)
        if kept is not None and ex.kept != kept:
            raise InputError("the training images decoded differently between passes")
        kept = ex.kept
        for b in layers:
            chunks[b].append(ex.features[b])
        labels.append(train.labels[ex.kept])
    if not kept:
        raise InputError("none of the training images could be decoded")
    return WarmupFeatures({b: torch.cat(c) for b, c in chunks.items()}, np.concatenate(labels), config.warmup_views)


def warmup_steps(config, n: int) -> int:
    """The head's warm-up steps: ``config.warmup_steps``, or by default three passes over the
    ``n`` warm-up features (at least 100 steps), so that it scales with the data."""
    if config.warmup_steps is not None:
        return config.warmup_steps
    return max(100, 3 * math.ceil(n / config.batch_size))


def warm_up_head(head: DetectorHead, warm: WarmupFeatures, config, device: torch.device) -> None:
    """Head-only training on frozen features of augmented crops (DESIGN §1.2 step 2), so that the
    head that training starts from has already met the augmentation."""
    steps = warmup_steps(config, len(warm.labels))
    if steps < 1:
        return
    layers = list(head.config.layers)
    labels = torch.as_tensor(warm.labels, dtype=torch.float32)
    opt = torch.optim.AdamW(head.parameters(), lr=config.lr_head, weight_decay=config.head_weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    head.train()
    batches_per_epoch = math.ceil(len(labels) / config.batch_size)
    for step in range(steps):
        if step % batches_per_epoch == 0:
            order = torch.randperm(len(labels), generator=generator)
        i = (step % batches_per_epoch) * config.batch_size
        idx = order[i:i + config.batch_size]
        taps = {b: warm.features[b][idx].to(device) for b in layers}
        logits, _ = head(taps)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def supervised_contrastive(embedding: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SupCon loss (Khosla et al. 2020) on L2-normalised embeddings; 0 when no positive pairs exist."""
    z = nn.functional.normalize(embedding.float(), dim=1)
    sim = z @ z.T / temperature
    n = len(labels)
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    if not positives.any():
        return sim.sum() * 0.0
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    per_anchor = (log_prob.masked_fill(~positives, 0.0).sum(1)) / positives.sum(1).clamp(min=1)
    has_pos = positives.any(1)
    return -(per_anchor[has_pos]).mean()
