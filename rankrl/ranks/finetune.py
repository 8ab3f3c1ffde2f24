"""The live LoRA fine-tuning run that rank environments step: advance k optimizer steps at a time, evaluate on a
held-out split, change per-module ranks in the middle, report costs, checkpoint and resume.

A plain PyTorch loop rather than ``transformers.Trainer``: the rank environment must stop after exactly k steps,
change ranks between two optimizer steps with the optimizer state in hand, and read the eval numbers back, none
of which ``Trainer.train()`` exposes without callbacks fighting its own loop. Models, adapters, heads and the
optimizer are stock (transformers + PEFT + ``torch.optim.AdamW``).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rankrl.atomic import atomic_write
from rankrl.models import LoadedModel, load_model
from rankrl.ranks.costs import allocation_cost
from rankrl.ranks.lora import RankedLoRA, parse_rank_spec
from rankrl.tasks import Task, load_task

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class FineTuneConfig:
    """One live LoRA fine-tuning run."""

    model: str = "minilm"
    """model alias (minilm, smollm2, tiny-bert, tiny-llama, tiny-qwen), local directory or hub id"""
    task: str = "default"
    """task: 'default' (embedded), 'arith', a local file/directory, or a datasets hub name"""
    ranks: str = "uniform:8"
    """initial ranks: 'uniform:R', 'kind:q=8,v=8,default=0' or a JSON file {module: rank}"""
    r_max: int = 8
    """directions allocated per module (the most any rank can grow to)"""
    alpha: float = 16.0
    """LoRA alpha: a module started at rank r has scaling alpha / r"""
    dropout: float = 0.0
    """LoRA dropout"""
    shrink: str = "truncate"
    """how a shrinking module keeps its update: 'truncate' (keeps weights + optimizer state) or 'svd'"""
    lr: float = 1e-3
    """AdamW learning rate of the adapters"""
    head_lr: float | None = None
    """learning rate of the trained classification head (default: lr)"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    warmup_steps: int = 0
    """linear warm-up steps; the rate then decays linearly to 0 at `steps`"""
    steps: int = 300
    """total optimizer steps of the run"""
    batch_size: int = 16
    """training batch size"""
    eval_batch_size: int = 64
    """evaluation batch size"""
    max_length: int = 64
    """tokens per example (longer inputs are truncated)"""
    max_train: int | None = None
    """use at most this many training rows (seeded subsample)"""
    max_eval: int | None = 500
    """evaluate on at most this many held-out rows"""
    eval_every: int = 50
    """evaluate every this many steps (0: only at the end)"""
    labels: str = "coarse"
    """TREC-style tasks: 'coarse' (6 classes) or 'fine' (50)"""
    precision_bits: int = 32
    """bits per adapter parameter on the wire (cost/bits)"""
    seed: int = 0
    """seed of initialisation, data order and dropout"""
    threads: int | None = None
    """torch CPU threads (default: torch's choice)"""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_batch_size", "max_length", "r_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or (self.head_lr is not None and self.head_lr <= 0):
            raise ValueError("learning rates must be > 0")
        if self.eval_every < 0 or self.warmup_steps < 0:
            raise ValueError("eval_every and warmup_steps must be >= 0")


@dataclass
class RunState:
    """Progress of a run (saved in checkpoints)."""

    step: int = 0
    epoch: int = 0
    position: int = 0
    last_eval: dict[str, float] = field(default_factory=dict)


