"""Speed and memory of BERT-XML: the encoder alone, its label-attention head, and the naive head, on CPU or CUDA.

    python benchmarks/bench_model.py                       # docs/benchmarks.md's tables (8.5 min, 2 shared cores)
    python benchmarks/bench_model.py --configs tiny --lengths 512 --codes 50 1000   # a slice
    bash benchmarks/gpu_check.sh                           # the CUDA run (bf16 autocast)

The encoder's cost does not depend on the number of codes and the head's does not depend on the encoder's depth, so
each is timed alone: the encoder on token ids, the head on encoder-shaped states. "Model" figures add the two; the
end-to-end table times `BertXMLForMultiLabelCoding` itself to check that sum. Every case is timed in its steady
state (warm-up runs untimed, CUDA events on a GPU: measure.py). FLOPs are counted analytically
(modeling_bertxml.training.throughput, the head's flops_per_token) and every row carries its MFU: a fraction of this
machine's matmul peak, measured in the same run. Prints markdown tables and writes every number (wall times too) to a
JSON file.
"""

import os
import sys
from pathlib import Path

# Before torch loads OpenMP: threads that wait sleep rather than spin, so CPU time counts work only (see measure.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/bench_model.py` from anywhere

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from benchmarks.measure import Measurement, Meter, matmul_peak  # noqa: E402
from benchmarks.naive_head import naive_label_attention  # noqa: E402
from modeling_bertxml import (  # noqa: E402
    BertXMLConfig,
    BertXMLForMultiLabelCoding,
    BertXMLLabelWiseHead,
    BertXMLModel,
)
from modeling_bertxml.training.throughput import TRAINING_FLOPS_FACTOR, encoder_flops  # noqa: E402

CONFIGS = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}
DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MB = 2**20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--lengths", nargs="+", type=int, default=[512, 2048, 4096], help="tokens per note")
    parser.add_argument("--codes", nargs="+", type=int, default=[50, 1000, 10_000, 74_736])
    parser.add_argument("--modes", nargs="+", choices=["inference", "training"], default=["inference", "training"])
    parser.add_argument("--batch_size", type=int, default=1, help="notes per batch")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--autocast", choices=list(DTYPES), default="none", help="mixed precision for every case")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of repetitions per case (see measure.py)")
    parser.add_argument("--peak_size", type=int, help="side of the peak's square matmul (default 8192 CUDA, 4096 CPU)")
    parser.add_argument(
        "--naive_training_max_scores",
        type=float,
        default=2**26,
        help="skip naive-head training above this many batch x codes x tokens scores (slow, several GB)",
    )
    parser.add_argument("--whole_codes", nargs="*", type=int, default=[10_000, 74_736], help="end-to-end check")
    parser.add_argument("--variant_codes", type=int, default=10_000, help="codes for the head-variant table")
    parser.add_argument("--no_variants", action="store_true")
    parser.add_argument("--compile", action="store_true", help="add torch.compile rows to the variant table")
    parser.add_argument("--output", type=Path, help="JSON file (default benchmarks/results_<device>.json)")
    return parser.parse_args()


def make_config(name: str, codes: int = 1, **head_options) -> BertXMLConfig:
    """A note of up to 8 x 512 tokens, with `codes` labels."""
    return BertXMLConfig(**CONFIGS[name], max_position_embeddings=512, max_chunks=8, num_labels=codes, **head_options)


def make_head(config: BertXMLConfig, device: torch.device) -> BertXMLLabelWiseHead:
    head = BertXMLLabelWiseHead(config).to(device)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.normal_(std=config.initializer_range)
    return head


