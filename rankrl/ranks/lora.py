"""Max-rank LoRA with live per-module ranks, and export of the active ranks as a plain PEFT adapter.

peft#825: PEFT cannot resize a LoRA layer in place, and re-creating layers would throw away learned weights and
optimizer state. So every target gets a LoRA at ``r_max`` once, and each adapted module's forward is replaced by
one that computes only its active directions: ``base(x) + scaling * (dropout(x) @ A[:r].T) @ B[:, :r].T`` (slices
of the ``r_max`` weights, no 0/1 mask), and a rank-0 module runs its base layer alone (the adapter is skipped:
no matmul, no activation kept for backward). Compute and activation memory therefore follow the rank
(``benchmarks/rank_compute.py`` measures it); the parameters and their optimizer state stay ``r_max``-sized so a
rank change keeps them. Changing a rank mid-training:

* **kept** directions keep their weights and optimizer state untouched;
* **dropped** directions are reset to a fresh LoRA init (``A`` row re-drawn, ``B`` column zero, optimizer
  moments zero), so growing a module later starts them exactly like a new LoRA rank (zero contribution);
* rank 0 switches the module off (its adapter contributes nothing; it is left out of the export).

Scaling: a module created at rank ``r`` uses PEFT's ``alpha / r``. When its rank changes the module keeps its
scaling (the kept directions mean the same thing before and after); the export records it as
``alpha_pattern[name] = scaling * r`` so the reloaded adapter reproduces the masked model exactly.
With ``shrink="svd"`` a shrinking module is re-projected onto the top singular directions of its current
``B @ A`` (LoRA-Squeeze style): less is lost, but the kept directions change, so their optimizer state resets.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rankrl.atomic import replace_dir
from rankrl.targets import TargetModule, find_target_modules

ADAPTER = "default"
SHRINK_MODES = ("truncate", "svd")


class RankPatternError(ValueError):
    """A rank pattern key matches no module, or more than the one it was meant for (peft#3582)."""


@dataclass(frozen=True)
class RankChange:
    """What :meth:`RankedLoRA.set_ranks` did.

    Attributes:
        grown: modules whose rank went up, name -> (old, new).
        shrunk: modules whose rank went down, name -> (old, new).
    """

    grown: dict[str, tuple[int, int]]
    shrunk: dict[str, tuple[int, int]]


class RankedLoRA:
    """A PEFT LoRA model at ``r_max`` whose per-module active ranks can change during training.

    Args:
        model: the base ``transformers`` model (not yet wrapped by PEFT).
        ranks: initial rank per target name (0 = off); every target needs an entry.
        targets: modules to adapt (default: :func:`rankrl.targets.find_target_modules`).
        r_max: directions allocated per module; ranks can never exceed it.
        alpha: LoRA alpha; a module created at rank ``r`` has scaling ``alpha / r``.
        dropout: LoRA dropout.
        task_type: PEFT task type (``"SEQ_CLS"`` trains the classification head in full, ``"CAUSAL_LM"``).
        shrink: ``"truncate"`` (keep the first directions) or ``"svd"`` (re-project; see module docstring).
    """

    def __init__(
        self,
        model: nn.Module,
        ranks: Mapping[str, int] | None = None,
        *,
        targets: Sequence[TargetModule] | None = None,
        r_max: int = 16,
        alpha: float = 16.0,
        dropout: float = 0.0,
        task_type: str = "SEQ_CLS",
        shrink: str = "truncate",
    ) -> None:
        from peft import LoraConfig, get_peft_model

        if r_max < 1:
            raise ValueError(f"r_max must be >= 1, got {r_max}")
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if shrink not in SHRINK_MODES:
            raise ValueError(f"shrink must be one of {SHRINK_MODES}, got {shrink!r}")
        self.targets: tuple[TargetModule, ...] = tuple(targets or find_target_modules(model))
        too_small = [t.name for t in self.targets if t.max_rank < r_max]
        if too_small:
            raise ValueError(
                f"r_max={r_max} exceeds min(in, out) of {len(too_small)} module(s), e.g. {too_small[0]}; "
                f"lower r_max to <= {min(t.max_rank for t in self.targets)}"
            )
        self.r_max, self.alpha, self.shrink, self.task_type = r_max, float(alpha), shrink, task_type
        self.base_r = r_max
        config = LoraConfig(
            r=r_max,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=[t.name for t in self.targets],
            task_type=task_type,
        )
        self.peft_model = get_peft_model(model, config)
        self.lora_dropout = dropout
        self._layers = {t.name: self.peft_model.base_model.model.get_submodule(t.name) for t in self.targets}
        self._scaling: dict[str, float] = {}
        self.ranks: dict[str, int] = {t.name: 0 for t in self.targets}
        for name, layer in self._layers.items():
            layer.forward = _ranked_forward(layer, self, name)  # instance attribute: nn.Module.__call__ uses it
        self.set_ranks(ranks if ranks is not None else {t.name: r_max for t in self.targets})

    # ------------------------------------------------------------------------------------------ ranks
    def validate_ranks(self, ranks: Mapping[str, int]) -> dict[str, int]:
        """Check ``ranks`` covers every target with an integer in ``[0, r_max]``; return a clean copy."""
        names = {t.name for t in self.targets}
        unknown = sorted(set(ranks) - names)
        if unknown:
            raise ValueError(
                f"ranks name unknown module(s) {unknown[:3]}; valid names look like {sorted(names)[:2]}"
            )
        missing = sorted(names - set(ranks))
        if missing:
            raise ValueError(
                f"ranks has no entry for {missing[:3]}; give every target a rank (0 switches it off)"
            )
        clean = {}
        for name, r in ranks.items():
            if isinstance(r, bool) or int(r) != r:
                raise TypeError(f"rank of {name} must be an integer, got {r!r}")
            if not 0 <= int(r) <= self.r_max:
                raise ValueError(
                    f"rank of {name} is {r}; allowed 0..r_max={self.r_max} (raise r_max to allow it)"
                )
            clean[name] = int(r)
        return clean

    @torch.no_grad()
    def set_ranks(
        self, ranks: Mapping[str, int], optimizer: torch.optim.Optimizer | None = None
    ) -> RankChange:
        """Change the active ranks in place; learned weights and optimizer state of kept directions survive.

        Args:
            ranks: new rank per target name.
            optimizer: the optimizer training the adapters; the moments of dropped directions are zeroed.
        """
        new = self.validate_ranks(ranks)
        grown, shrunk = {}, {}
        for name, r_new in new.items():
            r_old = self.ranks[name]
            if r_new == r_old:
                continue
            layer = self._layers[name]
            A, B = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
            if r_new < r_old:
                shrunk[name] = (r_old, r_new)
                if self.shrink == "svd" and r_new > 0:
                    self._svd_reproject(name, r_old, r_new, optimizer)
                self._reset_directions(A, B, range(r_new, self.r_max), optimizer)
            else:
                grown[name] = (r_old, r_new)
                if r_old == 0:  # a module switched (back) on behaves like a fresh PEFT LoRA of rank r_new
                    self._scaling[name] = self.alpha / r_new
            if r_new == 0:
                self._scaling.pop(name, None)
            self.ranks[name] = r_new
        return RankChange(grown, shrunk)

    def _svd_reproject(self, name: str, r_old: int, r_new: int, optimizer: Any) -> None:
        layer = self._layers[name]
        A, B = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
        delta = B[:, :r_old] @ A[:r_old]  # the module's current update / its (unchanged) scaling
        U, S, Vh = torch.linalg.svd(delta.float(), full_matrices=False)
        root = S[:r_new].sqrt()
        B[:, :r_new] = (U[:, :r_new] * root).to(B.dtype)
        A[:r_new] = (root[:, None] * Vh[:r_new]).to(A.dtype)
        _zero_state(optimizer, A, (slice(0, r_new),))
        _zero_state(optimizer, B, (slice(None), slice(0, r_new)))

    def _reset_directions(self, A: nn.Parameter, B: nn.Parameter, idx: range, optimizer: Any) -> None:
        if len(idx) == 0:
            return
        rows = slice(idx.start, idx.stop)
        fresh = torch.empty_like(A[rows])
        nn.init.kaiming_uniform_(fresh, a=math.sqrt(5))  # PEFT's init of lora_A
        A[rows] = fresh
        B[:, rows] = 0
        for p, index in ((A, (rows,)), (B, (slice(None), rows))):
            if p.grad is not None:
                p.grad[index] = 0
            _zero_state(optimizer, p, index)

    @property
    def scaling(self) -> dict[str, float]:
        """Effective LoRA scaling per active module."""
        return dict(self._scaling)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.peft_model.parameters() if p.requires_grad]

    # ----------------------------------------------------------------------------------------- export
    def lora_config(self) -> Any:
        """The active ranks as a plain PEFT ``LoraConfig(r, lora_alpha, rank_pattern, alpha_pattern)``."""
        active = {n: r for n, r in self.ranks.items() if r > 0}
        base = self.peft_model.peft_config[ADAPTER]
        return ranks_to_lora_config(active, alpha={n: self._scaling[n] * r for n, r in active.items()},
                                    dropout=self.lora_dropout, task_type=self.task_type, what="export",
                                    modules_to_save=list(base.modules_to_save) if base.modules_to_save else None)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """PEFT-named adapter weights with every module cut to its active rank (rank-0 modules left out)."""
        from peft import get_peft_model_state_dict

        out = {}
        for key, value in get_peft_model_state_dict(self.peft_model, adapter_name=ADAPTER).items():
            m = re.match(r"base_model\.model\.(.+)\.lora_([AB])\.weight$", key)
            if m is None:  # modules_to_save (classification head) and anything else PEFT keeps
                out[key] = value.detach().clone()
                continue
            r = self.ranks.get(m.group(1), 0)
            if r == 0:
                continue
            out[key] = (value[:r] if m.group(2) == "A" else value[:, :r]).detach().clone().contiguous()
        return out

    def export(self, out_dir: str | os.PathLike) -> Path:
        """Write a PEFT adapter directory (``adapter_config.json`` + ``adapter_model.safetensors`` + ``ranks.json``)
        loadable by ``PeftModel.from_pretrained``. Atomic: written to a temp dir beside it, then swapped in
        (:func:`rankrl.atomic.replace_dir`): an existing adapter is only removed once the new one is complete."""
        from safetensors.torch import save_file

        config = self.lora_config()
        check_pattern_keys(self.peft_model.base_model.model, config, exact=True)
        out = Path(out_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
        try:
            config.save_pretrained(tmp)
            save_file(self.adapter_state_dict(), tmp / "adapter_model.safetensors")
            (tmp / "ranks.json").write_text(json.dumps(self.ranks, indent=1))
            replace_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out


def _ranked_forward(layer: nn.Module, owner: RankedLoRA, name: str):
    """The forward of one adapted module at its current rank ``r``: the base layer, plus (r > 0) the LoRA update
    from the first ``r`` rows of ``A`` and columns of ``B`` at the module's own scaling. PEFT's forward is used
    only when the adapter is disabled or merged (PEFT's own context managers then behave as documented)."""
    peft_forward = layer.forward

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if layer.disable_adapters or layer.merged:
            return peft_forward(x, *args, **kwargs)
        out = layer.base_layer(x, *args, **kwargs)
        r = owner.ranks[name]
        if r == 0:  # rank 0: the adapter does not run at all
            return out
        A, B = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
        h = layer.lora_dropout[ADAPTER](x).to(A.dtype)
        update = nn.functional.linear(nn.functional.linear(h, A[:r]), B[:, :r])
        return out + (update * owner._scaling[name]).to(out.dtype)

    return forward


def _zero_state(optimizer: Any, p: torch.Tensor, index: tuple) -> None:
    if optimizer is None:
        return
    for value in optimizer.state.get(p, {}).values():
        if torch.is_tensor(value) and value.shape == p.shape:
            value[index] = 0


def check_pattern_keys(model: nn.Module, config: Any, *, exact: bool = False) -> None:
    """Fail loudly unless every ``target_modules``/``rank_pattern``/``alpha_pattern`` key of ``config`` matches a
    module of ``model`` under PEFT's own rule (``(.*\\.)?key$``): PEFT silently falls back to the default rank
    for a key that matches nothing (peft#3582). ``exact=True`` (used for exports) demands exactly one match per
    key, so a suffix like ``output.dense`` cannot also hit ``attention.output.dense``."""
    names = [n for n, _ in model.named_modules() if n and ".lora_" not in n and not n.endswith(".base_layer")]
    for field in ("target_modules", "rank_pattern", "alpha_pattern"):
        keys = getattr(config, field) or ()
        for key in [keys] if isinstance(keys, str) else keys:
            pattern = re.compile(rf"(.*\.)?({key})$")
            hits = [n for n in names if pattern.match(n)]
            if not hits or (exact and len(hits) != 1):
                raise RankPatternError(
                    f"{field} key {key!r} matches {len(hits)} modules {hits[:3]} in {type(model).__name__}; "
                    "use the full module name from model.named_modules()"
                )


def check_adapter_ranks(peft_model: nn.Module, ranks: Mapping[str, int]) -> None:
    """Assert every adapted module's ``lora_A`` holds exactly the intended rank (PEFT's multi-rank tests)."""
    base = peft_model.base_model.model
    for name, r in ranks.items():
        layer = base.get_submodule(name)
        got = layer.lora_A[ADAPTER].weight.shape[0] if r > 0 else 0
        if r > 0 and got != r:
            raise RankPatternError(f"{name}: lora_A holds rank {got}, intended {r}")
        if r == 0 and hasattr(layer, "lora_A") and ADAPTER in layer.lora_A:
            raise RankPatternError(f"{name}: intended rank 0 (no adapter) but it is adapted")


def load_exported(model: nn.Module, adapter_dir: str | os.PathLike, is_trainable: bool = False) -> nn.Module:
    """Load an exported adapter onto a fresh base model with plain PEFT and verify every module's rank."""
    from peft import PeftModel

    ranks = json.loads((Path(adapter_dir) / "ranks.json").read_text())
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=is_trainable)
    check_adapter_ranks(peft_model, ranks)
    return peft_model


