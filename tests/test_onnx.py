"""The ONNX Runtime backends: an export of the coding model that scores notes of one chunk or several as PyTorch does
(fp32: float noise; int8: close), used by the pipeline (with and without the package), the Endpoint handler and
`bert-xml-predict`."""

import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import pipeline

from modeling_bertxml import BertXMLForMultiLabelCoding, ICDCodingPipeline
from modeling_bertxml.model.handler import EndpointHandler
from modeling_bertxml.release.onnx_export import export_onnx
from modeling_bertxml.release.onnx_export import main as export_main
from modeling_bertxml.release.predict import main as predict_main
from tests.conftest import folder_state, run_in_fresh_interpreter, tiny_config
from tests.test_pipeline import assert_same_coding
from tests.test_predict import predict_command, read_output, write_notes

pytest.importorskip("onnxruntime")

NOTES = ["patient denies chest pain", " ".join(["history of type 2 diabetes mellitus hypertension"] * 6), ""]
INT8_SCORE_TOLERANCE = 0.05  # dynamic int8 rounds weights and activations: scores move, a little


@pytest.fixture(scope="module")
def onnx_folder(untrained_coder_folder: Path) -> Path:
    return export_onnx(untrained_coder_folder)


def test_onnx_scores_notes_of_one_and_several_chunks_as_pytorch(untrained_coder: ICDCodingPipeline,
                                                                onnx_folder: Path) -> None:  # fmt: skip
    encoded = untrained_coder.tokenizer(NOTES, padding=True, return_tensors="pt")
    assert encoded["input_ids"].shape[1] > 2 * untrained_coder.model.config.max_position_embeddings
    with torch.no_grad():
        logits, states = untrained_coder.score(encoded["input_ids"], encoded["attention_mask"])
        for backend, tolerance in (("onnx-fp32", 1e-5), ("onnx-int8", INT8_SCORE_TOLERANCE)):
            onnx_logits, onnx_states = untrained_coder.score(encoded["input_ids"], encoded["attention_mask"], backend)
            assert onnx_states.shape == states.shape
            assert (onnx_logits.sigmoid() - logits.sigmoid()).abs().max() < tolerance
    expected = untrained_coder(NOTES, top_k=2)
    # Its own tensor work runs on one PyTorch thread; the user's setting is back afterwards, after a failure too.
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)  # not 1, which the pipeline sets meanwhile
    try:
        assert_same_coding(untrained_coder(NOTES, top_k=2, backend="onnx-fp32", batch_size=2), expected)
        assert torch.get_num_threads() == threads + 1
        with pytest.raises(ValueError, match="no such ONNX file"):
            untrained_coder(NOTES, backend="onnx-fp32", onnx_dir=str(onnx_folder.parent))
        assert torch.get_num_threads() == threads + 1
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="backend must be one of"):
        untrained_coder(NOTES, backend="onnx")


def test_the_export_of_a_model_trained_with_dropout_runs_without_it(tmp_path: Path) -> None:
    """The tracer runs the wrapper in its own mode: a wrapper left in training mode would export dropout, and
    `check_export` refuses a graph that does not score as the model does."""
    BertXMLForMultiLabelCoding(tiny_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)).save_pretrained(
        tmp_path / "model"
    )
    assert sorted(path.name for path in export_onnx(tmp_path / "model").iterdir()) == ["model.onnx", "model_int8.onnx"]


