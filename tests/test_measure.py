"""The timing helpers time the steady state only: warm-up calls (allocation, kernel selection, compilation) never
count, in the benchmarks' Meter and in the training loops' Throughput; MFU is what the counts and peak say. Their
bounds are 10x apart (a step of 0.2 s against one of ~0), so that a busy machine does not tip them; no test asserts
a speed."""

import time

import torch

from benchmarks.measure import Meter, matmul_peak
from modeling_bertxml.training.throughput import Throughput, matmul_peak_flops, steady_state_seconds

SLOW, WARMUP = 0.2, 2
CPU = torch.device("cpu")


def slow_at_first(calls: list[int], busy: bool) -> callable:
    """A step whose first WARMUP calls take SLOW seconds (busy: of this thread's CPU time, as compilation does, which
    on shared cores takes longer in wall time; else sleeping) and later ones ~0."""

    def step() -> None:
        calls.append(1)
        if len(calls) <= WARMUP:
            if not busy:
                time.sleep(SLOW)
                return
            end = time.thread_time() + SLOW
            while time.thread_time() < end:
                pass

    return step


def test_meter_leaves_the_warm_up_runs_out() -> None:
    calls: list[int] = []
    measurement = Meter(CPU, budget_s=0.05, warmup=WARMUP).measure(slow_at_first(calls, busy=True))
    assert len(calls) == WARMUP + measurement.runs
    assert measurement.seconds < SLOW / 10 and measurement.wall_seconds < SLOW / 10


def test_meter_without_warm_up_would_have_counted_them() -> None:
    """The control: the same step measured with no warm-up has its slow first call among the runs it times."""
    calls: list[int] = []
    step = slow_at_first(calls, busy=True)
    step()  # one slow call spent, one left
    measurement = Meter(CPU, budget_s=0.05, warmup=0).measure(step)
    assert measurement.runs == 1 and measurement.wall_seconds > SLOW / 2


def test_steady_state_seconds_times_only_the_runs_after_warm_up() -> None:
    calls: list[int] = []
    times = steady_state_seconds(slow_at_first(calls, busy=False), CPU, warmup=WARMUP, runs=5)
    assert len(calls) == WARMUP + 5 and len(times) == 5 and max(times) < SLOW / 10


def test_throughput_times_steps_after_warm_up_and_leaves_paused_stretches_out() -> None:
    meter = Throughput(CPU, flops_per_token=1e6, peak=(1e12, "float32"), warmup_steps=2)
    for step in range(6):
        meter.add_tokens(torch.tensor(100))  # a device tensor: read once, at the end
        time.sleep(SLOW if step < 2 else 0.01)  # the warm-up steps are slow
        meter.optimizer_step()
        if step == 3:
            with meter.paused():
                time.sleep(SLOW)  # an evaluation
    results = meter.results()
    assert results["steady_state_steps"] == 4
    assert results["steady_state_seconds"] < SLOW  # neither the warm-up nor the evaluation
    assert results["tokens_per_second"] == 400 / results["steady_state_seconds"]
    assert results["mfu"] == results["tokens_per_second"] * 1e6 / 1e12


def test_throughput_of_several_processes_counts_all_tokens_and_divides_mfu_per_device() -> None:
    one = Throughput(CPU, flops_per_token=1.0, peak=(1.0, "float32"), warmup_steps=0)
    two = Throughput(CPU, flops_per_token=1.0, peak=(1.0, "float32"), warmup_steps=0, processes=2)
    for meter in (one, two):
        meter.add_tokens(50)
        meter.optimizer_step()
        meter.seconds, meter._started = 1.0, None  # the same time, so that only the process count differs
    assert two.results()["tokens_per_second"] == 2 * one.results()["tokens_per_second"]
    assert two.results()["mfu"] == one.results()["mfu"]


def test_matmul_peak_is_measured_in_float32_on_cpu_and_leaves_the_global_random_stream_alone() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    flops, dtype = matmul_peak_flops(CPU)
    assert dtype == "float32" and flops > 0
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)  # dropout's stream: a resume must not shift


def test_a_precision_the_cpu_has_no_matmul_kernels_for_has_no_peak(monkeypatch) -> None:
    """bf16 on an AVX2-only CPU is emulated: a 4096² product would take minutes to give a meaningless figure."""
    meter = Meter(CPU, budget_s=0.01)
    assert matmul_peak(meter, torch.float32, size=64) > 0
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert matmul_peak(meter, torch.bfloat16, size=4096) is None