def parse_rank_spec(spec: str, targets: Sequence[TargetModule], r_max: int) -> dict[str, int]:
    """Turn a CLI rank spec into a rank per target.

    Forms:
        ``uniform:R``   every module gets rank R.
        ``kind:q=8,v=8,up=4,default=0``   by canonical projection kind (see :data:`rankrl.targets.KINDS`).
        ``PATH.json``   ``{"<module name or name suffix>": rank, ..., "default": rank}``; every key must match
                        at least one module, no module may be matched by two keys (``output.dense`` also ends
                        ``attention.output.dense``: use full names), and every module must be covered (or a
                        ``default`` given).
    """
    if spec.startswith("uniform:"):
        r = _parse_int(spec.split(":", 1)[1], spec)
        return {t.name: r for t in targets}
    if spec.startswith("kind:"):
        table = dict(item.split("=", 1) for item in spec[5:].split(",") if item)
        default = table.pop("default", None)
        known = {t.kind for t in targets}
        if bad := sorted(set(table) - known):
            raise ValueError(f"rank spec {spec!r}: kinds {bad} not in this model (it has {sorted(known)})")
        out = {}
        for t in targets:
            value = table.get(t.kind, default)
            if value is None:
                raise ValueError(
                    f"rank spec {spec!r} gives no rank to kind {t.kind!r}; add {t.kind}=R or default=R"
                )
            out[t.name] = _parse_int(value, spec)
        return out
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"rank spec {spec!r}: expected 'uniform:R', 'kind:q=R,...' or an existing JSON file")
    try:
        table = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f'{path}: not valid JSON ({e}); expected {{"module name": rank, ...}}') from e
    default = table.pop("default", None)
    out: dict[str, int] = {}
    matched_by: dict[str, str] = {}
    for key, r in table.items():
        hits = [t.name for t in targets if t.name == key or t.name.endswith("." + key)]
        if not hits:
            raise RankPatternError(f"{path}: key {key!r} matches no adapted module (e.g. {targets[0].name})")
        if clash := [h for h in hits if h in matched_by]:
            raise RankPatternError(f"{path}: keys {matched_by[clash[0]]!r} and {key!r} both match {clash[0]} "
                                   f"({len(clash)} module(s) in all), so one rank would silently win; use full module "
                                   f"names (e.g. {clash[0]!r})")  # fmt: skip
        for h in hits:
            out[h] = int(r)
            matched_by[h] = key
    for t in targets:
        if t.name not in out:
            if default is None:
                raise ValueError(f'{path}: no rank for {t.name}; add it or a "default" entry')
            out[t.name] = int(default)
    return out


