"""Hub push: private by default, refused when files look like they hold patient identifiers, clear when offline.

Pushes go through the real `huggingface_hub` client to the loopback Hub in `tests/hub_server.py`.
"""

import argparse
import json
import logging
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import RepositoryNotFoundError
from safetensors.torch import save_file
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from modeling_bertxml.training.checkpointing import Manifest
from modeling_bertxml.release.hub import (
    Finding,
    HubPushError,
    IdentifiersFoundError,
    add_hub_args,
    check_push_access,
    main,
    push_folder,
    push_from_args,
    scan_for_identifiers,
)
from tests.hub_server import closed_port_endpoint, loopback_hub, point_hub_client_at  # noqa: F401 (fixture)

REPO_ID = "hospital/bert-xml-icd10"


def save_tiny_model(folder: Path) -> Path:
    """Any folder written by `save_pretrained` will do: a 2-layer, 32-wide BERT classifier stands in for BERT-XML."""
    config = BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_labels=3
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# Tiny coder\n\nmicro_f1: 0.8123456\n")
    (folder / "eval_results.json").write_text(json.dumps({"micro_f1": 0.8123456, "num_notes": 1234567}, indent=2))
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def logits(model_id: str | Path, **kwargs) -> torch.Tensor:
    model = AutoModelForSequenceClassification.from_pretrained(model_id, **kwargs).eval()
    with torch.no_grad():
        return model(torch.tensor([[2, 7, 11, 3, 0]]), attention_mask=torch.tensor([[1, 1, 1, 1, 0]])).logits


def kinds(folder: Path) -> list[str]:
    return [finding.kind for finding in scan_for_identifiers(folder)]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("MRN: 1234567", ["MRN"]),
        ("mr# A12345", ["MRN"]),
        ("Medical record number 00123456", ["MRN"]),
        ("Patient 12345678 seen in clinic", ["MRN"]),
        ("call (212) 555-0199 after discharge", ["phone number"]),
        ("phone 212-555-0199", ["phone number"]),
        ("+1 212.555.0199", ["phone number"]),
        ("DOB 01/02/1960", ["date of birth"]),
        ("date of birth: 1960-01-02", ["date of birth"]),
        ("born on March 3, 1960", ["date of birth"]),
        ("D.O.B. 3 Mar 1960", ["date of birth"]),
        # Not identifiers: metrics, versions, floats, hashes, sizes, codes, release dates, mRNA.
        ("micro_f1 0.8123456 and 1.2345678e-05", []),
        ("transformers 5.24.0, torch 2.13.0, 74,736 codes", []),
        ("commit 9b6da5d60123456789e4fcdd, sha256 7081234567ab", []),
        ("E11.9 Z79.4 S72.001A", []),
        ("trained 2026-04-01 on notes from 2019", []),
        ("mRNA 123456789012345", []),
    ],
)
def test_identifier_patterns(tmp_path: Path, text: str, expected: list[str]) -> None:
    (tmp_path / "README.md").write_text(f"# Card\n{text}\n")
    assert kinds(tmp_path) == expected


def test_json_numbers_are_metadata_but_json_text_is_scanned(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"vocab_size": 250002, "num_notes": 1234567, "micro_f1": 0.8123456, "mrn": 7654321}, indent=2)
    )
    (tmp_path / "tokenizer.json").write_text(
        json.dumps({"model": {"vocab": {"[PAD]": 0, "diabetes": 100000, "1234567": 100001}}}, indent=2)
    )
    (tmp_path / "eval_results.json").write_text(json.dumps({"example": "seen at 212 555 0199, dob: 1960-01-02"}))
    assert scan_for_identifiers(tmp_path) == [
        Finding("config.json", 5, "MRN"),  # labelled, so a number value still counts
        Finding("eval_results.json", 1, "date of birth"),
        Finding("eval_results.json", 1, "phone number"),
        Finding("tokenizer.json", 6, "MRN"),  # a learned 7-digit token: the vocabulary memorised a number
    ]


