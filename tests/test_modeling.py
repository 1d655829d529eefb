"""Behaviour of the BERT-XML model that users depend on: chunking, masking, blocks, loading and remote code."""

import json
import os
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

import modeling_bertxml.model.modeling_bertxml
from modeling_bertxml import BertXMLConfig, BertXMLForMaskedLM, BertXMLForMultiLabelCoding, BertXMLModel
from tests.conftest import WORDS, assert_close_scaled, run_in_fresh_interpreter, tiny_config, tiny_tokenizer



def random_ids(config: BertXMLConfig, batch: int, length: int) -> torch.Tensor:
    return torch.randint(5, config.vocab_size, (batch, length))


def test_masked_lm_checkpoint_loads_into_coding_model_with_only_head_new(tmp_path: Path) -> None:
    mlm = BertXMLForMaskedLM(tiny_config())
    mlm.save_pretrained(tmp_path)
    coder, info = BertXMLForMultiLabelCoding.from_pretrained(tmp_path, output_loading_info=True)
    assert set(info["missing_keys"]) == {f"label_head.{n}" for n, _ in coder.label_head.named_parameters()}
    assert all(key.startswith("cls.") for key in info["unexpected_keys"])
    for name, tensor in mlm.bert.state_dict().items():
        assert torch.equal(tensor, coder.bert.state_dict()[name]), name


def test_loading_from_a_state_dict_without_a_name_asks_no_hub_for_an_adapter(monkeypatch) -> None:
    """`from_pretrained(None, config=..., state_dict=...)` has no folder that could be an adapter. Asking the Hub about
    a repo named "None" cost 31 s of retries per call offline (70 s in each of four transformers common tests)."""

    def no_lookup(name: str, **kwargs) -> None:
        raise AssertionError(f"looked for an adapter at {name!r}")

    monkeypatch.setattr(modeling_bertxml.model.modeling_bertxml, "find_adapter_config_file", no_lookup)
    model = BertXMLModel(tiny_config())
    loaded = BertXMLModel.from_pretrained(None, config=model.config, state_dict=model.state_dict())
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_masked_lm_ties_decoder_to_word_embeddings(tmp_path: Path) -> None:
    mlm = BertXMLForMaskedLM(tiny_config())
    mlm.save_pretrained(tmp_path)
    reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path)
    assert isinstance(reloaded, BertXMLForMaskedLM)
    assert reloaded.cls.predictions.decoder.weight is reloaded.bert.embeddings.word_embeddings.weight


def test_coding_model_keeps_the_pretrained_mlm_head_and_adds_its_weighted_loss(tmp_path: Path) -> None:
    mlm = BertXMLForMaskedLM(tiny_config()).eval()
    mlm.save_pretrained(tmp_path)
    coder, info = BertXMLForMultiLabelCoding.from_pretrained(tmp_path, mlm_loss_weight=0.5, output_loading_info=True)
    assert set(info["missing_keys"]) == {f"label_head.{n}" for n, _ in coder.label_head.named_parameters()}
    assert not info["unexpected_keys"]  # the checkpoint's MLM head is the coder's
    assert coder.cls.predictions.decoder.weight is coder.bert.embeddings.word_embeddings.weight
    ids = random_ids(coder.config, 2, 40)  # three chunks
    mlm_labels = torch.full_like(ids, -100)
    mlm_labels[:, ::7] = ids[:, ::7]
    ids[:, ::7] = 4  # [MASK]
    labels = torch.tensor([[1.0, 0, 0, 1, 0, 0], [0, 0, 1, 0, 0, 0]])
    with torch.no_grad():
        both = coder(ids, labels=labels, mlm_labels=mlm_labels)
        coding = coder(ids, labels=labels).loss
        pretrained = mlm(ids, labels=mlm_labels).loss
    assert_close_scaled(both.mlm_loss, pretrained)
    assert_close_scaled(both.loss, coding + 0.5 * pretrained)
    with pytest.raises(ValueError, match="mlm_loss_weight > 0"):
        BertXMLForMultiLabelCoding(tiny_config())(ids, labels=labels, mlm_labels=mlm_labels)