def _parse_int(text: str, spec: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"rank spec {spec!r}: {text!r} is not an integer rank") from None


# ---------------------------------------------------------------------------------------- rank <-> PEFT codec
#: task kind (rankrl.tasks.KINDS) -> PEFT task_type
PEFT_TASK_TYPES: dict[str, str] = {"classification": "SEQ_CLS", "causal_lm": "CAUSAL_LM"}


def ranks_to_lora_config(ranks: Mapping[str, int], *, alpha: float | Mapping[str, float], dropout: float = 0.0,
                         task_type: str | None = None, modules_to_save: list[str] | None = None,
                         what: str = "adapt") -> Any:  # fmt: skip
    """The one rank -> PEFT codec: a plain ``LoraConfig`` for per-module ranks. Full module names (PEFT matches
    ``rank_pattern`` keys on the *end* of a name, so full names cannot hit a second module), rank-0 modules left
    out, ``r`` the most common rank and ``rank_pattern`` the rest. ``alpha`` is one ``lora_alpha`` (each module
    then gets PEFT's ``alpha / r_i``, the scaling it starts with in the live env) or an alpha per module (the
    most common becomes ``lora_alpha``, the rest ``alpha_pattern``). :func:`lora_config_to_ranks` inverts it."""
    from peft import LoraConfig

    active = {n: int(r) for n, r in ranks.items() if r > 0}
    if not active:
        raise ValueError(f"every module has rank 0: nothing to {what}; give at least one module a rank (raise the "
                         "budget)")  # fmt: skip
    r = Counter(active.values()).most_common(1)[0][0]
    if isinstance(alpha, Mapping):
        a = Counter(round(alpha[n], 6) for n in active).most_common(1)[0][0]
        alpha_pattern = {n: alpha[n] for n in active if round(alpha[n], 6) != a}
    else:
        a, alpha_pattern = alpha, {}
    return LoraConfig(r=r, lora_alpha=a, lora_dropout=dropout, target_modules=sorted(active),
                      rank_pattern={n: v for n, v in active.items() if v != r}, alpha_pattern=alpha_pattern,
                      modules_to_save=modules_to_save, task_type=task_type)  # fmt: skip


