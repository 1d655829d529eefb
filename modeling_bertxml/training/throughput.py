"""Throughput and model FLOPs utilisation (MFU) of a training loop, for pretrain.py and train.py.

Why each piece is the way it is:
- FLOPs are counted analytically from the config (the model's useful work; the label head counts its own,
  `BertXMLLabelWiseHead.flops_per_token`), never from what a kernel happens to do, so that padding, recomputation or a
  slow kernel lower the MFU instead of hiding in it.
- The peak is measured, not taken from a data sheet: one large matmul in the dtype the hardware is fastest at
  (bf16 on CUDA, float32 on CPU), timed after warm-up, in the same run as the figure it divides.
- The loop's own rate leaves out the first optimizer steps (allocation, kernel selection, torch.compile) and anything
  paused (evaluation, checkpoints), and synchronises the device only where the timed window starts and ends: a
  host synchronisation per step would itself slow the loop it measures.
"""

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from ..model.configuration_bertxml import BertXMLConfig

TRAINING_FLOPS_FACTOR = 3  # backward costs about twice the forward
PEAK_PROBE = {"cuda": (8192, torch.bfloat16, 10), "cpu": (1024, torch.float32, 3)}  # size, dtype, timed runs


def encoder_flops(config: BertXMLConfig, tokens: int) -> int:
    """Forward FLOPs of the chunked encoder: per token and layer, 4 D x D and 2 D x I products plus chunk attention."""
    hidden, chunk = config.hidden_size, min(tokens, config.max_position_embeddings)
    per_token_layer = 8 * hidden**2 + 4 * hidden * config.intermediate_size + 4 * chunk * hidden
    return tokens * config.num_hidden_layers * per_token_layer


def mlm_flops(config: BertXMLConfig, tokens: int) -> int:
    """Forward FLOPs of the encoder plus BERT's MLM head (a D x D transform and the D x vocabulary decoder)."""
    head_per_token = 2 * config.hidden_size**2 + 2 * config.hidden_size * config.vocab_size
    return encoder_flops(config, tokens) + tokens * head_per_token


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steady_state_seconds(
    step: Callable[[], object], device: torch.device, warmup: int, runs: int
) -> list[float]:
    """Seconds of each of `runs` calls of `step` after `warmup` untimed calls; on CUDA timed by CUDA events, so the
    figure is the device's time for the step, not the time the host took to queue it."""
    for _ in range(warmup):
        step()
    synchronize(device)
    if device.type != "cuda":
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return times
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(runs)]
    for start, end in events:
        start.record()
        step()
        end.record()
    torch.cuda.synchronize(device)
    return [start.elapsed_time(end) / 1e3 for start, end in events]


def matmul_peak_flops(device: torch.device) -> tuple[float, str]:
    """(FLOP/s, dtype name) of one large square matmul on `device`: the practical peak that MFU is a fraction of."""
    size, dtype, runs = PEAK_PROBE.get(device.type, PEAK_PROBE["cpu"])
    # A generator of its own: drawing from the global one would shift dropout's stream (a resumed run then differs).
    generator = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(size, size, device=device, generator=generator).to(dtype) for _ in range(2))
    seconds = statistics.median(steady_state_seconds(lambda: a @ b, device, warmup=2, runs=runs))
    return 2 * size**3 / seconds, str(dtype).removeprefix("torch.")


class Throughput:
    """Tokens per second and MFU of a training loop's steady state.

    Call `add_tokens` for every batch (an int, or a device tensor such as a mask's sum: it is summed on the device
    and read once at the end) and `optimizer_step` after every optimizer step; wrap evaluation and checkpointing in
    `paused()`. Timing starts when `warmup_steps` steps are done (at once for 0).
    """

    def __init__(
        self,
        device: torch.device,
        flops_per_token: float,
        peak: tuple[float, str],
        warmup_steps: int,
        processes: int = 1,
    ):
        """`peak`: (FLOP/s, dtype) from `matmul_peak_flops`; `flops_per_token`: training FLOPs of one token."""
        self.device, self.flops_per_token, (self.peak_flops, self.peak_dtype) = device, flops_per_token, peak
        self.warmup_steps, self.processes = warmup_steps, processes
        self.steps, self.timed_steps, self.seconds = 0, 0, 0.0
        self.tokens: int | torch.Tensor = 0
        self._started: float | None = None
        if warmup_steps == 0:
            self._start()

    def _start(self) -> None:
        synchronize(self.device)
        self._started = time.perf_counter()

    def _stop(self) -> None:
        if self._started is not None:
            synchronize(self.device)
            self.seconds += time.perf_counter() - self._started
            self._started = None

    @property
    def timing(self) -> bool:
        return self.steps >= self.warmup_steps

    def add_tokens(self, tokens: int | torch.Tensor) -> None:
        if self.timing:
            self.tokens = self.tokens + tokens

    def optimizer_step(self) -> None:
        self.steps += 1
        if self.timing:
            self.timed_steps += self.steps > self.warmup_steps
            if self._started is None and self.steps == self.warmup_steps:
                self._start()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave what runs inside (evaluation, checkpoints) out of the timed window."""
        running = self._started is not None
        self._stop()
        try:
            yield
        finally:
            if running:
                self._start()

    def results(self) -> dict[str, float | int | str]:
        """tokens_per_second (all processes), mfu (per device), and what they rest on, so far (the clock runs on)."""
        seconds = self.seconds
        if self._started is not None:
            synchronize(self.device)
            seconds += time.perf_counter() - self._started
        tokens = int(self.tokens) * self.processes
        rate = tokens / seconds if seconds > 0 else 0.0
        return {
            "tokens_per_second": rate,
            "mfu": rate / self.processes * self.flops_per_token / self.peak_flops,
            "steady_state_steps": self.timed_steps,
            "steady_state_seconds": seconds,
            "flops_per_token": self.flops_per_token,
            "peak_flops": self.peak_flops,
            "peak_dtype": self.peak_dtype,
        }


def logged_rates(results: dict) -> dict[str, float]:
    """The two values of `Throughput.results()` that both scripts log with the training loss."""
    return {"tokens_per_second": results["tokens_per_second"], "mfu": results["mfu"]}


def warmup_steps_for(steps: int, most: int = 5) -> int:
    """Optimizer steps left out of the timed window of a run of `steps`: `most`, but at most half the run, so that
    short runs still time something (a run of 1 or 2 steps times them all)."""
    return max(0, min(most, (steps - 1) // 2))


__all__ = [
    "TRAINING_FLOPS_FACTOR",
    "Throughput",
    "encoder_flops",
    "matmul_peak_flops",
    "mlm_flops",
    "steady_state_seconds",
    "synchronize",
    "warmup_steps_for",
]
