"""Train-or-load the teacher, in a content-addressed cache shared by processes.

The cache key is a hash of everything that determines the teacher (data, split, architecture,
its training recipe and seed, the device type), so changing any of them trains a new one and
nothing stale is served. Whatever else its bits depend on is fixed here, not by the caller: the
teacher trains and predicts on :data:`TEACHER_THREADS` CPU threads whichever command asks for it
(the thread count changes the order of floating-point reductions, so a teacher trained by an
ablation on two threads differed from the one ``dgkd-train`` trained on one), and the cache
entry records the torch version, the threads and the device it was trained with: an entry from
another torch version is retrained, with one line saying so. A file lock makes concurrent
requests train it once; a checksum beside each weight file detects a corrupt or truncated cache
entry, which is then retrained. Within a process, the
teacher and its logits on the train and test splits are memoized, so a search's later trials pay
nothing for them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import Tensor, nn

from dgkd.data import Splits, uses_val_pool
from dgkd.io import atomic_write_bytes, atomic_write_json, cache_dir
from dgkd.loop import fit, predict
from dgkd.models import build_model, has_width
from dgkd.runtime import set_threads

__all__ = [
    "TEACHER_THREADS",
    "TeacherBundle",
    "TeacherError",
    "load_teacher",
    "teacher_config",
    "teacher_key",
]

log = logging.getLogger(__name__)

# Bump when the teacher's training code changes in a way that changes the weights it produces.
# 2: im2col cnn1d, fused optimizers; 3: fixed threads, device type in the key; 4: the training
# examples (whole set or carve) in the key instead of val_fraction and split_seed (MNIST-1D
# validation pools)
_FORMAT = 4
# CPU threads the teacher trains and predicts on, whatever the calling command's: one, so a
# teacher is the same on any machine and under any --workers (the thread count changes how
# matrix products split their sums, hence the bits).
TEACHER_THREADS = 1

_MEMO: dict[tuple, TeacherBundle] = {}


class TeacherError(RuntimeError):
    """The teacher checkpoint given by the user cannot be used."""


@dataclass(frozen=True)
class TeacherBundle:
    """A frozen teacher in eval mode with its logits on the train and test splits."""

    model: nn.Module
    train_logits: Tensor  # eval-mode logits on splits.train_x (un-augmented)
    test_logits: Tensor  # on splits.test_x (MNIST-1D: the test pool)
    published_test_logits: Tensor  # on splits.published_test_x (test_logits when the same)
    key: str
    source: str  # "trained", "cache", "memory" or the checkpoint path


def teacher_config(cfg):
    """The teacher's own training run: CE on the same data with the teacher's recipe fields.

    It shares the student's optimizer and schedule, with its own epochs, learning rate and seed;
    multi-step milestones past the teacher's last epoch are dropped.
    """
    milestones = tuple(m for m in cfg.milestones if m <= cfg.teacher_epochs)
    multistep_left = cfg.schedule != "multistep" or bool(milestones)
    return cfg.replace(
        method="ce",
        student=cfg.teacher,
        student_width=cfg.teacher_width,
        epochs=cfg.teacher_epochs,
        lr=cfg.teacher_lr or cfg.lr,
        seed=cfg.teacher_seed,
        milestones=milestones,
        schedule=cfg.schedule if multistep_left else "constant",
    )


# Fields of the teacher's TrainConfig that determine its weights (not where files live, not the
# device, not the distillation settings); which examples it trains on is _train_examples'.
_KEY_FIELDS = (
    "dataset", "student", "student_width", "epochs", "lr", "optimizer", "momentum",
    "weight_decay", "schedule", "milestones", "gamma", "batch_size", "seed", "amp",
)  # fmt: skip


def _train_examples(cfg) -> list:
    """Which training examples a run of ``cfg`` trains on: ``["all"]`` (MNIST-1D validating on
    its pool, or no validation carved) or the carve's fraction and seed. The validation and test
    splits are only evaluated, so they change no weights: not the pools' sizes, nor which
    fraction and seed a pool run would have carved with."""
    if uses_val_pool(cfg.dataset, cfg.val_pool) or cfg.val_fraction == 0:
        return ["all"]
    return [cfg.val_fraction, cfg.split_seed]


def _split_identity(cfg) -> tuple:
    """What decides the examples of the splits a bundle holds logits on (train and test)."""
    test = cfg.test_pool if cfg.dataset == "mnist1d" else 0  # image data ignore the pools
    return (cfg.dataset, *_train_examples(cfg), test)


def teacher_key(cfg) -> str:
    """Content hash of the teacher run derived from ``cfg`` (16 hex digits)."""
    tcfg = teacher_config(cfg)
    spec = {name: getattr(tcfg, name) for name in _KEY_FIELDS}
    spec["milestones"] = list(spec["milestones"])
    spec["train_examples"] = _train_examples(tcfg)
    spec["format"] = _FORMAT
    spec["device"] = _device_type(cfg.device)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _device_type(name: str) -> str:
    """The kind of device a run on ``name`` trains on (``auto`` resolved without raising)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name).type


@contextlib.contextmanager
def _teacher_threads() -> Iterator[None]:
    """Torch's intra-op threads at :data:`TEACHER_THREADS` for the block, restored after."""
    previous = set_threads(TEACHER_THREADS)
    try:
        yield
    finally:
        set_threads(previous)


