"""The one training loop used by central training, the Flower client and simulations.

The loop is deliberately agnostic of differential privacy: the privacy layer hands it
an Opacus-wrapped model, optimiser and Poisson data loader, and the same code runs.
The model's loss is a vector with one entry per image; the loop backpropagates its
mean (Opacus is configured with ``loss_reduction="mean"``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from endofed.shared.config import TrainConfig
from endofed.shared.data.collate import Batch
from endofed.shared.engine.optim import build_optimizer, build_scheduler
from endofed.shared.engine.rng import rng_state, set_rng_state
from endofed.shared.model import compute_loss, unwrap
from endofed.shared.model.weights import UnreadableFileError, load_torch_file
from endofed.shared.util.atomic import atomic_save

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"
RESUME_FORMAT = "endofed-resume"
RESUME_VERSION = 2
#: What a user is told when a resume state cannot be used.
START_OVER = "pass --no-resume to start over (the checkpoint is replaced) or choose another --out"


class ResumeError(ValueError):
    """A resume state that cannot be used: unreadable, or written for another setup.

    The message is one line naming the file, what differs and how to start over.
    """


def model_identity(model: nn.Module) -> dict[str, Any]:
    """The settings that shape the model's tensors, compared before a resume.

    ``preset``, ``image-size``, ``num-classes``, ``finetune`` (which tensors train),
    ``pretrained-body`` and the rest of the preset's architecture.
    """
    m = unwrap(model)
    arch = json.loads(json.dumps(m.config.to_dict()))  # tuples -> lists, plain data
    preset = arch.pop("name", None)
    size = arch.pop("image_size", None)
    return {
        "preset": preset,
        "image-size": size,
        "num-classes": int(m.num_classes),
        "finetune": m.finetune,
        "pretrained-body": bool(getattr(m, "pretrained_body", False)),
        "architecture": arch,
    }


def identity_differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``key <saved> (checkpoint) vs <now> (now)`` for every setting that differs."""
    diffs = []
    for key in sorted(set(saved) | set(now)):
        old, new = saved.get(key), now.get(key)
        if old == new:
            continue
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            diffs += [f"{key}.{d}" for d in identity_differences(old, new)]
        else:
            diffs.append(f"{key} {old!r} (checkpoint) vs {new!r} (now)")
    return diffs


def check_resume_identity(
    path: Path, state: Mapping[str, Any], identity: Mapping[str, Any]
) -> None:
    """Refuse ``state`` (read from ``path``) if it was written for another setup.

    Raises:
        ResumeError: one line naming ``path``, each differing setting and how to start
            over.
    """
    saved = state.get("identity")
    if saved is None:
        log.warning("%s: written by an older EndoFed (no setup recorded); resuming "
                    "without checking preset and image size", path)
        return
    diffs = identity_differences(saved, json.loads(json.dumps(dict(identity), default=str)))
    if diffs:
        raise ResumeError(
            f"resume state {path} was written for another setup ({'; '.join(diffs)}): "
            f"rerun with the checkpoint's settings, or {START_OVER}"
        )


def read_resume_state(path: Path) -> dict[str, Any]:
    """A resume state written by :meth:`Trainer.save_checkpoint` (``weights_only``).

    Raises:
        ResumeError: the file is truncated, damaged, holds objects other than tensors
            and plain data (nothing in it runs), or is no resume state; one line.
    """
    try:
        state = load_torch_file(path, what="resume state")
    except UnreadableFileError as exc:
        raise ResumeError(f"{exc}; {START_OVER}") from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise ResumeError(f"resume state {path}: not a training checkpoint; {START_OVER}")
    return state


@dataclass
class EpochStats:
    """Mean per-image loss terms and throughput of one epoch."""

    epoch: int
    loss: float = 0.0
    cls: float = 0.0
    reg: float = 0.0
    seg: float = 0.0
    images: int = 0
    steps: int = 0
    empty_batches: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass
