"""What a factorized model costs and what it loses, measured: latency per token, peak memory, perplexity, and
how far its hidden states drift from the dense model's.

Latency is wall-clock (median of repeated forwards after a warm-up, ``torch.inference_mode``); memory is the
weights' bytes plus the peak of the forward's allocations as torch's profiler records them on CPU (tracemalloc does
not see torch's allocator). Both are measured, next to the FLOPs :class:`~rankrl.compress.factorize.Spectra`
counts, so the speed-up the counts promise can be checked.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["hidden_fidelity", "latency_per_token", "peak_forward_bytes", "perplexity", "token_batches",
           "weight_bytes"]  # fmt: skip


def token_batches(tokenizer: Any, texts: Sequence[str], *, batch_size: int = 8, max_length: int = 128,
                  causal: bool = True) -> list[dict[str, torch.Tensor]]:  # fmt: skip
    """``texts`` tokenised into padded batches (``labels`` = input ids with padding at -100 when ``causal``)."""
    if not texts:
        raise ValueError("no texts to measure on")
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i : i + batch_size]), truncation=True, max_length=max_length, padding=True,
                        return_tensors="pt")  # fmt: skip
        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if causal:
            batch["labels"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        out.append(batch)
    return out


@torch.inference_mode()
def perplexity(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> float:
    """``exp`` of the mean next-token negative log-likelihood over every labelled token of ``batches``."""
    model.eval()
    nll, tokens = 0.0, 0
    for batch in batches:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        logp = torch.log_softmax(logits[:, :-1].float(), -1)
        keep = labels != -100
        picked = logp.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        nll -= float(picked[keep].sum())
        tokens += int(keep.sum())
    if tokens == 0:
        raise ValueError("no labelled tokens: perplexity is undefined")
    return math.exp(nll / tokens)


def _last_hidden(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    return out.hidden_states[-1].float()


@torch.inference_mode()
def hidden_fidelity(dense: nn.Module, small: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> dict:
    """How close ``small``'s last hidden states stay to ``dense``'s on real tokens: mean cosine similarity of the
    mean-pooled states (what a sentence embedding uses) and the relative Frobenius error of the token states."""
    dense.eval(), small.eval()
    cos, err_num, err_den = [], 0.0, 0.0
    for batch in batches:
        mask = batch["attention_mask"].unsqueeze(-1).float()
        a, b = _last_hidden(dense, batch) * mask, _last_hidden(small, batch) * mask
        pa, pb = a.sum(1) / mask.sum(1), b.sum(1) / mask.sum(1)
        cos += torch.nn.functional.cosine_similarity(pa, pb, dim=-1).tolist()
        err_num += float(((a - b) ** 2).sum())
        err_den += float((a**2).sum())
    return {"embedding_cosine": float(statistics.fmean(cos)), "hidden_rel_error": math.sqrt(err_num / err_den)}


@torch.inference_mode()
def latency_per_token(model: nn.Module, batch_size: int, seq_len: int, *, vocab: int = 100, repeats: int = 5,
                      warmup: int = 2, seed: int = 0) -> float:  # fmt: skip
    """Median seconds per token of one forward over a ``batch_size`` x ``seq_len`` batch of random ids."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch_size, seq_len), generator=g)
    mask = torch.ones_like(ids)
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        model(input_ids=ids, attention_mask=mask)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) / (batch_size * seq_len)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


@torch.inference_mode()
def peak_forward_bytes(model: nn.Module, batch_size: int, seq_len: int, *, vocab: int = 100) -> int:
    """Peak bytes the forward allocates on CPU beyond the weights, from torch's profiler (allocations and frees
    replayed in time order)."""
    from torch.profiler import ProfilerActivity, profile

    ids = torch.randint(0, vocab, (batch_size, seq_len), generator=torch.Generator().manual_seed(0))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    level = peak = 0
    for e in events:
        level += e.self_cpu_memory_usage
        peak = max(peak, level)
    return int(peak)
