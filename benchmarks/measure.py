"""Timing and peak-memory measurement that stays meaningful on GPUs and shared CPUs.

- Time: `warmup` untimed runs (allocation, kernel selection, lazy CUDA module loading, autotuning: 3 on CUDA, 1 on
  CPU), then the median of steady-state runs repeated until they add up to the budget (at most 15, at least 1).
  CUDA: each run is timed by CUDA events around it (the device's time, not the host's). On CPU the time is CPU time,
  because other jobs on shared
  cores inflate wall time, not CPU time: the larger of the process's CPU time divided by its threads (parallel work)
  and the calling thread's own CPU time (which also runs every serial step), i.e. about the wall time on cores nobody
  else uses. bench_model.py sets OMP_WAIT_POLICY=PASSIVE so that threads waiting for a descheduled peer sleep
  instead of spinning, which would count as CPU time. Wall time is recorded too.
- Memory: the extra peak over what was allocated before the call. CUDA: `max_memory_allocated`. CPU (Linux): the
  peak resident set (VmHWM, reset through /proc/self/clear_refs) after `malloc_trim` has returned the free memory
  that earlier cases left to the system. glibc is set as a long-running process settles (blocks from 32 MiB up are
  mapped and unmapped, smaller ones reused), so that no case pays page faults a real training loop would not.
"""

import ctypes
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
MAX_RUNS = 15
WARMUP_RUNS = {"cuda": 3, "cpu": 1}


@dataclass
class Measurement:
    seconds: float  # median of the steady-state runs; CUDA: event time, CPU: CPU time (see above)
    wall_seconds: float
    runs: int  # steady-state runs, warm-up excluded
    peak_bytes: int  # over warm-up and steady state


class Meter:
    """Times and measures the peak memory of callables on one device."""

    def __init__(self, device: torch.device, budget_s: float, warmup: int | None = None):
        self.device, self.budget_s = device, budget_s
        self.warmup = WARMUP_RUNS.get(device.type, 1) if warmup is None else warmup
        if device.type == "cpu":
            self.libc = ctypes.CDLL("libc.so.6")
            self.libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's dynamic threshold stops growing there
            self.libc.mallopt(M_TRIM_THRESHOLD, 64 << 20)

    def measure(self, step: Callable[[], object]) -> Measurement:
        before = self._reset_peak()
        for _ in range(self.warmup):
            self._run(step)
        runs = []
        while not runs or (len(runs) < MAX_RUNS and sum(run[0] for run in runs) < self.budget_s):
            runs.append(self._run(step))
        peak = self._peak() - before
        return Measurement(
            seconds=statistics.median(run[0] for run in runs),
            wall_seconds=statistics.median(run[1] for run in runs),
            runs=len(runs),
            peak_bytes=max(peak, 0),
        )

    def _run(self, step: Callable[[], object]) -> tuple[float, float]:
        """(time, wall time) of one call: CUDA event time on CUDA, CPU time (see above) on CPU."""
        self._synchronize()
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            wall = time.perf_counter()
            start.record()
            step()
            end.record()
            self._synchronize()
            return start.elapsed_time(end) / 1e3, time.perf_counter() - wall
        wall, process, thread = time.perf_counter(), time.process_time(), time.thread_time()
        step()
        self._synchronize()
        wall, process, thread = time.perf_counter() - wall, time.process_time() - process, time.thread_time() - thread
        return (max(process / torch.get_num_threads(), thread) if self.device.type == "cpu" else wall), wall

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _reset_peak(self) -> int:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device)
        self.libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current resident set
        return _proc_status("VmRSS")

    def _peak(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return _proc_status("VmHWM")


def _proc_status(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} line")


def has_matmul_kernels(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `device` multiplies `dtype` at hardware speed. Without oneDNN's bf16 (or fp16) kernels (a CPU with AVX2
    only: no AVX-512, no AVX2-VNNI-2) torch falls back to a generic loop 100x slower than float32, so one 4096²
    product takes minutes and its "peak" is no reference for anything."""
    if device.type != "cpu" or dtype == torch.float32:
        return True
    if dtype == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return dtype == torch.float16 and torch.ops.mkldnn._is_mkldnn_fp16_supported()


def matmul_peak(meter: Meter, dtype: torch.dtype, size: int | None = None) -> float | None:
    """FLOP/s of one large square matmul (default 8192² on CUDA, 4096² on CPU): the practical peak every other figure
    (MFU) is a fraction of. None where the device has no kernels for `dtype` (`has_matmul_kernels`)."""
    if not has_matmul_kernels(meter.device, dtype):
        return None
    size = size or (8192 if meter.device.type == "cuda" else 4096)
    a = torch.randn(size, size, device=meter.device).to(dtype)
    b = torch.randn(size, size, device=meter.device).to(dtype)
    return 2 * size**3 / meter.measure(lambda: a @ b).seconds
