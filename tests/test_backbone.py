"""Other encoders as the backbone (RoBERTa, ModernBERT): what a backbone config fixes, that a checkpoint's encoder is
the one the coder runs, and train.py from such a checkpoint to a folder that loads without the package.

Chunking, padding, gradients and reloading through the Auto classes run on backbones too: the `config` fixture of
tests/test_modeling.py includes them.
"""

import json
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    BertConfig,
    GPT2Config,
    ModernBertConfig,
    PreTrainedTokenizerFast,
    RobertaConfig,
    XLMRobertaConfig,
)

from modeling_bertxml import BertXMLConfig, BertXMLForMaskedLM
from modeling_bertxml.training.models import build_coding_model
from modeling_bertxml.training.models import ConfigError, load_config
from tests.conftest import (
    BACKBONES,
    assert_close_scaled,
    save_backbone_checkpoint,
    tiny_backbone,
    tiny_config,
    tiny_tokenizer,
)
from tests.test_train import check_folder_without_the_package, data, run_train, train_args  # noqa: F401 (data)


@pytest.mark.parametrize(
    ("backbone", "chunk_length"),
    [
        (RobertaConfig(max_position_embeddings=514), 512),  # roberta-base: positions start after its padding id (1)
        (XLMRobertaConfig(max_position_embeddings=514), 512),
        (ModernBertConfig(), 8192),  # ModernBERT-base's defaults: rotary positions
        (BertConfig(), 512),
    ],
    ids=["roberta", "xlm-roberta", "modernbert", "bert"],
)
def test_chunks_hold_what_the_backbones_position_table_holds(backbone, chunk_length: int) -> None:
    config = BertXMLConfig(backbone_config=backbone, max_chunks=8)
    assert config.max_position_embeddings == chunk_length and config.max_note_length == 8 * chunk_length
    assert (config.hidden_size, config.vocab_size, config.pad_token_id) == (
        backbone.hidden_size, backbone.vocab_size, backbone.pad_token_id,
    )  # fmt: skip


def test_backbone_config_round_trips_through_config_json_without_a_local_path(tmp_path: Path) -> None:
    config = tiny_config(backbone_config=tiny_backbone("modernbert"))
    config.backbone_config.name_or_path = str(tmp_path / "checkpoints" / "modernbert")  # where it was read from
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["backbone_config"]["model_type"] == "modernbert" and "_name_or_path" not in saved["backbone_config"]
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert type(reloaded.backbone_config) is ModernBertConfig
    original, loaded = config.to_dict(), reloaded.to_dict()
    assert loaded.pop("_name_or_path") == str(tmp_path) and original.pop("_name_or_path") == ""
    assert loaded == original


def test_a_backbone_must_be_an_encoder_and_fixes_what_the_chunking_and_head_read(tmp_path: Path) -> None:
    config = tiny_config(backbone_config=tiny_backbone("roberta"))
    config.hidden_size = 64
    with pytest.raises(ValueError, match=r"hidden_size is the backbone's \(32\)"):
        config.check_values()
    with pytest.raises(ValueError, match="'gpt2' config, which is not an encoder"):
        BertXMLConfig(backbone_config=GPT2Config(n_layer=1))
    with pytest.raises(ValueError, match="own masked-LM model"):
        BertXMLForMaskedLM(tiny_config(backbone_config=tiny_backbone("roberta")))
    with pytest.raises(ValueError, match="mlm_loss_weight keeps BERT's masked-LM head"):
        tiny_config(backbone_config=tiny_backbone("roberta"), mlm_loss_weight=1.0)
    # train.py's --config_overrides reach the head, not the checkpoint's encoder
    checkpoint = save_backbone_checkpoint("roberta", tmp_path / "roberta", tiny_tokenizer())
    assert load_config(checkpoint, "max_chunks=2,label_block_size=8").max_note_length == 32
    with pytest.raises(ConfigError, match="hidden_size is the backbone's"):
        load_config(checkpoint, "hidden_size=64")


@pytest.mark.parametrize("model_type", list(BACKBONES))
def test_the_coders_encoder_is_the_checkpoints(model_type: str, tmp_path: Path) -> None:
    # ModernBERT's table has more rows than the tokenizer has tokens (padded for speed): accepted for a backbone.
    checkpoint = save_backbone_checkpoint(model_type, tmp_path / model_type, tiny_tokenizer())
    tokenizer = PreTrainedTokenizerFast.from_pretrained(checkpoint)
    coder = build_coding_model(["E11.9", "I10"], tokenizer, checkpoint).eval()
    assert coder.config.backbone_config.model_type == model_type and coder.config.max_position_embeddings == 16
    own = AutoModel.from_pretrained(checkpoint).eval()  # the checkpoint's encoder as transformers loads it
    note = tokenizer(["patient denies chest pain history of hypertension"], return_tensors="pt",
                     return_token_type_ids=False)  # fmt: skip
    with torch.no_grad():
        assert_close_scaled(coder.bert(**note).last_hidden_state, own(**note).last_hidden_state)


@pytest.mark.parametrize("model_type", list(BACKBONES))
def test_train_fine_tunes_a_checkpoint_of_another_encoder_into_a_folder_that_loads_without_the_package(
    model_type: str, data: Path, tmp_path: Path  # noqa: F811 (fixture)
) -> None:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(data / "pretrained")
    checkpoint = save_backbone_checkpoint(model_type, tmp_path / model_type, tokenizer)
    args = train_args(data, tmp_path / "coder", "--test_file", str(data / "test.jsonl"))
    args[args.index("--model_name_or_path") + 1] = str(checkpoint)
    lines = run_train(args)
    assert any(f"is a {model_type} checkpoint: its encoder is the backbone" in line for line in lines)
    saved = json.loads((tmp_path / "coder" / "config.json").read_text())
    assert saved["backbone_config"]["model_type"] == model_type and saved["max_position_embeddings"] == 16
    assert (tmp_path / "coder" / "test_results.json").is_file()
    check_folder_without_the_package(data, tmp_path / "coder")

    # An adapter folder would be loaded with its base's code, which a RoBERTa or ModernBERT repo does not have.
    args[args.index("--output_dir") + 1] = str(tmp_path / "adapter")
    with pytest.raises(SystemExit, match="needs --merge_lora"):
        run_train([*args, "--use_lora", "--base_model_id", "org/roberta"])
