"""Cost model: every expected number is computed by hand in the test, not by the code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rankrl.ranks.costs import (
    AllocationCost,
    Channel,
    ModuleCost,
    allocation_cost,
    flops_training_step,
    params_for_uniform,
    uniform_ranks,
)
from rankrl.targets import TargetModule

UP = TargetModule("layers.0.mlp.up_proj", 0, 1, "up", 64, 128)
DOWN = TargetModule("layers.0.mlp.down_proj", 0, 1, "down", 128, 64)
TARGETS = (UP, DOWN)


def test_single_active_module_hand_computed() -> None:
    cost = allocation_cost(TARGETS, {UP.name: 4, DOWN.name: 0}, precision_bits=16)
    assert isinstance(cost, AllocationCost)
    assert cost.params == 768  # 4 * (64 + 128)
    assert cost.flops_forward == 1536  # 2*4*64 + 2*4*128
    assert cost.flops_backward == 3072
    assert cost.flops == 4608
    assert cost.optimizer_bytes == 6144  # 768 * 8 (AdamW)
    assert cost.gradient_bytes == 3072  # 768 * 4
    assert cost.bits == 12288  # 768 * 16
    assert cost.active_modules == 1
    assert cost.modules[1] == ModuleCost(DOWN.name, 0, 0, 0, 0, 0, 0, 0)
    assert [m.name for m in cost.modules] == [UP.name, DOWN.name]
    assert cost.modules[0].flops == 4608


def test_two_active_modules_sum() -> None:
    cost = allocation_cost(TARGETS, {UP.name: 4, DOWN.name: 2})
    assert cost.params == 768 + 384  # 2 * (128 + 64) = 384
    assert cost.flops_forward == 1536 + 768  # 2*2*128 + 2*2*64 = 768
    assert cost.bits == 1152 * 32


@pytest.mark.parametrize(("optimizer", "expected"), [("adamw", 6144), ("sgd_momentum", 3072), ("sgd", 0)])
def test_optimizer_state_bytes(optimizer: str, expected: int) -> None:
    cost = allocation_cost(TARGETS, {UP.name: 4, DOWN.name: 0}, optimizer=optimizer)
    assert cost.optimizer_bytes == expected
    assert cost.gradient_bytes == 3072  # gradients do not depend on the optimizer


@pytest.mark.parametrize(("bits", "expected"), [(32, 24576), (16, 12288), (8, 6144), (4, 3072)])
def test_precision_bits(bits: int, expected: int) -> None:
    assert allocation_cost(TARGETS, {UP.name: 4, DOWN.name: 0}, precision_bits=bits).bits == expected


def test_header_counted_only_for_active_modules() -> None:
    cost = allocation_cost(TARGETS, {UP.name: 4, DOWN.name: 0}, precision_bits=16, header_bits=100)
    assert cost.bits == 12288 + 100
    off = allocation_cost(TARGETS, {UP.name: 0, DOWN.name: 0}, header_bits=100)
    assert off.bits == 0 and off.params == 0


def test_as_metrics() -> None:
    metrics = allocation_cost(TARGETS, {UP.name: 4, DOWN.name: 0}, precision_bits=16).as_metrics()
    assert metrics["cost/params"] == 768.0
    assert metrics["cost/flops"] == 4608.0
    assert metrics["cost/flops_forward"] == 1536.0
    assert metrics["cost/optimizer_bytes"] == 6144.0
    assert metrics["cost/bits"] == 12288.0
    assert metrics["rank/total_params"] == 768.0
    assert all(isinstance(v, float) for v in metrics.values())
    other = allocation_cost(TARGETS, {UP.name: 4, DOWN.name: 0}).as_metrics(prefix="budget/")
    assert other["budget/params"] == 768.0 and other["rank/total_params"] == 768.0


def test_uniform_helpers_and_training_flops() -> None:
    assert uniform_ranks(TARGETS, 8) == {UP.name: 8, DOWN.name: 8}
    assert params_for_uniform(TARGETS, 8) == 2 * 8 * 192  # 3072
    cost = allocation_cost(TARGETS, {UP.name: 4, DOWN.name: 0})
    assert flops_training_step(cost, 10) == 46080  # 4608 * 10
    with pytest.raises(ValueError, match="max_rank"):
        uniform_ranks(TARGETS, 65)


def test_numpy_integer_ranks_accepted() -> None:
    cost = allocation_cost(TARGETS, {UP.name: np.int64(4), DOWN.name: np.int32(0)})
    assert cost.params == 768 and type(cost.modules[0].rank) is int


def test_channel_capacity_and_seconds() -> None:
    ch = Channel(bandwidth_hz=1e6, snr_db=10.0)
    expected_capacity = 1e6 * math.log2(11.0)  # 10 dB -> SNR 10
    assert ch.capacity_bps() == pytest.approx(3.4594316e6, rel=1e-6)
    assert ch.capacity_bps() == pytest.approx(expected_capacity)
    assert ch.transmit_seconds(12288) == pytest.approx(12288 / expected_capacity)
    cost = allocation_cost(TARGETS, {UP.name: 4, DOWN.name: 0}, precision_bits=16)
    assert cost.transmit_seconds(ch) == pytest.approx(12288 / 3.4594316e6, rel=1e-6)
    assert ch.transmit_seconds(0) == 0.0


def test_rayleigh_channel() -> None:
    ch = Channel(bandwidth_hz=1e6, snr_db=10.0, rayleigh=True)
    draws = np.array([ch.capacity_bps(np.random.default_rng(0)) for _ in range(2)])
    assert draws[0] == draws[1]  # same seed, same draw
    rng = np.random.default_rng(123)
    many = np.array([ch.capacity_bps(rng) for _ in range(2000)])
    assert many.std() > 0
    # Jensen: E[log2(1 + snr g)] < log2(1 + snr E[g]) with E[g] = 1
    assert many.mean() < 1e6 * math.log2(11.0)
    with pytest.raises(ValueError, match=r"rng=np\.random\.default_rng"):
        ch.capacity_bps()
    with pytest.raises(ValueError, match="rng="):
        allocation_cost(TARGETS, {UP.name: 4, DOWN.name: 0}).transmit_seconds(ch)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bandwidth_hz": 0.0, "snr_db": 10.0}, "bandwidth_hz"),
        ({"bandwidth_hz": 1e6, "snr_db": math.inf}, "snr_db"),
    ],
)
def test_channel_validation(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Channel(**kwargs)


def test_unknown_rank_key() -> None:
    with pytest.raises(ValueError, match=r"typo\.q_proj.*layers\.0\.mlp\.up_proj"):
        allocation_cost(TARGETS, {UP.name: 4, DOWN.name: 0, "typo.q_proj": 2})


def test_missing_target() -> None:
    with pytest.raises(ValueError, match=r"no entry for layers\.0\.mlp\.down_proj.*0 switches it off"):
        allocation_cost(TARGETS, {UP.name: 4})


def test_negative_rank() -> None:
    with pytest.raises(ValueError, match=r"up_proj.*>= 0"):
        allocation_cost(TARGETS, {UP.name: -1, DOWN.name: 0})


def test_rank_above_max_rank() -> None:
    with pytest.raises(ValueError, match=r"rank 65 for layers\.0\.mlp\.down_proj exceeds its max_rank 64"):
        allocation_cost(TARGETS, {UP.name: 64, DOWN.name: 65})


def test_non_integer_rank() -> None:
    with pytest.raises(TypeError, match="up_proj"):
        allocation_cost(TARGETS, {UP.name: 4.0, DOWN.name: 0})


def test_bad_optimizer_precision_header_duplicates() -> None:
    ranks = {UP.name: 4, DOWN.name: 0}
    with pytest.raises(ValueError, match=r"'adam'.*adamw.*sgd.*sgd_momentum"):
        allocation_cost(TARGETS, ranks, optimizer="adam")
    with pytest.raises(ValueError, match=r"precision_bits must be one of \[32, 16, 8, 4\]"):
        allocation_cost(TARGETS, ranks, precision_bits=12)
    with pytest.raises(ValueError, match="header_bits"):
        allocation_cost(TARGETS, ranks, header_bits=-1)
    with pytest.raises(ValueError, match=r"duplicate.*up_proj"):
        allocation_cost((UP, UP), {UP.name: 1})
