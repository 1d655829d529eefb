"""Export a coding model to ONNX for ONNX Runtime on a CPU, in fp32 and dynamically quantized to int8.

    python -m modeling_bertxml.release.onnx_export runs/coder            # writes runs/coder/onnx/
    python -m modeling_bertxml.release.onnx_export runs/coder --onnx_dir elsewhere/

The graph is `NoteScorer` (the pipeline's scoring: the encoder, then the scores of every code), traced by
`torch.onnx`'s TorchScript exporter on a note of several chunks, so that chunking, the skipped all-padding chunks and
the label blocks are in the graph; batch and length are dynamic axes. `optimum`'s exporters know stock architectures,
not this custom model, so they do not fit here. The fp32 graph is checked against PyTorch on a note of several
chunks and a short one before it is kept; int8 is `onnxruntime.quantization.quantize_dynamic` (int8 weights of the
linear layers, activations quantized per batch at run time). Both record the sha256 of the model's safetensors files
(`WEIGHTS_DIGEST_KEY`), so that the pipeline refuses an export of other weights than its model's (the model trained
again in its folder). Both files are written into a hidden folder beside it that is renamed into place, so a kill or a
failure leaves the previous folder or none (the next export removes what a killed one left). Since the folder is
replaced whole, one that holds other files than an export's is refused. In a run's output dir, `onnx/` is recorded in
its manifest (`bert-xml-push` uploads it).
"""

import argparse
import logging
import shutil
import warnings
from pathlib import Path

import torch

from ..model.pipeline_bertxml import (
    ONNX_DIR, ONNX_FILES, SCORER_INPUTS, SCORER_OUTPUTS, WEIGHTS_DIGEST_KEY, NoteScorer, check_trained_coder,
    onnx_cpu_session, weights_digest,
)  # fmt: skip
from ..training.arguments import model_folder
from ..training.atomic import OutputDirError, fresh_staging, swap_in
from ..training.checkpointing import is_run_dir, record_output

OPSET = 17
CHECK_TOLERANCE = 1e-3  # fp32 ONNX Runtime vs PyTorch logits: float noise only (1e-6 measured on the tiny model)