def _provenance(device: torch.device) -> dict[str, Any]:
    """What a teacher's bits depend on beyond its key: recorded in, and checked against, the
    cache entry."""
    return {"torch": torch.__version__, "threads": TEACHER_THREADS, "device": device.type}


def load_teacher(
    cfg, splits: Splits, *, device: torch.device, progress: bool = False
) -> TeacherBundle:
    """The teacher for ``cfg``: from memory, the checkpoint, the cache, or trained now.

    Raises:
        TeacherError: ``cfg.teacher_checkpoint`` is missing, unreadable or does not fit.
    """
    key = cfg.teacher_checkpoint or teacher_key(cfg)
    # The logits depend on the splits and the architecture too, which a checkpoint path alone
    # does not fix (nor the key: the test pool changes no weights, but every test logit).
    memo_key = (key, *_split_identity(cfg), cfg.teacher, cfg.teacher_width, str(device))
    if memo_key in _MEMO:
        return dataclasses.replace(_MEMO[memo_key], source="memory")
    with _teacher_threads():
        bundle = _load(cfg, key, splits, device, progress)
    _MEMO[memo_key] = bundle
    return bundle


def _load(cfg, key: str, splits: Splits, device: torch.device, progress: bool) -> TeacherBundle:
    model = build_model(
        cfg.teacher,
        num_classes=splits.num_classes,
        input_shape=splits.input_shape,
        width=(cfg.teacher_width or None) if has_width(cfg.teacher) else None,
    )
    if cfg.teacher_checkpoint:
        path = Path(cfg.teacher_checkpoint)
        state = _read_checkpoint(path)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:  # missing, unexpected or mis-shaped parameters
            detail = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), "")
            raise TeacherError(
                f"teacher_checkpoint {path} does not fit teacher {cfg.teacher} "
                f"(teacher_width={cfg.teacher_width}): {detail}"
            ) from None
        source = cfg.teacher_checkpoint
    else:
        state, source = _cached_or_trained(cfg, key, splits, device, progress)
        model.load_state_dict(state)
    model = model.to(device).eval().requires_grad_(False)
    kw = {"device": device, "batch_size": cfg.eval_batch_size, "amp": cfg.amp}
    test_logits = predict(model, splits, splits.test_x, **kw)[0]
    published = splits.published_test_x
    return TeacherBundle(
        model=model,
        train_logits=predict(model, splits, splits.train_x, **kw)[0],
        test_logits=test_logits,
        published_test_logits=(
            test_logits if splits.published_is_test else predict(model, splits, published, **kw)[0]
        ),
        key=key,
        source=source,
    )


def _read_checkpoint(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise TeacherError(f"teacher_checkpoint {path} does not exist; give a state_dict file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise TeacherError(
            f"teacher_checkpoint {path} is not a readable torch file: {exc}"
        ) from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise TeacherError(f"teacher_checkpoint {path} holds no state_dict")
    return state


def _entry(key: str) -> tuple[Path, Path]:
    root = cache_dir() / "teachers"
    return root / f"{key}.pt", root / f"{key}.json"


def _load_cached(key: str, device: torch.device, *, say: bool = True) -> dict[str, Tensor] | None:
    """The cached state dict, or None when absent, corrupt (checksum or format mismatch) or
    trained under another torch version or thread count (each said in one line if ``say``)."""
    weights, meta = _entry(key)
    if not (weights.exists() and meta.exists()):
        return None
    try:
        info = json.loads(meta.read_text())
        now = _provenance(device)
        was = {k: info.get(k) for k in now}
        if was != now:
            diff = ", ".join(f"{k} {was[k]} (now {now[k]})" for k in now if was[k] != now[k])
            if say:
                log.warning("teacher %s in the cache was trained with %s; retraining it", key, diff)
            return None
        blob = weights.read_bytes()
        if hashlib.sha256(blob).hexdigest() != info["sha256"]:
            raise ValueError("checksum mismatch")
        return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable entry is retrained, never trusted
        if say:
            log.warning("teacher cache entry %s is corrupt (%s); retraining it", weights, exc)
        return None


def _cached_or_trained(cfg, key: str, splits: Splits, device: torch.device, progress: bool):
    state = _load_cached(key, device, say=False)  # said below, once, under the lock
    if state is not None:
        return state, "cache"
    weights, meta = _entry(key)
    weights.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(weights) + ".lock"):
        state = _load_cached(key, device)  # another process may have trained it meanwhile
        if state is not None:
            return state, "cache"
        tcfg = teacher_config(cfg)
        model, history = fit(tcfg, splits, teacher=None, teacher_train_logits=None, device=device,
                             progress=progress)  # fmt: skip
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        buf = io.BytesIO()
        torch.save(state, buf)
        blob = buf.getvalue()
        atomic_write_bytes(weights, blob)
        atomic_write_json(meta, {
            "sha256": hashlib.sha256(blob).hexdigest(),
            **_provenance(device),
            "config": tcfg.to_dict(),
            "val_acc": history[-1].get("val_acc"),
        })  # fmt: skip
        return state, "trained"