class Bench:
    """Shared state of one run: device, precision, meter, the measured peak and the note inputs."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.device = args, torch.device(args.device)
        self.dtype = DTYPES[args.autocast]
        self.meter = Meter(self.device, args.budget)
        precisions = {"fp32": torch.float32, "bf16": torch.bfloat16}
        if self.dtype is not None:
            precisions[args.autocast] = self.dtype
        self.peak = {name: matmul_peak(self.meter, dtype, args.peak_size) for name, dtype in precisions.items()}

    def autocast(self, dtype: torch.dtype | None = None) -> contextlib.AbstractContextManager:
        """Autocast to `dtype` (default: the run's); float32 or no dtype: none."""
        dtype = dtype or self.dtype
        if dtype in (None, torch.float32):
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def ids(self, tokens: int) -> torch.Tensor:
        return torch.randint(5, 30_000, (self.args.batch_size, tokens), device=self.device)

    def states(self, config: BertXMLConfig, tokens: int, training: bool) -> torch.Tensor:
        shape = (self.args.batch_size, tokens, config.hidden_size)
        return torch.randn(shape, device=self.device).requires_grad_(training)

    def mask(self, tokens: int) -> torch.Tensor:
        return torch.ones(self.args.batch_size, tokens, dtype=torch.long, device=self.device)

    def measure(
        self, forward: Callable[[], torch.Tensor], module: nn.Module, mode: str, dtype: torch.dtype | None = None
    ) -> Measurement:
        """Times `forward` under no_grad, or with a backward pass into `module`'s parameters (and its inputs)."""
        module.train(mode == "training")

        def inference() -> None:
            with torch.no_grad(), self.autocast(dtype):
                forward()

        def training() -> None:
            module.zero_grad(set_to_none=True)
            with self.autocast(dtype):
                out = forward()
            out.float().square().mean().backward()

        return self.meter.measure(training if mode == "training" else inference)


def row(bench: Bench, measurement: Measurement, tokens: int, flops: int, mode: str, **keys) -> dict:
    flops *= TRAINING_FLOPS_FACTOR if mode == "training" else 1
    return dict(
        keys,
        mode=mode,
        tokens=tokens,
        seconds=measurement.seconds,
        wall_seconds=measurement.wall_seconds,
        runs=measurement.runs,
        peak_mb=measurement.peak_bytes / MB,
        tokens_per_s=bench.args.batch_size * tokens / measurement.seconds,
        gflops=flops * bench.args.batch_size / 1e9,
    )


def bench_encoders(bench: Bench, cases: list[tuple[str, int, str]]) -> list[dict]:
    rows, models = [], {}
    for name, tokens, mode in tqdm(cases, desc="encoder"):
        if name not in models:
            models = {name: BertXMLModel(make_config(name)).to(bench.device)}  # one model in memory at a time
        encoder, ids, mask = models[name], bench.ids(tokens), bench.mask(tokens)
        measurement = bench.measure(lambda: encoder(ids, attention_mask=mask).last_hidden_state, encoder, mode)
        rows.append(row(bench, measurement, tokens, encoder_flops(encoder.config, tokens), mode, config=name))
    return rows


def bench_heads(bench: Bench, cases: list[tuple[str, int, int, str]]) -> list[dict]:
    """The model's head and the naive head on the same parameters and states."""
    rows = []
    for name, codes, tokens, mode in tqdm(cases, desc="head"):
        config = make_config(name, codes)
        head = make_head(config, bench.device)
        states, mask = bench.states(config, tokens, mode == "training"), bench.mask(tokens)
        fast = bench.measure(lambda: head(states, mask)[0], head, mode)
        result = row(bench, fast, tokens, head.flops_per_token * tokens, mode, config=name, codes=codes)
        scores = bench.args.batch_size * codes * tokens
        if mode == "training" and scores > bench.args.naive_training_max_scores:
            result.update(naive_seconds=None, naive_peak_mb=None)
        else:
            naive = bench.measure(lambda: naive_label_attention(head, states, mask), head, mode)
            result.update(naive_seconds=naive.seconds, naive_peak_mb=naive.peak_bytes / MB)
        rows.append(result)
        del head, states
    return rows


def bench_whole(bench: Bench, name: str, tokens: int) -> list[dict]:
    """`BertXMLForMultiLabelCoding` end to end (inference), to check that encoder + head adds up."""
    rows = []
    for codes in tqdm(bench.args.whole_codes, desc="model"):
        model = BertXMLForMultiLabelCoding(make_config(name, codes)).to(bench.device)
        ids, mask = bench.ids(tokens), bench.mask(tokens)
        measurement = bench.measure(lambda: model(ids, attention_mask=mask).logits, model, "inference")
        flops = encoder_flops(model.config, tokens) + model.label_head.flops_per_token * tokens
        rows.append(row(bench, measurement, tokens, flops, "inference", config=name, codes=codes))
        del model
    return rows


def default_forward(head: BertXMLLabelWiseHead, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return head(states, mask)[0]


def explicit_forward(head: BertXMLLabelWiseHead, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return head(states, mask, output_attentions=True)[0]


@dataclass
class Variant:
    label: str
    label_attention_dim: int | None = None
    forward: Callable[[BertXMLLabelWiseHead, torch.Tensor, torch.Tensor], torch.Tensor] = default_forward
    dtype: torch.dtype | None = None  # autocast; None: the run's precision
    compile: bool = False
    implementation: str = "auto"  # the head's label_attention_implementation


def variants(bench: Bench) -> list[Variant]:
    """Ways to run the head: exact ones (same function as the naive head) and LAAT's cheaper scores (another model)."""
    chosen = [
        Variant("exact, default (auto)"),
        Variant("exact: SDPA per block", implementation="sdpa"),
        Variant("exact: explicit blocks", implementation="blocks"),
        Variant("exact: explicit blocks + attentions (output_label_attentions)", forward=explicit_forward),
        Variant("exact: naive, one B x T x L tensor", forward=naive_label_attention),
        Variant("LAAT d_a=128: explicit blocks", 128),
        Variant("LAAT d_a=256: explicit blocks", 256),
    ]
    other = torch.float32 if bench.dtype is not None else torch.bfloat16
    name = "fp32 (no autocast)" if bench.dtype is not None else "bf16 autocast"
    chosen += [
        Variant(f"exact, {name}, default (auto)", dtype=other),
        Variant(f"exact, {name}: SDPA per block", dtype=other, implementation="sdpa"),
        Variant(f"exact, {name}: explicit blocks", dtype=other, implementation="blocks"),
    ]
    if bench.dtype is None:
        chosen.append(Variant("LAAT d_a=128, bf16 autocast", 128, dtype=torch.bfloat16))
    if bench.args.compile:
        chosen.append(Variant("exact, default + torch.compile", compile=True))
        chosen.append(Variant("LAAT d_a=128 + torch.compile", 128, compile=True))
    return chosen


def bench_variants(bench: Bench, name: str, tokens: int, encoder_seconds: dict[str, float]) -> list[dict]:
    """Each variant at one size (inference): time, share of the encoder in the same precision, error vs naive fp32."""
    rows, heads, references = [], {}, {}
    states, mask = bench.states(make_config(name), tokens, False), bench.mask(tokens)
    for variant in tqdm(variants(bench), desc="variants"):
        config = make_config(name, bench.args.variant_codes, label_attention_dim=variant.label_attention_dim)
        if variant.label_attention_dim not in heads:
            heads[variant.label_attention_dim] = head = make_head(config, bench.device)
            with torch.no_grad():
                references[variant.label_attention_dim] = naive_label_attention(head, states, mask)
        head, reference = heads[variant.label_attention_dim], references[variant.label_attention_dim]
        head.implementation = variant.implementation
        forward = torch.compile(variant.forward) if variant.compile else variant.forward
        with torch.no_grad(), bench.autocast(variant.dtype):
            path = head._path(states, variant.forward is explicit_forward)
            compile_start = time.perf_counter()
            error = (forward(head, states, mask).float() - reference).abs().max().item()
            compile_seconds = time.perf_counter() - compile_start if variant.compile else None
        measurement = bench.measure(lambda: forward(head, states, mask), head, "inference", variant.dtype)
        precision = _precision_name(variant.dtype or bench.dtype)
        if precision not in encoder_seconds:
            encoder_seconds[precision] = _encoder_seconds(bench, name, tokens, variant.dtype)
        result = row(bench, measurement, tokens, head.flops_per_token * tokens, "inference", config=name)
        result.update(
            variant=variant.label,
            path="naive" if variant.forward is naive_label_attention else path,
            precision=precision,
            encoder_seconds=encoder_seconds[precision],
            max_abs_error=error,
            compile_seconds=compile_seconds,
        )
        rows.append(result)
    return rows


def _encoder_seconds(bench: Bench, name: str, tokens: int, dtype: torch.dtype | None) -> float:
    encoder, ids, mask = BertXMLModel(make_config(name)).to(bench.device), bench.ids(tokens), bench.mask(tokens)
    forward = lambda: encoder(ids, attention_mask=mask).last_hidden_state  # noqa: E731
    return bench.measure(forward, encoder, "inference", dtype).seconds


def _precision_name(dtype: torch.dtype | None) -> str:
    return next((name for name, value in DTYPES.items() if value == dtype and value), "fp32")


def sdpa_backends(device: torch.device, dtype: torch.dtype, hidden: int) -> list[str]:
    """The SDPA kernels that accept the head's problem: one head of size `hidden`, a boolean padding mask, scale 1."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    queries = torch.randn(1, 1, 64, hidden, device=device, dtype=dtype)
    states = torch.randn(1, 1, 256, hidden, device=device, dtype=dtype)
    mask = torch.ones(1, 1, 1, 256, dtype=torch.bool, device=device)
    accepted = []
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
        with warnings.catch_warnings(), contextlib.suppress(RuntimeError), sdpa_kernel(backend):
            warnings.simplefilter("ignore")
            nn.functional.scaled_dot_product_attention(queries, states, states, attn_mask=mask, scale=1.0)
            accepted.append(backend.name.lower())
    return accepted or ["math (materialises each block's scores)"]


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with open("/proc/cpuinfo") as handle:
        model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "CPU")
    return f"{model} ({platform.machine()}), {torch.get_num_threads()} threads"


def markdown(rows: list[dict]) -> str:
    """A markdown table whose columns are the keys of the rows; None prints as a dash."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    for item in rows:
        lines.append("| " + " | ".join(_cell(value) for value in item.values()) + " |")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):  # three significant figures, thousands separators from 100 on
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _peak_text(name: str, flops: float | None) -> str:
    if flops is None:
        return f"{name} none (no {name} matmul kernels on this device: no {name} MFU)"
    return f"{name} {flops / 1e9:,.0f} GFLOP/s"


def percent(part: float | None, whole: float | None) -> str | None:
    return None if part is None or whole is None else f"{100 * part / whole:.1f} %"


def encoder_table(results: dict, peak: float) -> str:
    return markdown([
        {
            "config": r["config"], "mode": r["mode"], "tokens": r["tokens"], "ms": 1e3 * r["seconds"],
            "tokens/s": r["tokens_per_s"], "MFU": percent(r["gflops"] * 1e9 / r["seconds"], peak),
            "extra peak MB": r["peak_mb"],
        }
        for r in results["encoder"]
    ])


def head_table(results: dict, peak: float, encoders: dict[tuple, dict]) -> str:
    rows = []
    for r in results["head"]:
        encoder = encoders.get((r["config"], r["mode"], r["tokens"]))
        model_s = encoder and encoder["seconds"] + r["seconds"]
        rows.append({
            "config": r["config"], "mode": r["mode"], "tokens": r["tokens"], "codes": r["codes"],
            "head ms": 1e3 * r["seconds"], "naive ms": r["naive_seconds"] and 1e3 * r["naive_seconds"],
            "head MFU": percent(r["gflops"] * 1e9 / r["seconds"], peak),
            "naive MFU": r["naive_seconds"] and percent(r["gflops"] * 1e9 / r["naive_seconds"], peak),
            "head / encoder": percent(r["seconds"], encoder and encoder["seconds"]),
            "naive / encoder": percent(r["naive_seconds"], encoder and encoder["seconds"]),
            "model tokens/s": model_s and results["settings"]["batch_size"] * r["tokens"] / model_s,
            "model MFU": model_s and percent((encoder["gflops"] + r["gflops"]) * 1e9 / model_s, peak),
            "head MB": r["peak_mb"], "naive MB": r["naive_peak_mb"],
        })
    return markdown(rows)


def whole_table(results: dict, peak: float, encoders: dict[tuple, dict]) -> str:
    heads = {(r["config"], r["mode"], r["tokens"], r["codes"]): r for r in results["head"]}
    rows = []
    for r in results["whole"]:
        encoder = encoders.get((r["config"], "inference", r["tokens"]))
        head = heads.get((r["config"], "inference", r["tokens"], r["codes"]))
        rows.append({
            "config": r["config"], "tokens": r["tokens"], "codes": r["codes"], "model ms": 1e3 * r["seconds"],
            "encoder + head ms": encoder and head and 1e3 * (encoder["seconds"] + head["seconds"]),
            "tokens/s": r["tokens_per_s"], "MFU": percent(r["gflops"] * 1e9 / r["seconds"], peak),
            "extra peak MB": r["peak_mb"], "encoder's extra peak MB": encoder and encoder["peak_mb"],
        })
    return markdown(rows)


def variant_table(results: dict) -> str:
    return markdown([
        {
            "variant": r["variant"], "path": r["path"], "precision": r["precision"], "head ms": 1e3 * r["seconds"],
            "encoder ms": 1e3 * r["encoder_seconds"], "head / encoder": percent(r["seconds"], r["encoder_seconds"]),
            "MFU": percent(r["gflops"] * 1e9 / r["seconds"], results["peak_flops"][r["precision"]]),
            "extra peak MB": r["peak_mb"], "max abs error vs naive fp32": f"{r['max_abs_error']:.1e}",
            "compile s": r["compile_seconds"],
        }
        for r in results["variants"]
    ])


def tables(results: dict) -> str:
    """The markdown that docs/benchmarks.md shows."""
    settings, peak = results["settings"], results["peak_flops"][results["precision"]]
    encoders = {(r["config"], r["mode"], r["tokens"]): r for r in results["encoder"]}
    out = [
        f"Device: {results['machine']}; torch {results['torch']}; precision {results['precision']}; "
        f"{settings['batch_size']} note(s) per batch; steady-state times ({results['warmup_runs']} warm-up runs "
        f"untimed{', CUDA events' if results['machine_is_cuda'] else ', CPU time'}); MFU against the matmul peak "
        f"measured in this run ({results['precision']} rows against the {results['precision']} peak): "
        + ", ".join(_peak_text(name, flops) for name, flops in results["peak_flops"].items())
        + f"; SDPA kernels that take the head: {', '.join(results['sdpa_backends'])}.",
        "\n**Encoder alone** (`BertXMLModel`)\n",
        encoder_table(results, peak),
        "\n**Label-attention head vs the naive head** (model = encoder + head)\n",
        head_table(results, peak, encoders),
    ]
    if results["whole"]:
        out += ["\n**End to end** (`BertXMLForMultiLabelCoding`, inference)\n", whole_table(results, peak, encoders)]
    if results["variants"]:
        first = results["variants"][0]
        out.append(
            f"\n**Ways to run the head** ({first['config']}, {first['tokens']:,} tokens, "
            f"{settings['variant_codes']:,} codes, inference)\n"
        )
        out.append(variant_table(results))
    return "\n".join(out)


def main() -> None:
    args = parse_args()
    bench = Bench(args)
    largest, longest, precision = args.configs[-1], max(args.lengths), _precision_name(bench.dtype)
    grid = [(name, mode, tokens) for name in args.configs for mode in args.modes for tokens in args.lengths]
    encoder = bench_encoders(bench, [(name, tokens, mode) for name, mode, tokens in grid])
    head = bench_heads(bench, [(name, codes, tokens, mode) for name, mode, tokens in grid for codes in args.codes])
    whole = bench_whole(bench, largest, longest)
    reference = (largest, "inference", longest)
    encoder_seconds = {precision: r["seconds"] for r in encoder if (r["config"], r["mode"], r["tokens"]) == reference}
    results = dict(
        machine=machine(bench.device),
        machine_is_cuda=bench.device.type == "cuda",
        warmup_runs=bench.meter.warmup,
        torch=torch.__version__,
        precision=precision,
        settings={key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        peak_flops=bench.peak,
        sdpa_backends=sdpa_backends(bench.device, bench.dtype or torch.float32, CONFIGS[largest]["hidden_size"]),
        encoder=encoder,
        head=head,
        whole=whole,
        variants=[] if args.no_variants else bench_variants(bench, largest, longest, encoder_seconds),
    )
    output = args.output or Path(__file__).parent / f"results_{bench.device.type}.json"
    output.write_text(json.dumps(results, indent=1))
    print(tables(results))
    print(f"\nAll numbers, wall times included: {output}")


if __name__ == "__main__":
    main()