def example_inputs(config, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of 2 notes of `length` tokens, the second half padding (a padded chunk or more)."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, config.vocab_size, (2, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, length // 2 + 1 :] = 0
    return input_ids, attention_mask


def trace_length(config) -> int:
    """Several chunks where the model reads several (the chunking must be traced, not a single-chunk shortcut)."""
    chunk = config.max_position_embeddings
    return min(config.max_note_length, 2 * chunk + 3) if config.max_chunks > 1 else chunk


def export_fp32(model: torch.nn.Module, path: Path) -> None:
    axes = {name: {0: "batch", 1: "length"} for name in (*SCORER_INPUTS, "last_hidden_state")}
    axes["logits"] = {0: "batch"}
    with warnings.catch_warnings():
        # The tracer warns at each Python branch on a shape; traced on several chunks, each takes the branch that holds
        # for any length (pad to whole chunks, skip all-padding chunks), which `check_export` confirms on two lengths.
        # The indices it warns may be negative are a boolean mask's (which chunks to encode).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator of advanced indexing")
        # The TorchScript exporter is chosen (`dynamo=False`): the dynamo one's int8 graph ran slower on the demo model
        # (docs/benchmarks.md). Its deprecation notice is for us, not for whoever exports a model.
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        scorer = NoteScorer(model).eval()  # traced in the wrapper's own mode, which it sets on the model: dropout off
        # Eager attention adds the padding mask to the scores; SDPA's export selects them with Where and IsNaN over
        # every score of every head, 13 % of ONNX Runtime's time on an int8 BERT-base note (same logits).
        implementation = model.config._attn_implementation
        model.set_attn_implementation("eager")
        try:
            torch.onnx.export(
                scorer, example_inputs(model.config, trace_length(model.config)), str(path), dynamo=False,
                input_names=list(SCORER_INPUTS), output_names=list(SCORER_OUTPUTS), dynamic_axes=axes,
                opset_version=OPSET,
            )  # fmt: skip
        finally:
            model.set_attn_implementation(implementation)


def check_export(model: torch.nn.Module, path: Path) -> float:
    """The largest |logit| difference between ONNX Runtime and PyTorch on a long and a short batch; raises above
    `CHECK_TOLERANCE`."""
    session = onnx_cpu_session(str(path))
    worst = 0.0
    for length in (trace_length(model.config) + model.config.max_position_embeddings // 2, 5):
        input_ids, attention_mask = example_inputs(model.config, min(length, model.config.max_note_length))
        with torch.no_grad():
            expected, _ = NoteScorer(model)(input_ids, attention_mask)
        (logits,) = session.run(["logits"], {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})
        worst = max(worst, (torch.from_numpy(logits) - expected).abs().max().item())
    if worst > CHECK_TOLERANCE:
        raise RuntimeError(f"{path}: ONNX Runtime's logits differ from PyTorch's by {worst:.2g}; the export is wrong")
    return worst


def write_exports(model: torch.nn.Module, model_folder: str | Path, folder: Path) -> None:
    """Write `ONNX_FILES` into `folder`: fp32 checked against PyTorch, then int8 quantized from it."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32, int8 = folder / ONNX_FILES["onnx-fp32"], folder / ONNX_FILES["onnx-int8"]
    export_fp32(model, fp32)
    check_export(model, fp32)
    # quantize_dynamic warns on the root logger, with whole protobuf dumps, about every tensor it leaves in fp32
    # (the chunk-selection indices): expected, and pages of noise in a predict log.
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)
    digest = weights_digest(str(model_folder))
    for path in (fp32, int8) if digest else ():  # the pipeline refuses an export of other weights than its model's
        graph = onnx.load(str(path))
        graph.metadata_props.add(key=WEIGHTS_DIGEST_KEY, value=digest)
        onnx.save(graph, str(path))


def export_onnx(model_folder: str | Path, onnx_dir: str | Path | None = None) -> Path:
    """Write `ONNX_FILES` (fp32 and int8) for the model in `model_folder` into `onnx_dir` (default its `onnx/`)."""
    from ..model.modeling_bertxml import BertXMLForMultiLabelCoding

    check_trained_coder(BertXMLForMultiLabelCoding.config_class.from_pretrained(model_folder), str(model_folder))
    default = onnx_dir is None
    onnx_dir = Path(model_folder) / ONNX_DIR if default else Path(onnx_dir)
    # The export replaces the folder whole: one holding anything else (the model's own folder, a user's) is refused.
    exported = set(ONNX_FILES.values())
    if onnx_dir.is_dir() and (others := sorted(path.name for path in onnx_dir.iterdir() if path.name not in exported)):
        raise OutputDirError(
            f"{onnx_dir} holds files that are not an ONNX export's (e.g. {others[0]}), and an export replaces the "
            "folder whole: choose an empty or new folder"
        )
    if default and is_run_dir(Path(model_folder)):  # a run's output dir: recorded as bert-xml's (deletable, pushed)
        record_output(model_folder, ONNX_DIR)
    onnx_dir.parent.mkdir(parents=True, exist_ok=True)
    model = BertXMLForMultiLabelCoding.from_pretrained(model_folder).eval()
    staging = fresh_staging(onnx_dir)
    try:
        write_exports(model, model_folder, staging)
        swap_in(staging, onnx_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return onnx_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export a coding model to ONNX (fp32 and int8) for CPU serving.")
    parser.add_argument("model_folder", type=model_folder, help="A folder saved by train.py.")
    parser.add_argument("--onnx_dir", default=None, help="Where to write the files (default: MODEL_FOLDER/onnx).")
    args = parser.parse_args(argv)
    try:
        print(f"Wrote {', '.join(ONNX_FILES.values())} -> {export_onnx(args.model_folder, args.onnx_dir)}")
    except (OutputDirError, ValueError, OSError) as error:  # another model's folder, one without weights
        parser.error(str(error))


if __name__ == "__main__":
    main()
