"""transformers' own common model and config tests (`ModelTesterMixin`, `ConfigTester`) run on the BERT-XML classes.

The tests come from the transformers sdist matching the installed version (see fetch_transformers_tests.py); a
missing or stale copy fails the run rather than skipping it. They run twice: on notes of one chunk (the shapes of
stock BERT) and on notes of three chunks, the path every real note takes.
"""

import unittest
from collections import OrderedDict
from dataclasses import dataclass

import torch
from parameterized import parameterized
from transformers.testing_utils import parse_flag_from_env

from modeling_bertxml import BertXMLConfig, BertXMLForMaskedLM, BertXMLForMultiLabelCoding, BertXMLModel
from tests.fetch_transformers_tests import import_common_tests

import_common_tests()

import transformers_tests.test_modeling_common as common  # noqa: E402
from transformers_tests.test_configuration_common import ConfigTester  # noqa: E402

# The common tests learn each class's role from transformers' static name tables, which list only transformers' own
# models. AutoModel maps to the coding model in our registry (the product's entry point), but the tests read
# MODEL_MAPPING_NAMES as "the bare encoder, which has no head and no loss": that is BertXMLModel.
for table, class_name in (
    ("MODEL_MAPPING_NAMES", "BertXMLModel"),
    ("MODEL_FOR_MASKED_LM_MAPPING_NAMES", "BertXMLForMaskedLM"),
    ("MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", "BertXMLForMultiLabelCoding"),
):
    setattr(common, table, OrderedDict({**getattr(common, table), BertXMLConfig.model_type: class_name}))

RUN_SLOW = parse_flag_from_env("RUN_SLOW", default=False)


@dataclass
class BertXMLModelTester:
    """Tiny configs and inputs for the common tests, like transformers' BertModelTester."""

    parent: unittest.TestCase
    batch_size: int = 13
    seq_length: int = 7
    vocab_size: int = 99
    hidden_size: int = 32
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 37
    max_position_embeddings: int = 16
    type_vocab_size: int = 2
    num_labels: int = 5
    is_training: bool = True

    def get_config(self) -> BertXMLConfig:
        return BertXMLConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            type_vocab_size=self.type_vocab_size,
            num_labels=self.num_labels,
            label_block_size=2,  # several label blocks, so block concatenation is exercised too
        )

    def prepare_config_and_inputs(self) -> tuple[BertXMLConfig, dict[str, torch.Tensor], torch.Tensor]:
        shape = [self.batch_size, self.seq_length]
        inputs = {
            "input_ids": common.ids_tensor(shape, self.vocab_size),
            "token_type_ids": common.ids_tensor(shape, self.type_vocab_size),
            "attention_mask": common.random_attention_mask(shape),
        }
        codes = (torch.rand(self.batch_size, self.num_labels) < 0.3).float()
        return self.get_config(), inputs, codes

    def prepare_config_and_inputs_for_common(self) -> tuple[BertXMLConfig, dict[str, torch.Tensor]]:
        config, inputs, _ = self.prepare_config_and_inputs()
        return config, inputs

    def create_and_check_model(self, config: BertXMLConfig, inputs: dict, codes: torch.Tensor) -> None:
        states = BertXMLModel(config).eval()(**inputs).last_hidden_state
        self.parent.assertEqual(states.shape, (self.batch_size, self.seq_length, self.hidden_size))

    def create_and_check_for_masked_lm(self, config: BertXMLConfig, inputs: dict, codes: torch.Tensor) -> None:
        labels = common.ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        result = BertXMLForMaskedLM(config).eval()(**inputs, labels=labels)
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.seq_length, self.vocab_size))
        expected = torch.nn.functional.cross_entropy(result.logits.flatten(0, 1), labels.flatten())
        torch.testing.assert_close(result.loss, expected)

    def create_and_check_for_multi_label_coding(self, config: BertXMLConfig, inputs: dict, codes: torch.Tensor):
        result = BertXMLForMultiLabelCoding(config).eval()(**inputs, labels=codes, output_label_attentions=True)
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.num_labels))
        expected = torch.nn.functional.binary_cross_entropy_with_logits(result.logits, codes)
        torch.testing.assert_close(result.loss, expected)
        self.parent.assertEqual(result.label_attentions.shape, (self.batch_size, self.num_labels, self.seq_length))