def lora_config_to_ranks(config: Any) -> dict[str, int]:
    """The per-module ranks a :func:`ranks_to_lora_config` config states (full module names as keys)."""
    return {n: int(config.rank_pattern.get(n, config.r)) for n in sorted(config.target_modules)}


def write_adapter_config(ranks: Mapping[str, int], out: str | os.PathLike, model: str, *, alpha: float,
                         dropout: float = 0.0, task_kind: str | None = None, num_labels: int = 2,
                         seed: int = 0) -> Any:  # fmt: skip
    """Write ``out/adapter_config.json`` (atomically), read it back with ``LoraConfig.from_pretrained``, check its
    keys against a fresh ``model`` (exact) and that ``get_peft_model`` gives every module exactly its rank.

    Returns:
        The config as read back.
    """
    from peft import LoraConfig, get_peft_model

    from rankrl.models import load_model

    config = ranks_to_lora_config(ranks, alpha=alpha, dropout=dropout, task_type=PEFT_TASK_TYPES.get(task_kind or ""))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".adapter-", dir=out))
    try:  # written, read back and checked in a temp dir; only a config that passed is moved into place
        config.save_pretrained(tmp)
        back = LoraConfig.from_pretrained(str(tmp))
        fresh = load_model(model, task_kind=task_kind or "classification", num_labels=num_labels, seed=seed).model
        check_pattern_keys(fresh, back, exact=True)
        check_adapter_ranks(get_peft_model(fresh, back), {n: int(r) for n, r in ranks.items()})
        os.replace(tmp / "adapter_config.json", out / "adapter_config.json")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return back