def test_saved_model_folder_is_clean_and_tensor_data_is_not_read_as_text(tmp_path: Path) -> None:
    folder = save_tiny_model(tmp_path / "model")
    save_file({"w": torch.arange(1234567, 1234567 + 64, dtype=torch.int64)}, folder / "extra.safetensors")
    (folder / "optimizer.bin").write_bytes(b"\0\x01MRN: 1234567")  # not a model repo file: never pushed
    assert scan_for_identifiers(folder) == []


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-8-sig"])
def test_text_in_utf16_or_utf32_is_decoded_and_scanned(tmp_path: Path, encoding: str) -> None:
    (tmp_path / "README.md").write_text("# Card\nExample: MRN 4829113, DOB 01/02/1960, call 212-555-0199\n",
                                        encoding=encoding)
    assert kinds(tmp_path) == ["MRN", "date of birth", "phone number"]


def test_safetensors_metadata_is_scanned_and_unreadable_files_are_refused_even_with_override(
    loopback_hub, tmp_path: Path
) -> None:
    folder = save_tiny_model(tmp_path / "model")
    save_file({"w": torch.zeros(2)}, folder / "extra.safetensors", metadata={"note": "MRN: 4829113"})
    (folder / "config.json").write_bytes(b"\x00\x93\xff MRN 4829113 \x00\x00\x01\x02" * 64)
    assert scan_for_identifiers(folder) == [
        Finding("config.json", 1, "binary file that cannot be scanned"), Finding("extra.safetensors", 1, "MRN"),
    ]
    with pytest.raises(IdentifiersFoundError, match="config.json:1: binary file that cannot be scanned"):
        push_folder(folder, REPO_ID, token=loopback_hub.token, allow_phi=True)
    assert loopback_hub.repos == {}


def test_push_is_private_and_loads_with_the_same_logits(loopback_hub, tmp_path: Path) -> None:
    folder = save_tiny_model(tmp_path / "model")
    model_files = set(snapshot(folder))
    (folder / "step_10").mkdir()
    (folder / "step_10" / "notes.txt").write_text("MRN: 1234567\n")  # not a model repo file: stays local

    url = push_folder(folder, REPO_ID, token=loopback_hub.token)

    assert url == f"{loopback_hub.endpoint}/{REPO_ID}"
    assert HfApi().model_info(REPO_ID, token=loopback_hub.token).private
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info(REPO_ID, token=False)
    assert sorted(loopback_hub.repos[REPO_ID].files) == sorted(model_files)
    cache = tmp_path / "cache"
    assert torch.equal(logits(REPO_ID, token=loopback_hub.token, cache_dir=cache), logits(folder))
    assert (cache / "models--hospital--bert-xml-icd10").is_dir()  # really loaded from the Hub, not from disk


@pytest.mark.parametrize(
    "existing, private, expected_private",
    [(None, True, True), (False, True, True), (True, True, True), (None, False, False)],
    ids=["new", "existing-public-made-private", "existing-private", "hub_public-opt-out"],
)
def test_repo_visibility(loopback_hub, tmp_path: Path, existing, private: bool, expected_private: bool) -> None:
    if existing is not None:
        HfApi().create_repo(REPO_ID, private=existing, token=loopback_hub.token)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    push_folder(folder, REPO_ID, token=loopback_hub.token, private=private)
    assert HfApi().model_info(REPO_ID, token=loopback_hub.token).private is expected_private


def test_identifiers_refuse_the_push_until_overridden(loopback_hub, tmp_path: Path) -> None:
    folder = save_tiny_model(tmp_path / "model")
    (folder / "README.md").write_text("# Card\n\nExample note: MRN: 1234567, DOB 01/02/1960.\n")
    before = snapshot(folder)

    with pytest.raises(IdentifiersFoundError) as refused:
        push_folder(folder, REPO_ID, token=loopback_hub.token)

    message = str(refused.value)
    assert "README.md:3: MRN" in message and "README.md:3: date of birth" in message
    assert "--hub_allow_phi" in message
    assert "1234567" not in message and "01/02/1960" not in message
    assert loopback_hub.requests == [] and snapshot(folder) == before

    push_folder(folder, REPO_ID, token=loopback_hub.token, allow_phi=True)
    assert loopback_hub.repos[REPO_ID].files["README.md"] == before["README.md"]