def test_a_batch_with_no_masked_token_has_a_masked_lm_loss_of_zero_and_no_gradient() -> None:
    """Stock BERT's mean over no token is NaN: a short block, or a batch of one, can draw no mask, and that NaN would
    read as a diverged run (and poison the coder's loss, where the masked-LM loss only rides along)."""
    mlm = BertXMLForMaskedLM(tiny_config())
    coder = BertXMLForMultiLabelCoding(tiny_config(mlm_loss_weight=0.5))
    ids, labels = random_ids(mlm.config, 2, 20), torch.tensor([[1.0, 0, 0, 1, 0, 0], [0, 0, 1, 0, 0, 0]])
    nothing_masked = torch.full_like(ids, -100)
    loss = mlm(ids, labels=nothing_masked).loss
    loss.backward()
    assert loss.item() == 0.0 and all(not p.grad.any() for p in mlm.parameters() if p.grad is not None)
    both = coder(ids, labels=labels, mlm_labels=nothing_masked)
    assert both.mlm_loss.item() == 0.0 and both.loss.item() == coder(ids, labels=labels).loss.item()


def test_padding_never_changes_logits_and_gets_zero_attention(config: BertXMLConfig) -> None:
    model = BertXMLForMultiLabelCoding(config).eval()
    note = random_ids(config, 1, 21)  # two chunks of 16
    long_note = random_ids(config, 1, 60)  # four chunks
    padded = torch.full((2, 60), config.pad_token_id)
    padded[0, :21], padded[1] = note[0], long_note[0]
    mask = (torch.arange(60) < torch.tensor([[21], [60]])).long()
    with torch.no_grad():
        alone = model(note).logits
        batch = model(padded, attention_mask=mask, output_label_attentions=True)
    assert_close_scaled(batch.logits[0:1], alone)
    assert_close_scaled(batch.logits[1:2], model(long_note).logits)
    assert torch.all(batch.label_attentions[0, :, 21:] == 0)
    torch.testing.assert_close(batch.label_attentions.sum(-1), torch.ones(2, config.num_labels))
    with torch.no_grad():  # the chunks that are all padding (the first note's 3rd and 4th) are skipped: zero states
        states = model.bert(padded, attention_mask=mask).last_hidden_state
    assert torch.all(states[0, 32:] == 0) and torch.all(states[0, :32].abs().sum(-1) > 0)
    assert torch.all(states[1].abs().sum(-1) > 0)


def test_attention_mask_hides_padding_tokens_whatever_their_ids(config: BertXMLConfig) -> None:
    model = BertXMLForMultiLabelCoding(config).eval()
    ids = random_ids(config, 2, 40)
    ids[1, :30] = ids[0, :30]  # same note, different garbage after position 30
    mask = torch.ones_like(ids)
    mask[:, 30:] = 0
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
    assert_close_scaled(logits[0], logits[1])


def test_one_chunk_note_gives_same_logits_whatever_max_chunks() -> None:
    short = BertXMLForMultiLabelCoding(tiny_config(max_chunks=1)).eval()
    long = BertXMLForMultiLabelCoding(tiny_config(max_chunks=8)).eval()
    long.load_state_dict(short.state_dict())
    note = random_ids(short.config, 3, 16)
    with torch.no_grad():
        assert_close_scaled(short(note).logits, long(note).logits)


def test_chunks_are_encoded_independently_with_restarted_positions(config: BertXMLConfig) -> None:
    encoder = BertXMLModel(config).eval()
    note = random_ids(config, 1, 40)
    with torch.no_grad():
        whole = encoder(note).last_hidden_state
        pieces = [encoder(note[:, start : start + 16]).last_hidden_state for start in (0, 16, 32)]
    assert_close_scaled(whole, torch.cat(pieces, dim=1))


def test_rotary_states_depend_on_token_distances_not_positions() -> None:
    """What rotary positions are for: a fresh model sees how far apart tokens are, not where they sit, so masked
    tokens in front of a note leave its states unchanged; with BERT's position table they move them."""
    note = random_ids(tiny_config(), 1, 8)
    shifted = torch.cat([random_ids(tiny_config(), 1, 5), note], dim=1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 8, dtype=torch.long)], dim=1)
    for scheme, invariant in (("rotary", True), ("absolute", False)):
        encoder = BertXMLModel(tiny_config(position_embedding_type=scheme)).eval()
        with torch.no_grad():
            plain = encoder(note).last_hidden_state
            moved = encoder(shifted, attention_mask=mask).last_hidden_state[:, 5:]
        assert torch.allclose(plain, moved, rtol=1e-4, atol=1e-4 * plain.abs().max().item()) == invariant, scheme