class BertXMLModelTest(common.ModelTesterMixin, unittest.TestCase):
    all_model_classes = (BertXMLModel, BertXMLForMaskedLM, BertXMLForMultiLabelCoding)
    # The mixin dates models by a copyright line and exempts pre-2023 ones from checking that `_init_weights`
    # initialises every weight; ours has no such line and must not be exempt (the label head is new).
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self) -> None:
        self.model_tester = BertXMLModelTester(self)
        self.config_tester = ConfigTester(self, config_class=BertXMLConfig, hidden_size=37)

    def _prepare_for_class(self, inputs_dict: dict, model_class: type, return_labels: bool = False) -> dict:
        """The coding model's labels are multi-hot float (batch, num_labels), not the class ids the mixin makes."""
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels and model_class is BertXMLForMultiLabelCoding:
            # Seeded: tests such as test_model_outputs_equivalence prepare the inputs twice and compare the losses.
            shape = (self.model_tester.batch_size, self.model_tester.num_labels)
            scores = torch.rand(shape, generator=torch.Generator().manual_seed(0))
            inputs_dict["labels"] = (scores < 0.3).to(device=common.torch_device, dtype=torch.float)
        return inputs_dict

    def test_config(self) -> None:
        # Every common argument round-trips, problem_type="regression" included (transformers' own check).
        self.config_tester.run_common_tests()

    def test_model(self) -> None:
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    def test_for_masked_lm(self) -> None:
        self.model_tester.create_and_check_for_masked_lm(*self.model_tester.prepare_config_and_inputs())

    def test_for_multi_label_coding(self) -> None:
        self.model_tester.create_and_check_for_multi_label_coding(*self.model_tester.prepare_config_and_inputs())

    @parameterized.expand(common.TEST_EAGER_MATCHES_SDPA_INFERENCE_PARAMETERIZATION)
    def test_eager_matches_sdpa_inference(self, name, dtype, padding_side, use_attention_mask, output_attentions, kernels):
        # Two thirds of this suite's run time on CPU went to fp16/bf16 here, where CPUs emulate half precision.
        if dtype != "fp32" and common.torch_device == "cpu" and not RUN_SLOW:
            self.skipTest("half precision on CPU is slow: run with RUN_SLOW=1 (or on a GPU)")
        common._test_eager_matches_sdpa_inference(
            self, name, dtype, padding_side, use_attention_mask, output_attentions, kernels
        )

    def test_problem_types(self) -> None:
        # The config takes any problem type (the encoder and MLM model share it); the coding model refuses the ones
        # it cannot train, with the value in the message.
        config = self.model_tester.prepare_config_and_inputs_for_common()[0]
        for problem_type in ("single_label_classification", "regression"):
            config.problem_type = problem_type
            BertXMLModel(config)
            with self.assertRaisesRegex(ValueError, problem_type):
                BertXMLForMultiLabelCoding(config)

    def test_hidden_states_share_one_layout(self) -> None:
        # Every entry, the last included, is in the layers' (chunk) layout; last_hidden_state alone is note-shaped.
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        del inputs["attention_mask"]  # no all-padding chunk is skipped, so the chunks tile the notes exactly
        outputs = BertXMLModel(config).eval()(**inputs, output_hidden_states=True)
        self.assertEqual(len({tuple(states.shape) for states in outputs.hidden_states}), 1)
        notes = outputs.hidden_states[-1].reshape(self.model_tester.batch_size, -1, self.model_tester.hidden_size)
        torch.testing.assert_close(notes[:, : self.model_tester.seq_length], outputs.last_hidden_state)

    def test_torch_export_matches_eager(self) -> None:
        # Stands in for the export tests that the sdist lacks (fetch_transformers_tests.STANDINS): the coding model,
        # the one users deploy, must trace with torch.export and give the eager logits.
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = BertXMLForMultiLabelCoding(config).eval()
        program = torch.export.export(model, (), inputs, strict=False)
        torch.testing.assert_close(program.module()(**inputs).logits, model(**inputs).logits)


class BertXMLChunkedModelTest(BertXMLModelTest):
    """The same tests on 37-token notes: three chunks of max_position_embeddings=16 tokens, the last one partial."""

    def setUp(self) -> None:
        super().setUp()
        self.model_tester = BertXMLModelTester(self, batch_size=4, seq_length=37)
        # What the layers see: hidden_states and attentions are per chunk, (encoded_chunks, 16, ...).
        self.model_tester.encoder_seq_length = self.model_tester.max_position_embeddings