FRESH_INTERPRETER = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling_bertxml"] = None  # the package must not be importable: remote code only
    from transformers import pipeline
    coder = pipeline("icd-coding", model=sys.argv[1], trust_remote_code=True, backend="onnx-int8")
    print(json.dumps(coder(json.loads(sys.argv[2]), top_k=2)))
    """
)


def test_onnx_runtime_takes_the_threads_pytorch_is_given(untrained_coder_folder: Path, onnx_folder: Path) -> None:
    """`accelerate launch --num_processes N` on a CPU gives each process its share of the cores (OMP_NUM_THREADS, so
    PyTorch's threads); with ONNX Runtime's own default of a thread per core in every process, two int8 processes on
    2 cores coded fewer notes/s than one."""
    coder = pipeline("icd-coding", model=str(untrained_coder_folder), pipeline_class=ICDCodingPipeline, device=-1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        coder(NOTES[:2], backend="onnx-int8")
    finally:
        torch.set_num_threads(threads)
    (session,) = coder._onnx_sessions.values()
    assert session.get_session_options().intra_op_num_threads == 1


def test_int8_codes_from_the_saved_folder_without_the_package_and_in_the_handler(
    untrained_coder: ICDCodingPipeline, untrained_coder_folder: Path, onnx_folder: Path, monkeypatch
) -> None:
    remote = run_in_fresh_interpreter(FRESH_INTERPRETER, str(untrained_coder_folder), json.dumps(NOTES),
                                      cwd=untrained_coder_folder.parent)  # fmt: skip
    monkeypatch.setenv("BERTXML_BACKEND", "onnx-int8")
    handled = EndpointHandler(str(untrained_coder_folder))({"inputs": NOTES, "parameters": {"top_k": 2}})
    assert json.loads(json.dumps(handled)) == remote
    expected = untrained_coder(NOTES, top_k=2)
    for note, expected_note in zip(remote, expected):
        scores = {item["code"]: item["score"] for item in note}
        assert len(scores) == len(expected_note)
        for item in expected_note:  # a near tie may swap the second code; a code kept scores within the tolerance
            if item["code"] in scores:
                assert scores[item["code"]] == pytest.approx(item["score"], abs=INT8_SCORE_TOLERANCE)


def test_predict_exports_into_its_output_dir_when_the_model_folder_has_no_export(
    untrained_coder_folder: Path, tmp_path: Path
) -> None:
    model = tmp_path / "read-only-model"
    os.symlink(untrained_coder_folder, model)  # the same model, without its onnx/ ...
    notes = tmp_path / "notes.jsonl"
    write_notes(notes, 9)
    hidden = untrained_coder_folder / "onnx"
    os.rename(hidden, tmp_path / "aside")
    try:
        predict_main(predict_command(model, notes, tmp_path / "fp32", "--backend", "onnx-fp32"))
        predict_main(predict_command(model, notes, tmp_path / "torch"))
    finally:
        os.rename(tmp_path / "aside", hidden)
    assert (tmp_path / "fp32" / "onnx" / "model_int8.onnx").is_file()
    assert_same_coding([row["codes"] for row in read_output(tmp_path / "fp32")],
                       [row["codes"] for row in read_output(tmp_path / "torch")])  # fmt: skip


def test_an_export_of_other_weights_is_refused_until_exported_again(untrained_coder_folder: Path,
                                                                     tmp_path: Path) -> None:  # fmt: skip
    """The model trained again in its folder leaves the old export beside it: coding with it would be silently the
    old model's."""
    folder = tmp_path / "coder"
    shutil.copytree(untrained_coder_folder, folder)
    export_onnx(folder)
    config = BertXMLForMultiLabelCoding.config_class.from_pretrained(folder)
    torch.manual_seed(1)
    BertXMLForMultiLabelCoding(config).save_pretrained(folder)  # retrained: other weights
    coder = pipeline("icd-coding", model=str(folder), pipeline_class=ICDCodingPipeline, device=-1)
    with pytest.raises(ValueError, match=f"exported from other weights .*onnx_export {folder}"):
        coder(NOTES[0], backend="onnx-int8")
    export_onnx(folder)
    coder = pipeline("icd-coding", model=str(folder), pipeline_class=ICDCodingPipeline, device=-1)
    assert_same_coding(coder(NOTES, top_k=2, backend="onnx-fp32"), coder(NOTES, top_k=2))


def test_a_cut_short_export_is_one_error_naming_it_and_the_command_to_export_again(onnx_folder: Path,
                                                                                   tmp_path: Path) -> None:  # fmt: skip
    """A file cut short (a full disk, a copy interrupted) is ONNX Runtime's InvalidProtobuf traceback otherwise."""
    folder = tmp_path / "coder"
    shutil.copytree(onnx_folder.parent, folder)
    int8 = folder / "onnx" / "model_int8.onnx"
    int8.write_bytes(int8.read_bytes()[: int8.stat().st_size // 2])
    notes = tmp_path / "notes.jsonl"
    write_notes(notes, 3)
    with pytest.raises(SystemExit, match=rf"{int8}: ONNX Runtime cannot load it .*onnx_export {folder}$"):
        predict_main(predict_command(folder, notes, tmp_path / "codes", "--backend", "onnx-int8"))
    export_onnx(folder)
    predict_main(predict_command(folder, notes, tmp_path / "codes", "--backend", "onnx-int8"))  # the same run, resumed
    assert len(read_output(tmp_path / "codes")) == 3


def test_a_failed_export_keeps_the_previous_one_and_a_killed_ones_files_go(untrained_coder_folder: Path,
                                                                          tmp_path: Path, monkeypatch) -> None:  # fmt: skip
    folder = tmp_path / "coder"
    shutil.copytree(untrained_coder_folder, folder)
    before = {path.name: path.read_bytes() for path in export_onnx(folder).iterdir()}
    leftover = folder / ".onnx.tmp"  # what an export killed while writing leaves
    leftover.mkdir()
    (leftover / "model.onnx").write_bytes(b"half a graph")

    def wrong_export(model: torch.nn.Module, path: Path) -> float:
        raise RuntimeError(f"{path}: the export is wrong")

    monkeypatch.setattr("modeling_bertxml.release.onnx_export.check_export", wrong_export)
    with pytest.raises(RuntimeError, match="the export is wrong"):
        export_onnx(folder)
    assert {path.name: path.read_bytes() for path in (folder / "onnx").iterdir()} == before
    assert not leftover.exists()


def test_an_export_never_replaces_a_folder_that_holds_other_files(untrained_coder_folder: Path, tmp_path: Path,
                                                                   capsys) -> None:  # fmt: skip
    """It replaces its folder whole: `--onnx_dir` naming the model's own folder would have deleted the model."""
    folder = tmp_path / "coder"
    shutil.copytree(untrained_coder_folder, folder)
    before = folder_state(folder)
    with pytest.raises(SystemExit):
        export_main([str(folder), "--onnx_dir", str(folder)])
    assert "holds files that are not an ONNX export's (e.g. config.json)" in capsys.readouterr().err
    assert folder_state(folder) == before


def test_a_coder_of_several_queries_per_code_exports_scoring_as_pytorch(tmp_path: Path) -> None:
    """Each code's best query is chosen in the graph too: `check_export` refuses logits that differ from PyTorch's."""
    BertXMLForMultiLabelCoding(tiny_config(label_queries_per_code=3)).save_pretrained(tmp_path / "model")
    assert sorted(path.name for path in export_onnx(tmp_path / "model").iterdir()) == ["model.onnx", "model_int8.onnx"]


def test_the_export_cli_names_a_folder_that_holds_no_model(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        export_main([str(tmp_path / "no_such_folder")])
    assert "no_such_folder: not a model folder (no config.json)" in capsys.readouterr().err