def test_note_longer_than_limit_is_refused_with_the_limit(config: BertXMLConfig) -> None:
    model = BertXMLForMultiLabelCoding(config)
    with pytest.raises(ValueError, match="64"):
        model(random_ids(config, 1, 65))


def test_empty_note_gives_finite_logits_equal_to_the_bias(config: BertXMLConfig) -> None:
    model = BertXMLForMultiLabelCoding(config).eval()
    ids = torch.zeros(2, 20, dtype=torch.long)
    with torch.no_grad():
        logits = model(ids, attention_mask=torch.zeros_like(ids)).logits
    torch.testing.assert_close(logits, model.label_head.output_bias.expand(2, -1))


@pytest.mark.parametrize("label_attention_dim", [None, 8])
def test_label_block_size_does_not_change_logits(label_attention_dim: int | None) -> None:
    model = BertXMLForMultiLabelCoding(tiny_config(num_labels=11, label_attention_dim=label_attention_dim)).eval()
    ids = random_ids(model.config, 2, 50)
    mask = torch.ones_like(ids)
    mask[0, 33:] = 0
    results = []
    for block in (1, 3, 11, 64):
        model.label_head.block_size = block
        with torch.no_grad():
            results.append(model(ids, attention_mask=mask, output_label_attentions=True))
    for other in results[1:]:
        assert_close_scaled(other.logits, results[0].logits)
        assert_close_scaled(other.label_attentions, results[0].label_attentions)


def test_full_icd10cm_code_set_on_a_4096_token_note_runs_on_cpu() -> None:
    config = tiny_config(num_labels=74_736, max_position_embeddings=512, max_chunks=8, label_block_size=4096)
    model = BertXMLForMultiLabelCoding(config).eval()
    with torch.no_grad():
        logits = model(random_ids(config, 1, 4096)).logits
    assert logits.shape == (1, 74_736)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_label_attention_is_stable_under_autocast(config: BertXMLConfig, dtype: torch.dtype) -> None:
    model = BertXMLForMultiLabelCoding(config).eval()
    with torch.no_grad():
        model.label_head.queries.mul_(1e4)  # scores far beyond fp16's range: a naive half softmax overflows
    ids = random_ids(config, 2, 40)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        out = model(ids, output_label_attentions=True)
    assert torch.isfinite(out.logits).all()
    torch.testing.assert_close(out.label_attentions.sum(-1), torch.ones(2, config.num_labels))


def test_gradients_reach_every_parameter_and_a_step_lowers_the_loss(config: BertXMLConfig) -> None:
    model = BertXMLForMultiLabelCoding(config).train()
    ids = random_ids(config, 4, 30)
    labels = torch.zeros(4, config.num_labels)
    labels[0, 1] = labels[1, 3] = labels[2, 0] = labels[3, 5] = 1
    loss = model(ids, labels=labels).loss
    loss.backward()
    for name, parameter in model.named_parameters():
        if name != "bert.embeddings.token_type_embeddings.weight" or parameter.grad is not None:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    optimizer.step()
    with torch.no_grad():
        assert model(ids, labels=labels).loss < loss


def test_auto_classes_resolve_to_the_coding_model(tmp_path: Path, config: BertXMLConfig) -> None:
    model = BertXMLForMultiLabelCoding(config).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert set(saved["auto_map"]) == {
        "AutoConfig",
        "AutoModel",
        "AutoModelForSequenceClassification",
        "AutoModelForMaskedLM",
    }
    assert {"configuration_bertxml.py", "modeling_bertxml.py", "model.safetensors"} <= set(os.listdir(tmp_path))
    ids = random_ids(config, 2, 40)
    with torch.no_grad():
        expected = model(ids).logits
        for auto in (AutoModel, AutoModelForSequenceClassification):
            reloaded = auto.from_pretrained(tmp_path).eval()
            assert isinstance(reloaded, BertXMLForMultiLabelCoding)
            # Weights mmapped from safetensors have another alignment, so the kernels may round differently.
            assert_close_scaled(reloaded(ids).logits, expected)


REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling_bertxml"] = None  # the package must not be importable: remote code only
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, pipeline
    folder, note = sys.argv[1], sys.argv[2]
    ids = torch.tensor(json.loads(sys.argv[3]))
    result = {}
    for auto in (AutoModel, AutoModelForSequenceClassification):
        model = auto.from_pretrained(folder, trust_remote_code=True).eval()
        assert "modeling_bertxml" not in type(model).__module__.split(".")[0], type(model).__module__
        with torch.no_grad():
            result[auto.__name__] = model(ids).logits.tolist()
    classifier = pipeline("text-classification", model=folder, trust_remote_code=True, top_k=None)
    result["pipeline"] = classifier([note])[0]
    print(json.dumps(result))
    """
)


def test_remote_code_loads_without_the_package(tmp_path: Path) -> None:
    config = tiny_config(max_chunks=8, position_embedding_type="rotary")
    tokenizer = tiny_tokenizer(model_max_length=config.max_note_length)
    model = BertXMLForMultiLabelCoding(config).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    note = " ".join(WORDS * 2)  # longer than one 16-token chunk
    encoded = tokenizer(note, return_tensors="pt")
    assert encoded.input_ids.shape[1] > config.max_position_embeddings
    with torch.no_grad():
        expected = model(**encoded).logits[0]

    ids = json.dumps(encoded.input_ids.tolist())
    result = run_in_fresh_interpreter(REMOTE_CODE_SCRIPT, str(tmp_path), note, ids, cwd=tmp_path.parent)
    for name in ("AutoModel", "AutoModelForSequenceClassification"):
        assert_close_scaled(torch.tensor(result[name][0]), expected)
    scores = {item["label"]: item["score"] for item in result["pipeline"]}
    assert set(scores) == set(config.id2label.values())
    expected_scores = {config.id2label[i]: torch.sigmoid(expected[i]).item() for i in range(config.num_labels)}
    for label, score in scores.items():
        assert score == pytest.approx(expected_scores[label], abs=1e-5)
    assert sum(scores.values()) != pytest.approx(1.0, abs=1e-3)  # independent sigmoids, not a softmax


PRETRAINING_FOLDER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling_bertxml"] = None  # remote code only
    import torch
    from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification, pipeline
    folder, note = sys.argv[1], sys.argv[2]
    encoder = AutoModel.from_pretrained(folder, trust_remote_code=True)
    mlm = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)
    coder = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
    features = pipeline("feature-extraction", model=folder, trust_remote_code=True)(note)
    print(json.dumps({"classes": [type(m).__name__ for m in (encoder, mlm, coder)], "features": features}))
    """
)


def test_auto_model_of_a_pretraining_folder_is_the_encoder(tmp_path: Path) -> None:
    # A pretrain.py folder holds an MLM model: AutoModel must give its encoder (token states), not a coding model
    # with random codes, both with the package imported and through the folder's own remote code.
    config = tiny_config(max_chunks=8, position_embedding_type="rotary")
    tokenizer = tiny_tokenizer(model_max_length=config.max_note_length)
    mlm = BertXMLForMaskedLM(config).eval()
    mlm.save_pretrained(tmp_path / "mlm")
    tokenizer.save_pretrained(tmp_path / "mlm")
    assert json.loads((tmp_path / "mlm" / "config.json").read_text())["auto_map"]["AutoModel"].endswith(".BertXMLModel")
    note = " ".join(WORDS * 2)  # several chunks
    encoded = tokenizer(note, return_tensors="pt")
    with torch.no_grad():
        expected = mlm.bert(**encoded).last_hidden_state[0]
        local = AutoModel.from_pretrained(tmp_path / "mlm").eval()
        assert isinstance(local, BertXMLModel)
        assert_close_scaled(local(**encoded).last_hidden_state[0], expected)
    assert isinstance(AutoModel.from_config(config), BertXMLModel)  # no folder: the bare encoder, as for BERT

    result = run_in_fresh_interpreter(PRETRAINING_FOLDER_SCRIPT, str(tmp_path / "mlm"), note, cwd=tmp_path)
    assert result["classes"] == ["BertXMLModel", "BertXMLForMaskedLM", "BertXMLForMultiLabelCoding"]
    assert_close_scaled(torch.tensor(result["features"][0]), expected)