def test_token_in_files_is_refused_even_with_override(loopback_hub, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hub_token": loopback_hub.token}))
    with pytest.raises(IdentifiersFoundError) as refused:
        push_folder(folder, REPO_ID, token=loopback_hub.token, allow_phi=True)
    assert "config.json:1: access token" in str(refused.value)
    assert loopback_hub.token not in str(refused.value)
    assert loopback_hub.repos == {}


def go_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def unreachable_endpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    point_hub_client_at(monkeypatch, closed_port_endpoint(), tmp_path / "hf_home")


@pytest.mark.parametrize("cut_network", [unreachable_endpoint, go_offline])
def test_no_network_gives_one_clear_error_and_leaves_the_folder(
    loopback_hub, tmp_path: Path, monkeypatch, caplog, capfd, cut_network
) -> None:
    folder = save_tiny_model(tmp_path / "model")
    before = snapshot(folder)
    caplog.set_level(logging.DEBUG)
    with monkeypatch.context() as offline:
        cut_network(offline, tmp_path)
        with pytest.raises(HubPushError) as failed:
            push_folder(folder, REPO_ID, token=loopback_hub.token)

    message = str(failed.value)
    assert "intact" in message and str(folder.resolve()) in message
    assert f"python -m modeling_bertxml.release.hub {folder} --hub_model_id {REPO_ID}" in message
    assert failed.value.__cause__ is None and failed.value.__suppress_context__
    assert snapshot(folder) == before
    captured = capfd.readouterr()
    assert loopback_hub.token not in message + caplog.text + captured.out + captured.err

    # Back online, the command from the message pushes the untouched folder.
    main([str(folder), "--hub_model_id", REPO_ID, "--hub_token", loopback_hub.token])
    assert loopback_hub.repos[REPO_ID].private
    assert set(loopback_hub.repos[REPO_ID].files) == set(before)


def read_only_token(hub) -> str:
    return hub.read_token


def no_token(hub) -> None:
    return None


@pytest.mark.parametrize(
    "repo_id, token, cut_network, reason",
    [
        (REPO_ID, lambda hub: hub.token, go_offline, r"offline mode is on \(HF_HUB_OFFLINE=1\)"),
        (REPO_ID, no_token, None, r"no Hub token: pass --hub_token, set HF_TOKEN or run `hf auth login`"),
        (REPO_ID, lambda hub: hub.token, unreachable_endpoint, r"http://127\.0\.0\.1:\d+ cannot be reached \(Connect"),
        (REPO_ID, lambda hub: "hf_wrongTOKEN0123456789abcdefghijklmnopq", None, r"the Hub refused the token \(401"),
        (REPO_ID, read_only_token, None, r"the token is read-only"),
        ("other-hospital/bert-xml", lambda hub: hub.token, None,
         r"other-hospital/bert-xml does not exist and loopback-user may not create repos in other-hospital"),
    ],
    ids=["offline", "no-token", "unreachable", "invalid-token", "read-only-token", "foreign-namespace"],
)
def test_a_push_that_cannot_succeed_is_refused_with_its_reason_before_anything(
    loopback_hub, tmp_path, monkeypatch, repo_id, token, cut_network, reason
) -> None:
    if cut_network is not None:
        cut_network(monkeypatch, tmp_path)
    with pytest.raises(HubPushError, match=rf"^cannot push to \S*{repo_id}: {reason}"):
        check_push_access(repo_id, token(loopback_hub))
    assert not any(request.startswith(("POST", "PUT")) for request in loopback_hub.requests)


def test_a_push_allowed_to_write_passes_the_check_and_names_the_repo(loopback_hub) -> None:
    assert check_push_access("bert-xml-run", loopback_hub.token) == "loopback-user/bert-xml-run"  # a new repo
    assert check_push_access(REPO_ID, loopback_hub.token) == REPO_ID  # a new repo in a writable org
    HfApi().create_repo(REPO_ID, private=True, token=loopback_hub.token)
    assert check_push_access(REPO_ID, loopback_hub.token) == REPO_ID  # an existing one


def test_train_args_push_and_never_show_the_token(loopback_hub, tmp_path: Path, caplog, capfd) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", type=Path)
    add_hub_args(parser)
    folder = save_tiny_model(tmp_path / "bert-xml-run")
    args = parser.parse_args(["--output_dir", str(folder), "--hub_token", loopback_hub.token])
    assert push_from_args(args, folder) is None  # no --push_to_hub, no push
    assert loopback_hub.requests == []

    args = parser.parse_args(["--output_dir", str(folder), "--push_to_hub", "--hub_token", loopback_hub.token])
    caplog.set_level(logging.DEBUG)
    logging.getLogger("train").info("args: %s", args)
    url = push_from_args(args, folder)

    assert url == f"{loopback_hub.endpoint}/loopback-user/bert-xml-run"  # default name, under the token's account
    assert loopback_hub.repos["loopback-user/bert-xml-run"].private
    captured = capfd.readouterr()
    shown = str(args) + json.dumps(vars(args), default=str) + caplog.text + captured.out + captured.err
    assert "Request" in caplog.text  # the client's debug log was captured, and still holds no token
    assert loopback_hub.token not in shown


def test_the_cli_pushes_only_what_a_model_repo_holds(loopback_hub, tmp_path: Path, caplog) -> None:
    """`python -m modeling_bertxml.release.hub OUTPUT_DIR` (what train.py prints after a failed push) on a run's
    folder."""
    folder = save_tiny_model(tmp_path / "run")
    model_files = set(snapshot(folder))
    (folder / "checkpoints" / "step_7").mkdir(parents=True)
    (folder / "checkpoints" / "step_7" / "optimizer.bin").write_bytes(b"\x80\x04 optimizer state")
    (folder / "checkpoints" / "step_7" / "random_states_0.pkl").write_bytes(b"\x80\x04 rng")
    (folder / "logs").mkdir()
    (folder / "logs" / "hparams.yml").write_text("learning_rate: 0.001\n")
    (folder / "run_args.json").write_text(json.dumps({"train_file": "/data/notes.jsonl"}))
    caplog.set_level(logging.INFO)
    main([str(folder), "--hub_model_id", REPO_ID, "--hub_token", loopback_hub.token])
    assert set(loopback_hub.repos[REPO_ID].files) == model_files
    assert "Not pushed (not part of a model repo): checkpoints/, logs/, run_args.json" in caplog.text


def test_a_runs_output_dir_pushes_only_the_model_it_saved_and_never_the_users_files(loopback_hub, tmp_path, caplog):
    """A run's output dir keeps its user's files (only what runs recorded writing is ever deleted there): they must
    not travel to the Hub because their names look like a model repo's (analysis.py, a figure of theirs)."""
    folder = save_tiny_model(tmp_path / "run")
    model_files = set(snapshot(folder))
    Manifest(run=["run_args.json"], model=sorted(model_files)).write(folder)  # as save_model_folder records them
    (folder / "run_args.json").write_text("{}")
    (folder / "analysis.py").write_text("import pandas\n")
    (folder / "my_plot.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    caplog.set_level(logging.INFO)
    main([str(folder), "--hub_model_id", REPO_ID, "--hub_token", loopback_hub.token])
    assert set(loopback_hub.repos[REPO_ID].files) == model_files
    assert "analysis.py" in caplog.text.split("Not pushed")[1] and "my_plot.png" in caplog.text.split("Not pushed")[1]

    # A folder made by hand (no run wrote it) is pushed as before: every file a model repo holds.
    hand_made = save_tiny_model(tmp_path / "hand_made")
    (hand_made / "analysis.py").write_text("import pandas\n")
    main([str(hand_made), "--hub_model_id", "hospital/hand-made", "--hub_token", loopback_hub.token])
    assert "analysis.py" in loopback_hub.repos["hospital/hand-made"].files


def test_push_to_a_branch_leaves_main_and_loads_from_the_revision(loopback_hub, tmp_path: Path) -> None:
    folder = save_tiny_model(tmp_path / "model")
    main([str(folder), "--hub_model_id", REPO_ID, "--hub_token", loopback_hub.token, "--hub_revision", "candidate",
          "--commit_message", "Retrained on 2026 Q3 notes"])  # fmt: skip

    repo = loopback_hub.repos[REPO_ID]
    assert repo.files == {} and repo.private  # main: untouched
    assert repo.branches["candidate"].messages == ["Retrained on 2026 Q3 notes"]
    assert set(repo.branches["candidate"].files) == set(snapshot(folder))
    from_branch = logits(REPO_ID, revision="candidate", token=loopback_hub.token, cache_dir=tmp_path / "cache")
    assert torch.equal(from_branch, logits(folder))

    # A second push to the same (now existing) branch adds a commit there.
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# Tiny coder, second try\n")
    push_folder(folder, REPO_ID, token=loopback_hub.token, revision="candidate", commit_message="Second try")
    assert repo.branches["candidate"].messages == ["Retrained on 2026 Q3 notes", "Second try"]
    assert repo.files == {}


def test_create_pr_proposes_the_model_without_replacing_the_published_one(loopback_hub, tmp_path: Path) -> None:
    folder = save_tiny_model(tmp_path / "model")
    push_folder(folder, REPO_ID, token=loopback_hub.token)
    published = dict(loopback_hub.repos[REPO_ID].files)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# Tiny coder, retrained\n")

    parser = argparse.ArgumentParser()
    add_hub_args(parser)
    args = parser.parse_args(["--push_to_hub", "--hub_model_id", REPO_ID, "--hub_token", loopback_hub.token,
                              "--create_pr", "--commit_message", "Retrained model for review"])  # fmt: skip
    url = push_from_args(args, folder)

    repo = loopback_hub.repos[REPO_ID]
    assert url == f"{loopback_hub.endpoint}/{REPO_ID}/discussions/1"
    assert repo.files == published and repo.branches["main"].messages == ["Upload BERT-XML model"]
    (proposal,) = repo.pull_requests
    assert proposal.messages == ["Upload BERT-XML model", "Retrained model for review"]
    assert proposal.files["README.md"] == (folder / "README.md").read_bytes()
    assert proposal.files["model.safetensors"] == published["model.safetensors"]


def test_png_text_chunks_are_scanned_and_a_broken_png_is_refused(tmp_path: Path) -> None:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "MRN: 4829113")  # tEXt
    info.add_text("Description", "call 212-555-0199", zip=True)  # zTXt
    Image.new("RGB", (4, 4)).save(tmp_path / "figure.png", pnginfo=info)
    Image.new("RGB", (4, 4)).save(tmp_path / "clean.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xffIDAT")
    assert scan_for_identifiers(tmp_path) == [
        Finding("broken.png", 1, "binary file that cannot be scanned"),
        Finding("figure.png", 1, "MRN"), Finding("figure.png", 2, "phone number"),
    ]


def test_an_onnx_export_travels_with_the_model_scanned_and_a_users_onnx_folder_stays(
    loopback_hub, tmp_path: Path, caplog
) -> None:
    """An Endpoint serves `BERTXML_BACKEND=onnx-int8` from the repo's `onnx/`: the export bert-xml wrote into a run's
    folder is pushed, after its strings are scanned as any file; an onnx/ folder its user made there is theirs."""
    onnx = pytest.importorskip("onnx")
    from modeling_bertxml import BertXMLForMultiLabelCoding
    from modeling_bertxml.release.onnx_export import export_onnx
    from tests.conftest import tiny_config

    folder = tmp_path / "run"
    BertXMLForMultiLabelCoding(tiny_config()).save_pretrained(folder)
    model_files = set(snapshot(folder))
    Manifest(run=["run_args.json"], model=sorted(model_files)).write(folder)
    (folder / "run_args.json").write_text("{}")
    users = tmp_path / "users_run"
    users.mkdir()
    (users / "run_args.json").write_text("{}")
    (users / "onnx").mkdir()
    (users / "onnx" / "model.onnx").write_bytes((folder / "model.safetensors").read_bytes())

    export_onnx(folder)
    (folder / "onnx" / "notes.txt").write_text("MRN: 4829113")  # not the export's: stays local, so not scanned
    assert scan_for_identifiers(folder) == []  # the real export's names and doc strings are clean
    caplog.set_level(logging.INFO)
    main([str(folder), "--hub_model_id", REPO_ID, "--hub_token", loopback_hub.token])
    assert set(loopback_hub.repos[REPO_ID].files) == model_files | {"onnx/model.onnx", "onnx/model_int8.onnx"}
    assert "onnx/notes.txt" in caplog.text.split("Not pushed")[1]
    assert scan_for_identifiers(users) == []  # nothing of theirs is read, nor pushed

    exported = onnx.load(str(folder / "onnx" / "model.onnx"))
    exported.graph.node[3].doc_string = "traced on the note of MRN 4829113"
    onnx.save(exported, str(folder / "onnx" / "model.onnx"))
    (folder / "onnx" / "model_int8.onnx").write_bytes(b"\x08\x07 not a model")
    findings = scan_for_identifiers(folder)  # an ONNX file's "line" is its n-th string
    assert [(finding.file, finding.kind) for finding in findings] == [
        ("onnx/model.onnx", "MRN"), ("onnx/model_int8.onnx", "binary file that cannot be scanned"),
    ]