class TrainResult:
    """What a call to :meth:`Trainer.fit` did."""

    epochs: list[EpochStats] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from_epoch: int = 0

    @property
    def num_examples(self) -> int:
        return sum(e.images for e in self.epochs)

    def metrics(self) -> dict[str, float]:
        """Flat scalars of the last epoch (for Flower replies and logs)."""
        if not self.epochs:
            return {"train-seconds": self.seconds}
        last = self.epochs[-1]
        return {
            "train-loss": last.loss,
            "train-loss-cls": last.cls,
            "train-loss-reg": last.reg,
            "train-loss-seg": last.seg,
            "train-images": float(self.num_examples),
            "train-seconds": self.seconds,
            "train-images-per-s": last.images_per_second,
        }


LossFn = Callable[[Mapping[str, torch.Tensor], Batch, torch.Tensor], Any]


def default_loss_fn(alpha_seg: float) -> LossFn:
    """The improved SSD's per-image loss (imported lazily: shared.model owns it)."""

    def loss_fn(outputs: Mapping[str, torch.Tensor], batch: Batch, anchors: torch.Tensor):
        return compute_loss(outputs, batch, anchors, alpha_seg=alpha_seg)

    return loss_fn


class Trainer:
    """Runs epochs over a loader; owns optimiser, schedule, AMP and checkpoints.

    Args:
        model: the improved SSD, or an Opacus ``GradSampleModule`` around it.
        config: engine settings (epochs, optimiser, schedule, clipping...).
        device: where to train; batches are moved there.
        optimizer: pass one (e.g. an Opacus ``DPOptimizer``) or let the trainer build it.
        total_steps: length of the LR schedule; defaults to epochs x len(loader).
        loss_fn: ``(outputs, batch, anchors) -> LossOutput`` with per-image vectors.
        on_empty_batch: called for a batch with zero images (Poisson sampling);
            the privacy layer uses it to keep its accounting and noise honest.
        progress: show a progress bar.
        loader_rng: keep the loader's generator (shuffle order) in the resume state.
            Off under DP: the Poisson sampler's generator is secret and must not be
            written to disk or replayed.
        identity: settings to add to the identity (see below).

    The identity (:func:`model_identity`, the optimiser and ``identity``, what the
    caller adds, e.g. the DP settings) is saved in every checkpoint; a resume whose
    identity differs is refused (:class:`ResumeError`). The checkpoint also holds the
    random-number state (:mod:`~endofed.shared.engine.rng`), so a resumed run
    continues exactly as the uninterrupted one would have.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        *,
        device: torch.device,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        loss_fn: LossFn | None = None,
        on_empty_batch: Callable[[], None] | None = None,
        progress: bool = True,
        loader_rng: bool = True,
        identity: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.device = device
        self.optimizer = optimizer or build_optimizer(model, config)
        self.scheduler = scheduler
        self.loss_fn = loss_fn or default_loss_fn(config.alpha_seg)
        self.on_empty_batch = on_empty_batch
        self.progress = progress
        self.use_amp = bool(config.amp and device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.global_step = 0
        self.loader_rng = loader_rng
        self.identity: dict[str, Any] = {
            **model_identity(model), "optimizer": config.optimizer, **dict(identity or {})
        }
        #: Saved with the checkpoint, not compared (e.g. the DP study a run belongs to).
        self.extra: dict[str, Any] = {}
        self._reference: list[tuple[nn.Parameter, torch.Tensor]] | None = None

    # -- FedProx -----------------------------------------------------------------
    def set_proximal_reference(self) -> None:
        """Freeze a copy of the current trainable weights as the FedProx anchor."""
        self._reference = [
            (p, p.detach().clone()) for p in self.model.parameters() if p.requires_grad
        ]

    def _proximal_term(self) -> torch.Tensor | None:
        mu = self.config.proximal_mu
        if mu <= 0 or not self._reference:
            return None
        total = sum(((p - ref) ** 2).sum() for p, ref in self._reference)
        return 0.5 * mu * total

    # -- training ----------------------------------------------------------------
    def fit(
        self,
        loader: Iterable[Batch],
        *,
        epochs: int | None = None,
        checkpoint_dir: Path | None = None,
        resume: bool = True,
        desc: str = "train",
        of_epochs: int | None = None,
        announce_resume: bool = True,
    ) -> TrainResult:
        """Train for ``epochs`` (default ``config.epochs``), checkpointing each epoch.

        With ``checkpoint_dir`` and ``resume``, an existing checkpoint there restores
        model, optimiser, schedule and epoch counter, and training continues after it.
        ``of_epochs`` is the total shown in the log ("epoch 4/10") when a caller fits
        one epoch per call; ``announce_resume=False`` keeps such a caller's per-epoch
        continuation out of the INFO log (it is not a resume after an interruption).
        """
        epochs = epochs or self.config.epochs
        steps_per_epoch = self.steps_per_epoch(loader)
        if self.scheduler is None:
            self.scheduler = build_scheduler(
                self.optimizer, self.config, epochs * max(1, steps_per_epoch)
            )
        start_epoch = 0
        ckpt = checkpoint_dir / CHECKPOINT_NAME if checkpoint_dir else None
        if ckpt is not None and resume and ckpt.exists():
            start_epoch = self.load_checkpoint(ckpt, loader=loader)
            log.log(logging.INFO if announce_resume else logging.DEBUG,
                    "resuming from %s after epoch %d", ckpt, start_epoch)
        result = TrainResult(resumed_from_epoch=start_epoch)
        t0 = time.perf_counter()
        for epoch in range(start_epoch, epochs):
            stats = self.train_epoch(loader, epoch=epoch, steps=steps_per_epoch, desc=desc)
            result.epochs.append(stats)
            log.info(
                "%s epoch %d/%d: loss %.4f (cls %.4f reg %.4f seg %.4f), %d images, %.1f img/s",
                desc, epoch + 1, of_epochs or epochs, stats.loss, stats.cls, stats.reg, stats.seg,
                stats.images, stats.images_per_second,
            )
            if ckpt is not None:
                self.save_checkpoint(ckpt, epoch=epoch + 1, loader=loader)
        result.seconds = time.perf_counter() - t0
        return result

    def steps_per_epoch(self, loader: Iterable[Batch]) -> int:
        """Steps one epoch over ``loader`` takes (``max-steps`` applied; 0 if unknown)."""
        try:
            n = len(loader)  # type: ignore[arg-type]
        except TypeError:
            n = 0
        if self.config.max_steps > 0:
            n = min(n, self.config.max_steps) if n else self.config.max_steps
        return n

    def train_epoch(
        self, loader: Iterable[Batch], *, epoch: int = 0, steps: int = 0, desc: str = "train"
    ) -> EpochStats:
        """One pass over ``loader`` (at most ``config.max_steps`` steps when set)."""
        self.model.train()
        stats = EpochStats(epoch=epoch)
        sums = torch.zeros(4, dtype=torch.float64)
        t0 = time.perf_counter()
        bar = tqdm(
            total=steps or None, desc=f"{desc} {epoch + 1}", disable=not self.progress,
            leave=False, unit="batch",
        )
        for i, batch in enumerate(loader):
            if self.config.max_steps and i >= self.config.max_steps:
                break
            n = len(batch)
            if n == 0:
                stats.empty_batches += 1
                if self.on_empty_batch is not None:
                    self.on_empty_batch()
                bar.update(1)
                continue
            parts = self.train_step(batch)
            sums += torch.tensor(parts, dtype=torch.float64) * n
            stats.images += n
            stats.steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{parts[0]:.3f}")
        bar.close()
        stats.seconds = time.perf_counter() - t0
        if stats.images:
            stats.loss, stats.cls, stats.reg, stats.seg = (sums / stats.images).tolist()
        return stats

    def train_step(self, batch: Batch) -> tuple[float, float, float, float]:
        """Forward, per-image loss, backward, (clip), step; returns mean loss terms."""
        batch = batch.to(self.device, non_blocking=True)
        anchors = unwrap(self.model).anchors.to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device.type, enabled=self.use_amp):
            outputs = self.model(batch.images)
            losses = self.loss_fn(outputs, batch, anchors)
        loss = losses.total.float().mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss at step {self.global_step}: {loss.item()}; "
                "lower the learning rate or check the input data"
            )
        prox = self._proximal_term()
        objective = loss + prox if prox is not None else loss
        self.scaler.scale(objective).backward()
        if self.config.grad_clip > 0 and not _is_dp_optimizer(self.optimizer):
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], self.config.grad_clip
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        self.global_step += 1
        return (
            float(loss.detach()),
            float(losses.cls.detach().float().mean()),
            float(losses.reg.detach().float().mean()),
            float(losses.seg.detach().float().mean()),
        )

    # -- checkpoints --------------------------------------------------------------
    def _loader_generator(self, loader: Iterable[Batch] | None) -> torch.Generator | None:
        if not self.loader_rng or loader is None:
            return None
        return getattr(loader, "generator", None)

    def save_checkpoint(
        self, path: Path, *, epoch: int, loader: Iterable[Batch] | None = None
    ) -> None:
        """Atomically write model, optimiser, schedule, epoch, identity and RNG state.

        Everything is tensors and plain data (it is read with ``weights_only=True``).
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "format": RESUME_FORMAT,
            "version": RESUME_VERSION,
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "global_step": self.global_step,
            "train_config": json.loads(json.dumps(dataclasses.asdict(self.config), default=str)),
            "identity": json.loads(json.dumps(self.identity, default=str)),
            "rng": rng_state(self._loader_generator(loader)),
            "extra": json.loads(json.dumps(self.extra, default=str)),
        }
        atomic_save(path, lambda tmp: torch.save(state, tmp))

    def check_identity(self, path: Path, state: Mapping[str, Any]) -> None:
        """Refuse a resume state written for another model or setup (:class:`ResumeError`)."""
        check_resume_identity(path, state, self.identity)

    def load_checkpoint(self, path: Path, *, loader: Iterable[Batch] | None = None) -> int:
        """Restore from ``path``; returns the number of finished epochs.

        Raises :class:`ResumeError` (one line naming ``path``) for a file that is
        unreadable or was written for another setup (:meth:`check_identity`).
        """
        state = read_resume_state(path)
        self.check_identity(path, state)
        try:
            unwrap(self.model).load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state.get("scheduler"):
                self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise ResumeError(
                f"resume state {path} does not fit this model or optimiser ({first}); "
                f"{START_OVER}"
            ) from None
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.global_step = int(state.get("global_step", 0))
        saved_train = state.get("train_config") or {}
        now_train = json.loads(json.dumps(dataclasses.asdict(self.config), default=str))
        changed = [f"{k} {saved_train[k]!r} -> {now_train[k]!r}" for k in sorted(now_train)
                   if k in saved_train and saved_train[k] != now_train[k]]
        if changed:
            log.warning("%s: resuming with changed training settings: %s", path,
                        ", ".join(changed))
        if state.get("rng") is not None:
            set_rng_state(state["rng"], self._loader_generator(loader))
        else:
            log.warning("%s: no random-number state recorded; the resumed run will not "
                        "repeat the uninterrupted one exactly", path)
        return int(state["epoch"])


def _is_dp_optimizer(optimizer: torch.optim.Optimizer) -> bool:
    # Opacus clips per sample; a second, global clip would distort its noise scale.
    return hasattr(optimizer, "noise_multiplier") and hasattr(optimizer, "max_grad_norm")