class FineTuneRun:
    """A live LoRA fine-tune with per-module rank masks.

    Args:
        config: the run's configuration.
        loaded: an already loaded model (default: load ``config.model``); it is wrapped by PEFT in place.
        task: an already loaded task (default: load ``config.task``).
        tracker: a :class:`rankrl.tracking.Tracker`; metrics are also returned by each call.
        ranks: initial ranks (default: parse ``config.ranks``).
        adapter: ``adapter(base_model, targets) -> peft_model`` trains that PEFT model (e.g. AdaLoRA) instead of the
            rank-masked LoRA, on the same data, order, schedule and evaluation; the run then has no rank masks
            (``set_ranks``/``costs`` refuse). ``torch.manual_seed(config.seed)`` precedes it, as it precedes the LoRA.

    Attributes:
        step_hooks: callables ``hook(run, step)`` run after every optimizer and scheduler step, before the gradients
            are cleared (``step`` counts from 1), e.g. AdaLoRA's ``update_and_allocate``
            (:func:`rankrl.ranks.baselines.run_adalora`).
    """

    def __init__(
        self,
        config: FineTuneConfig,
        *,
        loaded: LoadedModel | None = None,
        task: Task | None = None,
        tracker: Any = None,
        ranks: Mapping[str, int] | None = None,
        adapter: Callable[[torch.nn.Module, list], torch.nn.Module] | None = None,
    ) -> None:
        self.config = config
        self.step_hooks: list[Callable[[FineTuneRun, int], None]] = []
        if config.threads:
            torch.set_num_threads(config.threads)
        self.task, self.loaded = load_run_inputs(config, task=task, loaded=loaded)
        self.tokenizer = self.loaded.tokenizer
        torch.manual_seed(config.seed)
        from rankrl.targets import find_target_modules

        targets = find_target_modules(self.loaded.model)
        self._targets = tuple(targets)
        if adapter is not None:
            self.lora = None
            self.model = adapter(self.loaded.model, targets)
        else:
            if ranks is None:
                ranks = parse_rank_spec(config.ranks, targets, config.r_max)
            self.lora = RankedLoRA(
                self.loaded.model,
                ranks,
                targets=targets,
                r_max=config.r_max,
                alpha=config.alpha,
                dropout=config.dropout,
                task_type="SEQ_CLS" if self.task.kind == "classification" else "CAUSAL_LM",
                shrink=config.shrink,
            )
            self.model = self.lora.peft_model
        self.tracker = tracker
        self.state = RunState()
        self._train = self._encode(self.task.splits["train"])
        eval_rows = self.task.splits["eval"]
        if config.max_eval is not None and len(eval_rows) > config.max_eval:
            pick = np.random.default_rng(config.seed).choice(len(eval_rows), config.max_eval, replace=False)
            eval_rows = tuple(eval_rows[i] for i in sorted(pick))
        self._eval = self._encode(eval_rows)
        self._test: dict[str, Any] | None = None  # encoded on the first evaluate(split='test')
        adapters = [p for n, p in self.model.named_parameters() if p.requires_grad and "lora_" in n]
        heads = [p for n, p in self.model.named_parameters() if p.requires_grad and "lora_" not in n]
        groups = [{"params": adapters, "lr": config.lr}]
        if heads:
            groups.append({"params": heads, "lr": config.head_lr or config.lr})
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self._order = self._epoch_order(0)

    # ------------------------------------------------------------------------------------------ data
    def _encode(self, rows: tuple) -> dict[str, torch.Tensor]:
        """Tokenise a split once, padded to its longest row (<= max_length)."""
        tok, L = self.tokenizer, self.config.max_length
        if self.task.kind == "classification":
            enc = tok(
                [r.text for r in rows], truncation=True, max_length=L, padding=True, return_tensors="pt"
            )
            enc["labels"] = torch.tensor([r.label for r in rows])
            return dict(enc)
        # causal LM: loss on the target tokens only (the prompt is context, labels -100)
        eos = tok.eos_token or ""
        prompts = tok([r.text for r in rows], add_special_tokens=False)["input_ids"]
        full = tok([r.text + r.target + eos for r in rows], add_special_tokens=False)["input_ids"]
        width = min(L, max(len(f) for f in full))
        ids = torch.full((len(rows), width), tok.pad_token_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100)
        for i, (p, f) in enumerate(zip(prompts, full, strict=True)):
            f = f[:width]
            ids[i, : len(f)] = torch.tensor(f)
            mask[i, : len(f)] = 1
            labels[i, len(p) : len(f)] = torch.tensor(f[len(p) :], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def _epoch_order(self, epoch: int) -> np.ndarray:
        # Data order is a pure function of (seed, epoch): a resumed run sees exactly the same batches.
        return np.random.default_rng([self.config.seed, epoch]).permutation(len(self._train["labels"]))

    def _next_batch(self) -> dict[str, torch.Tensor]:
        bs = self.config.batch_size
        if self.state.position + bs > len(self._order):
            self.state.epoch += 1
            self.state.position = 0
            self._order = self._epoch_order(self.state.epoch)
        idx = torch.as_tensor(self._order[self.state.position : self.state.position + bs])
        self.state.position += bs
        batch = {k: v[idx] for k, v in self._train.items()}
        return _trim(batch)

    def _lr_factor(self, step: int) -> float:
        c = self.config
        if step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        return max(0.0, (c.steps - step) / max(c.steps - c.warmup_steps, 1))

    # ----------------------------------------------------------------------------------------- train
    def advance(self, k: int, progress: Any = None, stop: Any = ()) -> dict[str, float]:
        """Train ``k`` optimizer steps (fewer if the run ends, or once ``stop`` is truthy: a
        :class:`rankrl.interrupt.StopRequest` is polled between steps). Returns ``train/loss`` (mean) and
        ``train/lr``; nothing is logged when ``stop`` prevented every step.

        A non-finite loss stops early and is reported as ``train/loss = nan`` with ``train/nan = 1``.
        """
        self.model.train()
        losses = []
        for _ in range(k):
            if self.finished or stop:
                break
            loss = self.model(**self._next_batch()).loss
            if not torch.isfinite(loss):
                self.optimizer.zero_grad(set_to_none=True)
                self.state.step += 1
                out = {"train/loss": math.nan, "train/nan": 1.0}
                self.log(out)
                return out
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            for hook in self.step_hooks:
                hook(self, self.state.step + 1)
            self.optimizer.zero_grad(set_to_none=True)
            self.state.step += 1
            losses.append(loss.item())
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        out = {
            "train/loss": float(np.mean(losses)) if losses else math.nan,
            "train/lr": self.scheduler.get_last_lr()[0],
        }
        if losses or not stop:
            self.log(out)
        return out

    @property
    def finished(self) -> bool:
        return self.state.step >= self.config.steps

    @torch.no_grad()
    def evaluate(self, split: str = "eval") -> dict[str, float]:
        """Held-out ``quality/eval_loss`` and ``quality/accuracy`` (classification: label accuracy; causal LM:
        accuracy of the target tokens under teacher forcing).

        ``split="test"`` scores the task's test split instead (every row, encoded on first use) and returns
        ``quality/test_loss`` and ``quality/test_accuracy``; it neither logs nor becomes ``state.last_eval``, so
        nothing a policy or a tuner reads during the run ever sees the test rows.

        Raises:
            ValueError: ``split`` is not ``eval``/``test``, or the task has no test split.
        """
        if split == "eval":
            data = self._eval
        elif split == "test":
            if not self.task.splits.get("test"):
                raise ValueError(f"task {self.task.name!r} has no test split: give a task directory with a test file "
                                 "(e.g. TREC.test, *.test, test.jsonl) or leave out --test")  # fmt: skip
            if self._test is None:
                self._test = self._encode(self.task.splits["test"])
            data = self._test
        else:
            raise ValueError(f"split must be 'eval' or 'test', got {split!r}")
        self.model.eval()
        n = len(data["labels"])
        total_loss, correct, count = 0.0, 0, 0
        for start in range(0, n, self.config.eval_batch_size):
            batch = _trim({k: v[start : start + self.config.eval_batch_size] for k, v in data.items()})
            out = self.model(**batch)
            labels = batch["labels"]
            if self.task.kind == "classification":
                total_loss += out.loss.item() * len(labels)
                correct += (out.logits.argmax(-1) == labels).sum().item()
                count += len(labels)
            else:
                shift_logits, shift_labels = out.logits[:, :-1], labels[:, 1:]
                keep = shift_labels != -100
                tokens = keep.sum().item()
                total_loss += out.loss.item() * tokens
                correct += ((shift_logits.argmax(-1) == shift_labels) & keep).sum().item()
                count += tokens
        if split == "test":
            return {"quality/test_loss": total_loss / max(count, 1), "quality/test_accuracy": correct / max(count, 1)}
        metrics = {
            "quality/eval_loss": total_loss / max(count, 1),
            "quality/accuracy": correct / max(count, 1),
        }
        self.state.last_eval = metrics
        self.log(metrics)
        return metrics

    # ------------------------------------------------------------------------------ remote fine-tuning
    def snapshot(self) -> dict[str, torch.Tensor]:
        """A copy of the trainable weights (adapters and trained head): what a server holds at the start of a round
        of remote fine-tuning, for :meth:`restore` when the round's update never arrives (LoRARankEnv's
        ``deadline_s``)."""
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def restore(self, snapshot: Mapping[str, torch.Tensor]) -> None:
        """Put the trainable weights back to a :meth:`snapshot` (every one of them, or ``KeyError``). Only the weights:
        the step count, lr schedule, data position and the optimizer's moments go on (the steps were taken, on the
        client, and time passed), and the rank masks stay as they are (ranks are set before a round's snapshot)."""
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if differ := sorted(set(params) ^ set(snapshot)):
            raise KeyError(f"the snapshot does not match this run's trainable weights (e.g. {differ[0]})")
        with torch.no_grad():
            for name, value in snapshot.items():
                params[name].copy_(value)

    # ----------------------------------------------------------------------------------------- ranks
    def set_ranks(self, ranks: Mapping[str, int]) -> dict[str, float]:
        """Re-allocate ranks mid-run (kept directions keep weights and optimizer state); returns the new costs."""
        self._masked().set_ranks(ranks, self.optimizer)
        return self.costs(log=True)

    @property
    def ranks(self) -> dict[str, int]:
        return dict(self._masked().ranks)

    @property
    def targets(self):
        return self.lora.targets if self.lora is not None else self._targets

    def _masked(self) -> RankedLoRA:
        if self.lora is None:
            raise ValueError("this run trains its own adapter (adapter=...), not rank-masked LoRA: it has no ranks")
        return self.lora

    def costs(self, log: bool = False) -> dict[str, float]:
        """``cost/*`` and ``rank/*`` metrics of the active allocation (per token FLOPs, params, bits)."""
        lora = self._masked()
        cost = allocation_cost(lora.targets, lora.ranks, precision_bits=self.config.precision_bits)
        metrics = cost.as_metrics()
        for i, t in enumerate(lora.targets):
            metrics[f"rank/layer_{i}"] = lora.ranks[t.name]
        if log:
            self.log(metrics)
        return metrics

    def features(self, n_batches: int = 4) -> Any:
        """Per-module feature rows (shape, spectrum, gradient sensitivity on ``n_batches`` real training batches),
        cached under :func:`rankrl.models.cache_dir` by :func:`features_cache_key` at step 0 (later the trained
        adapters change the gradients: measured, not cached); see :mod:`rankrl.ranks.features`."""
        from rankrl.models import cache_dir
        from rankrl.ranks.features import compute_features

        key = features_cache_key(self.config, self.loaded.model_id, self.task.name, len(self.task.splits["train"]),
                                 n_batches)
        cache = dict(cache_dir=cache_dir() / "features", cache_key=key) if self.state.step == 0 else {}
        return compute_features(self.model.base_model.model, self.targets, list(batches(self, n_batches)),
                                max_batches=n_batches, **cache)  # fmt: skip

    def log(self, metrics: Mapping[str, float]) -> None:
        if self.tracker is not None:
            self.tracker.log(metrics, step=self.state.step)

    # ------------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write everything needed to continue bit-for-bit: trainable weights, ranks/scalings, optimizer,
        scheduler, data position and RNG states. Atomic (temp file + rename): a crash never leaves half a file."""
        path = Path(path)
        if path.suffix != ".pt":
            path = path / CHECKPOINT
        path.parent.mkdir(parents=True, exist_ok=True)
        trainable = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        payload = {
            "config": asdict(self.config),
            "state": asdict(self.state),
            "ranks": self.lora.ranks,
            "scaling": self.lora.scaling,
            "weights": trainable,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        return atomic_write(path, lambda tmp: torch.save(payload, tmp))

    @classmethod
    def resume(cls, path: str | os.PathLike, *, tracker: Any = None, config: FineTuneConfig | None = None,
               **kwargs: Any) -> FineTuneRun:  # fmt: skip
        """Rebuild a run from :meth:`save_checkpoint` and continue where it stopped (``config``: the checkpoint's,
        or one the caller checked against it with :func:`checkpoint_config` and
        :func:`rankrl.resume.check_same_settings`). Loads with ``weights_only=True``: nothing is unpickled."""
        path = Path(path)
        if path.is_dir():
            path = path / CHECKPOINT
        if not path.exists():
            raise FileNotFoundError(
                f"no checkpoint at {path}; start a run first or point --resume at its directory"
            )
        payload = torch.load(path, weights_only=True)  # tensors and plain data only: loading runs no code
        config = config or FineTuneConfig(**payload["config"])
        run = cls(config, tracker=tracker, ranks=payload["ranks"], **kwargs)
        run.lora._scaling.update(payload["scaling"])
        run.lora.set_ranks(payload["ranks"])  # the forward reads the restored scalings at call time
        params = dict(run.model.named_parameters())
        with torch.no_grad():
            for name, value in payload["weights"].items():
                params[name].copy_(value)
        run.optimizer.load_state_dict(payload["optimizer"])
        run.scheduler.load_state_dict(payload["scheduler"])
        run.state = RunState(**payload["state"])
        run._order = run._epoch_order(run.state.epoch)
        torch.set_rng_state(payload["torch_rng"])
        return run


#: run settings a resumed fine-tune may change (they change neither the weights nor what is measured)
RESUMABLE_CHANGES = frozenset({"threads", "eval_every", "eval_batch_size"})


def checkpoint_config(path: str | os.PathLike) -> dict[str, Any]:
    """The run config a :meth:`FineTuneRun.save_checkpoint` file holds (``weights_only=True``)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    return dict(torch.load(path, weights_only=True)["config"])


def features_cache_key(config: FineTuneConfig, model_id: str, task_name: str, n_train: int, n_batches: int) -> str:
    """The feature-cache key of a run: everything that changes the feature rows. The model (and its head, seeded),
    the task, its label granularity (TREC-6 and TREC-50 differ) and size, and the batches (``n_batches`` x
    ``batch_size`` rows tokenised to ``max_length``, drawn by ``seed``). The adapter is not in it: at step 0 every
    ``lora_B`` is zero, so it changes no gradient (later in a run :meth:`FineTuneRun.features` does not cache)."""
    import json

    c = config
    return json.dumps({"v": 2, "model": model_id, "task": task_name, "labels": c.labels, "n_train": n_train,
                       "max_train": c.max_train, "n_batches": n_batches, "batch_size": c.batch_size,
                       "max_length": c.max_length, "seed": c.seed}, sort_keys=True)  # fmt: skip


def _trim(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut padding columns that no row of this batch uses (rows were padded to the split's longest)."""
    mask = batch.get("attention_mask")
    if mask is None:
        return batch
    width = int(mask.sum(1).max())
    if width == mask.shape[1]:
        return batch
    # right padding only: the tokenizers used here pad on the right
    return {k: (v[:, :width] if v.dim() == 2 else v) for k, v in batch.items()}


def batches(run: FineTuneRun, n: int) -> Iterator[dict[str, torch.Tensor]]:
    """``n`` training batches in the run's own format without advancing it (for gradient features)."""
    order = np.random.default_rng([run.config.seed, 10_007]).permutation(len(run._train["labels"]))
    bs = run.config.batch_size
    for i in range(n):
        idx = torch.as_tensor(order[i * bs : (i + 1) * bs])
        if len(idx) == 0:
            return
        yield _trim({k: v[idx] for k, v in run._train.items()})


def copy_run_dir(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy a run directory (for branching a run from a checkpoint)."""
    shutil.copytree(src, dst, dirs_exist_ok=True)


# ------------------------------------------------------------------------------------------ building runs
def episode_run() -> FineTuneConfig:
    """The short run rank policies are trained and compared on (``train-policy`` episodes, ``baselines``): 40 steps
    at a higher learning rate, 128 held-out rows, evaluated only when asked."""
    return FineTuneConfig(steps=40, lr=3e-3, max_eval=128, eval_every=0)


def load_run_inputs(config: FineTuneConfig, *, task: Task | None = None,
                    loaded: LoadedModel | None = None) -> tuple[Task, LoadedModel]:  # fmt: skip
    """The task and freshly loaded model a run of ``config`` trains (either may be given already loaded): the one
    place that turns a run config into data and weights, so every run of the same config sees the same ones."""
    task = task or load_task(config.task, seed=config.seed, labels=config.labels, max_train=config.max_train)
    loaded = loaded or load_model(config.model, task_kind=task.kind, num_labels=max(task.num_labels, 2),
                                  seed=config.seed)  # fmt: skip
    return task, loaded


# ---------------------------------------------------------------------------------------------- live probes
def new_live_run(run_config: Any, ranks: Mapping[str, int] | None = None, *, task: Any = None,
                 loaded: Any = None) -> Any:  # fmt: skip
    """A :class:`FineTuneRun` started with every rank 0 and then set to ``ranks`` (default: all 0), so that a
    module starts exactly as it does in LoRARankEnv (scaling ``alpha / r`` of its first non-zero rank)."""
    from rankrl.targets import find_target_modules

    c = run_config
    task, loaded = load_run_inputs(c, task=task, loaded=loaded)
    zeros = {t.name: 0 for t in find_target_modules(loaded.model)}
    run = FineTuneRun(c, loaded=loaded, task=task, ranks=zeros)
    if ranks is not None:
        run.set_ranks(ranks)
    return run


def model_features(model: str, task: str | None, *, r_max: int, seed: int = 0, n_batches: int = 4,
                   batch_size: int = 16, threads: int | None = None) -> tuple[tuple, Any, Any]:  # fmt: skip
    """``(targets, LayerFeatures, task)`` of a model: with a task, from the same live run the env starts
    (:func:`new_live_run` + ``run.features``, cached); ``task=None`` gives the
    neutral gradient columns (shape and spectrum only) and ``task`` None."""
    if task is None:
        from rankrl.ranks.features import compute_features
        from rankrl.targets import find_target_modules

        loaded = load_model(model, seed=seed)
        targets = tuple(find_target_modules(loaded.model))
        return targets, compute_features(loaded.model, targets, None), None
    cfg = FineTuneConfig(model=model, task=task, r_max=r_max, seed=seed, batch_size=batch_size, threads=threads)
    run = new_live_run(cfg)
    return tuple(run.targets), run.features(n_batches), run.task
