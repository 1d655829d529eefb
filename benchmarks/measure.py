"""Timing and peak-memory measurement that stays meaningful on shared CPUs, plus the analytic FLOP counts.

- Time: the median of runs repeated until they add up to the budget (at most 15, at least 1); the first run is a
  warm-up unless it alone takes a quarter of the budget. On CPU the time is CPU time, because other jobs on shared
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

from modeling_bertxml import BertXMLConfig

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
MAX_RUNS = 15


@dataclass
class Measurement:
    seconds: float  # median; CPU: CPU time (see above)
    wall_seconds: float
    runs: int
    peak_bytes: int


class Meter:
    """Times and measures the peak memory of callables on one device."""

    def __init__(self, device: torch.device, budget_s: float):
        self.device, self.budget_s = device, budget_s
        if device.type == "cpu":
            self.libc = ctypes.CDLL("libc.so.6")
            self.libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's dynamic threshold stops growing there
            self.libc.mallopt(M_TRIM_THRESHOLD, 64 << 20)

    def measure(self, step: Callable[[], object]) -> Measurement:
        before = self._reset_peak()
        first = self._run(step)
        peak = self._peak() - before
        runs = [first] if first[0] * 4 > self.budget_s else []  # otherwise the first run was a warm-up
        while not runs or (len(runs) < MAX_RUNS and sum(run[0] for run in runs) < self.budget_s):
            runs.append(self._run(step))
        return Measurement(
            seconds=statistics.median(run[0] for run in runs),
            wall_seconds=statistics.median(run[1] for run in runs),
            runs=len(runs),
            peak_bytes=max(peak, 0),
        )

    def _run(self, step: Callable[[], object]) -> tuple[float, float]:
        self._synchronize()
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


def matmul_peak(meter: Meter, dtype: torch.dtype, size: int = 4096) -> float:
    """FLOP/s of one large square matmul: the practical peak every other figure is a fraction of."""
    a = torch.randn(size, size, device=meter.device).to(dtype)
    b = torch.randn(size, size, device=meter.device).to(dtype)
    return 2 * size**3 / meter.measure(lambda: a @ b).seconds


def encoder_flops(config: BertXMLConfig, tokens: int) -> int:
    """Forward FLOPs of the chunked encoder: per token and layer, 4 D x D and 2 D x I products plus chunk attention."""
    hidden, chunk = config.hidden_size, min(tokens, config.max_position_embeddings)
    per_token_layer = 8 * hidden**2 + 4 * hidden * config.intermediate_size + 4 * chunk * hidden
    return tokens * config.num_hidden_layers * per_token_layer


def head_flops(config: BertXMLConfig, tokens: int) -> int:
    """Forward FLOPs of label attention: scores (codes x query size) and weighted states (codes x hidden) per token."""
    query_size = config.label_attention_dim or config.hidden_size
    projection = 2 * config.hidden_size * config.label_attention_dim if config.label_attention_dim else 0
    return tokens * (2 * config.num_labels * (query_size + config.hidden_size) + projection)


TRAINING_FLOPS_FACTOR = 3  # backward costs about twice the forward
