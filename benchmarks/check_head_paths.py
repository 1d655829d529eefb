"""Every exact path of the label-attention head against the naive head, on one device: values, gradients, time, memory.

    python benchmarks/check_head_paths.py --device cuda --codes 8000 74736 --tokens 4096   # benchmarks/gpu_check.sh
    python benchmarks/check_head_paths.py --codes 300 --tokens 256                         # CPU, seconds

For each precision (fp32, bf16 autocast) and path ("sdpa", "blocks", and "auto", the one the device picks) it runs
the head on the same random encoder-shaped states as `naive_label_attention` in fp32, and reports the largest
logit and gradient differences relative to the largest reference value, then the steady-state inference and
training times (measure.py: warm-up untimed, CUDA events) with their MFU, and the extra peak memory. tests/ hold
the paths to the naive head on CPU; this is the same check where the CUDA kernels run. Prints a markdown table and
writes JSON.
"""

import argparse
import contextlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/check_head_paths.py` from anywhere

import torch  # noqa: E402

from benchmarks.bench_model import make_config, make_head, markdown, percent  # noqa: E402
from benchmarks.measure import Meter, matmul_peak  # noqa: E402
from benchmarks.naive_head import naive_label_attention  # noqa: E402
from modeling_bertxml.training.throughput import TRAINING_FLOPS_FACTOR  # noqa: E402

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
MB = 2**20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", choices=["tiny", "base"], default="base", help="hidden size (benchmarks CONFIGS)")
    parser.add_argument("--codes", nargs="+", type=int, default=[300])
    parser.add_argument("--tokens", type=int, default=256, help="tokens of the (one) note")
    parser.add_argument("--block_size", type=int, nargs="+", default=[1024], help="label_block_size values to try")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of timed runs per case")
    parser.add_argument("--peak_size", type=int, help="side of the peak's square matmul (default 8192 CUDA, 4096 CPU)")
    parser.add_argument("--output", type=Path, help="JSON file (default benchmarks/head_paths_<device>.json)")
    return parser.parse_args()


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def gradients(head, forward, states: torch.Tensor, mask: torch.Tensor, dtype) -> tuple[torch.Tensor, list]:
    """Logits (float32) and the gradients of a fixed function of them: the states' and every parameter's."""
    head.zero_grad(set_to_none=True)
    states.grad = None
    with autocast(states.device, dtype):
        logits = forward(head, states, mask).float()
    (logits * torch.linspace(-1, 1, logits.shape[-1], device=logits.device)).sum().backward()
    return logits.detach(), [states.grad] + [parameter.grad for parameter in head.parameters()]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


def check(args: argparse.Namespace, meter: Meter, peaks: dict, codes: int, block: int) -> list[dict]:
    device = meter.device
    config = make_config(args.config, codes, label_block_size=block)
    head = make_head(config, device)
    states = torch.randn(1, args.tokens, config.hidden_size, device=device, requires_grad=True)
    mask = torch.ones(1, args.tokens, dtype=torch.long, device=device)
    mask[0, -args.tokens // 8 :] = 0  # some padding, so that the mask is exercised
    reference, reference_grads = gradients(head, naive_label_attention, states, mask, None)
    flops = head.flops_per_token * int(mask.sum())

    def model_path(head_, states_, mask_):
        return head_(states_, mask_)[0]

    rows = []
    for precision, dtype in PRECISIONS.items():
        for path in ("auto", "sdpa", "blocks", "naive"):
            forward = naive_label_attention if path == "naive" else model_path
            head.implementation = "auto" if path == "naive" else path
            with torch.no_grad(), autocast(device, dtype):
                chosen = "naive" if path == "naive" else head._path(states, False)
            logits, grads = gradients(head, forward, states, mask, dtype)
            grad_error = max(relative_error(g, r) for g, r in zip(grads, reference_grads))

            def inference():
                with torch.no_grad(), autocast(device, dtype):
                    forward(head, states, mask)

            def training():
                head.zero_grad(set_to_none=True)
                with autocast(device, dtype):
                    out = forward(head, states, mask)
                out.float().square().mean().backward()

            fast, slow = meter.measure(inference), meter.measure(training)
            rows.append({
                "codes": codes, "block": block, "precision": precision, "path": path, "runs as": chosen,
                "logit error": relative_error(logits, reference), "gradient error": grad_error,
                "inference ms": 1e3 * fast.seconds, "inference MFU": percent(flops / fast.seconds, peaks[precision]),
                "training ms": 1e3 * slow.seconds,
                "training MFU": percent(TRAINING_FLOPS_FACTOR * flops / slow.seconds, peaks[precision]),
                "inference MB": fast.peak_bytes / MB, "training MB": slow.peak_bytes / MB,
            })  # fmt: skip
    head.implementation = "auto"
    return rows


def main() -> None:
    args = parse_args()
    meter = Meter(torch.device(args.device), args.budget)
    peaks = {name: matmul_peak(meter, dtype or torch.float32, args.peak_size) for name, dtype in PRECISIONS.items()}
    rows = [row for codes in args.codes for block in args.block_size for row in check(args, meter, peaks, codes, block)]
    device = torch.cuda.get_device_name() if meter.device.type == "cuda" else "CPU"
    print(
        f"Label-attention head paths vs the naive head in fp32 ({device}, torch {torch.__version__}, "
        f"{args.config} config, one note of {args.tokens:,} tokens, 1/8 padding); errors relative to the largest "
        f"reference value; MFU against the matmul peak of this run: "
        + ", ".join(f"{name} {flops / 1e12:.3g} TFLOP/s" for name, flops in peaks.items() if flops is not None)
        + "\n"
    )
    printable = [{k: f"{v:.1e}" if "error" in k else v for k, v in row.items()} for row in rows]
    print(markdown(printable))
    output = args.output or Path(__file__).parent / f"head_paths_{meter.device.type}.json"
    output.write_text(json.dumps({"device": device, "peak_flops": peaks, "rows": rows}, indent=1))
    print(f"\nJSON: {output}")


if __name__ == "__main__":
    main()
