"""The ablations behind docs/learning.md ("What mattered"): what keeps BERT-XML on its plateaus, and what moves it.

    python benchmarks/learning_ablations.py mlm --positions absolute        # MLM, 2 x 128, 512-token blocks
    python benchmarks/learning_ablations.py mlm --positions rotary
    python benchmarks/learning_ablations.py coding --learning_rate 5e-4 --query_std 0.02 --output_std 0.02 --zero_bias
    python benchmarks/learning_ablations.py coding                          # today's defaults
    python benchmarks/learning_ablations.py --data runs/quality-cpu/data --tokenizer runs/quality-cpu/tokenizer \
        --hidden_size 256 --num_layers 4 --seed 1 coding --learning_rate 1e-3 --max_length 512 --epochs 0.4 \
        --warmup_ratio 0.06 --probe_steps 25 --init_from_descriptions      # the hard corpus, description queries
    python benchmarks/learning_ablations.py ... coding --sign_step 5e-4    # does the coding gradient collapse states?
    python benchmarks/learning_ablations.py ... coding --model_name_or_path runs/quality-cpu/pretrained \
        --learning_rate 2e-4 --init_from_descriptions [--mlm_loss_weight 1]  # from the MLM encoder

Both run small models on the demo corpus (`python -m modeling_bertxml.data.synthetic --output_dir data/synthetic` and
`python tokenizer_training/train_tokenizer.py --train_file data/synthetic/train.jsonl --output_dir
data/synthetic-tokenizer --vocab_size 4000 --min_frequency 2`) with a plain loop over the package's own optimizer,
schedule and step (`modeling_bertxml.training.loop`), one thread, so that one setting changes at a time. `mlm` prints
the validation perplexity every 50 steps beside the unigram perplexity of the same masked tokens (token masking,
15 %); `coding` trains from scratch (512-token chunks, notes cut at 1,024 tokens) and prints validation MAP, micro-
and macro-AUC every half epoch beside the code-prior MAP (`--probe_steps N`: also the token-state cosine and
label-attention entropy that show the encoder collapsing).
"""

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from transformers import AutoTokenizer, DataCollatorForLanguageModeling

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/learning_ablations.py` from anywhere

from modeling_bertxml import BertXMLConfig, BertXMLForMaskedLM, BertXMLForMultiLabelCoding  # noqa: E402
from modeling_bertxml.data.code_systems import code_descriptions  # noqa: E402
from modeling_bertxml.data.notes import mask_for_mlm  # noqa: E402
from modeling_bertxml.evaluation.metrics import compute_metrics  # noqa: E402
from modeling_bertxml.training.checkpointing import Progress  # noqa: E402
from modeling_bertxml.training.label_init import init_label_queries_from_descriptions  # noqa: E402
from modeling_bertxml.training.loop import create_optimizer, create_scheduler, training_step  # noqa: E402


def model_config(args: argparse.Namespace, vocab_size: int, chunk: int, **values) -> BertXMLConfig:
    return BertXMLConfig(
        vocab_size=vocab_size, hidden_size=args.hidden_size, num_hidden_layers=args.num_layers,
        num_attention_heads=max(2, args.hidden_size // 64), intermediate_size=4 * args.hidden_size,
        max_position_embeddings=chunk, pad_token_id=0, **values,
    )  # fmt: skip


def read(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def optimizer_step(accelerator: Accelerator, model, optimizer, scheduler, batch: dict, progress: Progress) -> None:
    """One optimizer step as the scripts take it (clipping at 1.0), without the divergence guard: these runs are
    watched by hand, and some settings are there to fail."""
    model.train()
    training_step(accelerator, model, optimizer, scheduler, batch, progress, uniform_loss=0.0, check_divergence=False)


def run_mlm(args: argparse.Namespace, tokenizer) -> None:
    def blocks(texts: list[str]) -> list[dict]:
        ids = list(itertools.chain.from_iterable(tokenizer(texts)["input_ids"]))
        size = args.block
        return [{"input_ids": ids[i : i + size]} for i in range(0, len(ids) // size * size, size)]

    train = blocks([note["text"] for note in read(f"{args.data}/train.jsonl")])
    validation = blocks([note["text"] for note in read(f"{args.data}/validation.jsonl")][:60])
    counts = np.bincount([t for block in train for t in block["input_ids"]], minlength=len(tokenizer)) + 0.5
    unigram = -np.log(counts / counts.sum())
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    torch.manual_seed(1)
    eval_batches = [collator(validation[i : i + 32]) for i in range(0, len(validation), 32)]
    unigram_loss = np.mean([unigram[b["labels"][b["labels"] != -100].numpy()].mean() for b in eval_batches])
    torch.manual_seed(args.seed)
    config = model_config(args, len(tokenizer), args.block, max_chunks=1, position_embedding_type=args.positions)
    model = BertXMLForMaskedLM(config)
    optimizer = create_optimizer(model, args.learning_rate, weight_decay=0.01)
    scheduler = create_scheduler(optimizer, args.steps, num_warmup_steps=args.warmup)
    print(f"{vars(args)}\nunigram perplexity {math.exp(unigram_loss):.1f}")
    accelerator, progress = Accelerator(), Progress()
    order, start = torch.Generator().manual_seed(args.seed), time.time()
    while progress.step < args.steps:
        for indices in torch.randperm(len(train), generator=order).split(args.batch_size):
            optimizer_step(accelerator, model, optimizer, scheduler, collator([train[i] for i in indices]), progress)
            if progress.step % 50 == 0:
                model.eval()
                with torch.no_grad():
                    loss = np.mean([model(**batch).loss.item() for batch in eval_batches])
                print(f"step {progress.step}: perplexity {math.exp(loss):.1f} (unigram {math.exp(unigram_loss):.1f}), "
                      f"{time.time() - start:.0f} s")  # fmt: skip
            if progress.step >= args.steps:
                return


@torch.no_grad()
def collapse_probe(model: BertXMLForMultiLabelCoding, inputs: dict) -> tuple[float, float]:
    """Mean cosine between the token states of the first note, and the codes' mean label-attention entropy (1 =
    uniform over the note). Both near 1 is the collapse that holds coding on the code-prior plateau: the encoder maps
    every token to one state, so no attention can find the words that name a code (docs/learning.md)."""
    model.eval()
    states = model.bert(**inputs).last_hidden_state
    mask = inputs["attention_mask"].bool()
    first = torch.nn.functional.normalize(states[0][mask[0]], dim=-1)
    codes = torch.arange(model.config.num_labels).expand(len(states), -1)
    weights = model.label_head.attention(states, inputs["attention_mask"], codes)
    entropy = -(weights * weights.clamp_min(1e-12).log()).sum(-1) / mask.sum(-1, keepdim=True).float().log()
    model.train()
    return (first @ first.T).mean().item(), entropy.mean().item()


def sign_step_probe(model: BertXMLForMultiLabelCoding, inputs: dict, targets: torch.Tensor, probe: dict, size: float):
    """The token-state cosine after one step of `size` on every encoder weight along the sign of the coding loss's
    gradient (AdamW's first step), beside one along random signs: does the coding gradient itself pull the states
    of a note together, or would any step that size?"""
    before = collapse_probe(model, probe)[0]
    model(**inputs, labels=targets).loss.backward()
    encoder = encoder_parameters(model)
    saved = [p.detach().clone() for p in encoder]
    directions = {"coding gradient": lambda p: p.grad.sign(), "random": lambda p: torch.randn_like(p).sign()}
    for name, direction in directions.items():
        with torch.no_grad():
            for parameter in encoder:
                parameter -= size * direction(parameter)
        print(f"one {size:g} step along the {name} signs: token-state cosine {before:.3f} -> "
              f"{collapse_probe(model, probe)[0]:.3f}")  # fmt: skip
        with torch.no_grad():
            for parameter, value in zip(encoder, saved):
                parameter.copy_(value)


def encoder_parameters(model: BertXMLForMultiLabelCoding) -> list[torch.nn.Parameter]:
    """Every parameter but the label head's."""
    head = {id(parameter) for parameter in model.label_head.parameters()}
    return [parameter for parameter in model.parameters() if id(parameter) not in head]


def reinit_top_layers(model: BertXMLForMultiLabelCoding, count: int) -> None:
    """Draw the top `count` encoder layers afresh, as BERT's init does (Zhang et al. 2021: a pretrained model's top
    layers are the most specific to its pretraining task)."""
    std = model.config.initializer_range
    for module in model.bert.encoder.layer[-count:].modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, 0.0, std)
            torch.nn.init.zeros_(module.bias)
        elif isinstance(module, torch.nn.LayerNorm):
            torch.nn.init.ones_(module.weight)
            torch.nn.init.zeros_(module.bias)


def center_states(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Each note's token states less their mean over its tokens: attention is unchanged (softmax ignores a shift), but
    a uniform attention gives a zero document vector, so no gradient asks every token for the same change."""
    mask = attention_mask[..., None].to(hidden_states.dtype)
    return hidden_states - (hidden_states * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True)


def run_coding(args: argparse.Namespace, tokenizer) -> None:
    train, validation = read(f"{args.data}/train.jsonl"), read(f"{args.data}/validation.jsonl")
    codes = sorted({code for note in train for code in note["labels"]})
    column = {code: i for i, code in enumerate(codes)}

    def encode(notes: list[dict]) -> tuple[list[list[int]], torch.Tensor]:
        ids = tokenizer([note["text"] for note in notes], truncation=True, max_length=args.max_length)["input_ids"]
        targets = torch.zeros(len(notes), len(codes))
        for row, note in enumerate(notes):
            targets[row, [column[code] for code in note["labels"] if code in column]] = 1
        return ids, targets

    def batch(ids: list[list[int]], rows: list[int]) -> dict:
        length = max(len(ids[row]) for row in rows)
        input_ids = torch.tensor([ids[row] + [0] * (length - len(ids[row])) for row in rows])
        return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long()}

    (train_ids, train_targets), (val_ids, val_targets) = encode(train), encode(validation)
    torch.manual_seed(args.seed)
    config = model_config(args, len(tokenizer), 512, max_chunks=math.ceil(args.max_length / 512), num_labels=len(codes),
                          label_attention_dim=args.label_attention_dim, position_embedding_type=args.positions)  # fmt: skip
    if args.model_name_or_path:  # a pretrain.py output: its encoder (and its position scheme), a new head
        values = {key: getattr(config, key) for key in ("num_labels", "max_chunks", "label_attention_dim")}
        values["mlm_loss_weight"] = args.mlm_loss_weight or 0.0
        model = BertXMLForMultiLabelCoding.from_pretrained(args.model_name_or_path, **values)
    else:
        model = BertXMLForMultiLabelCoding(config)
    model.config.id2label = dict(enumerate(codes))
    if args.reinit_layers:
        reinit_top_layers(model, args.reinit_layers)
    head = model.label_head
    with torch.no_grad():
        if args.query_std is not None:
            head.queries.normal_(0.0, args.query_std)
        if args.output_std is not None:
            head.output_weight.normal_(0.0, args.output_std)
        elif head.projection is None:
            head.output_weight.copy_(head.queries)
    if not args.zero_bias:
        head.set_prior_bias(torch.arange(len(codes)), train_targets.mean(0))
    if args.init_from_descriptions:
        init_label_queries_from_descriptions(model, tokenizer, code_descriptions(codes))
    if args.calibrate_bias:  # each code's mean score on 32 training notes starts at its log prior odds
        model.eval()
        with torch.no_grad():
            head.output_bias.sub_(model(**batch(train_ids, list(range(32)))).logits.mean(0) - head.output_bias)
        model.train()
    if args.sign_step:
        rows = list(range(args.batch_size))
        return sign_step_probe(model, batch(train_ids, rows), train_targets[rows], batch(val_ids, rows), args.sign_step)
    if args.center_states:
        head.register_forward_pre_hook(lambda _, inputs: (center_states(*inputs), *inputs[1:]))
    # Every parameter is given to the optimizer before any is frozen: a frozen weight has no gradient (AdamW skips
    # it) until --unfreeze_after.
    optimizer = create_optimizer(model, args.learning_rate, param_groups={head: args.head_learning_rate})
    encoder = encoder_parameters(model)
    for parameter in encoder:
        parameter.requires_grad_(not args.freeze_encoder)
    masking = DataCollatorForLanguageModeling(tokenizer)
    steps_per_epoch = len(train_ids) // args.batch_size
    steps = int(args.epochs * steps_per_epoch)
    scheduler = create_scheduler(optimizer, steps, num_warmup_steps=int(args.warmup_ratio * steps))
    priors = np.tile(train_targets.mean(0).numpy(), (len(val_ids), 1))
    prior_map = compute_metrics(priors, val_targets.numpy().astype(np.int64), 0.5)["map"]
    print(f"{vars(args)}\n{len(codes)} codes, code-prior MAP {prior_map:.3f}")
    accelerator, progress = Accelerator(), Progress()
    order, start = torch.Generator().manual_seed(args.seed), time.time()
    while progress.step < steps:
        for indices in torch.randperm(len(train_ids), generator=order).split(args.batch_size):
            rows = indices.tolist()
            inputs = {**batch(train_ids, rows), "labels": train_targets[rows]}
            if args.mlm_loss_weight:  # the checkpoint's MLM head and loss kept (BertXMLConfig.mlm_loss_weight)
                inputs["input_ids"], inputs["mlm_labels"] = mask_for_mlm(masking, inputs["input_ids"])
            optimizer_step(accelerator, model, optimizer, scheduler, inputs, progress)
            if args.freeze_encoder and progress.step == args.unfreeze_after:
                for parameter in encoder:
                    parameter.requires_grad_(True)
            if args.probe_steps and progress.step % args.probe_steps == 0:
                cosine, entropy = collapse_probe(model, batch(val_ids, list(range(8))))
                print(f"step {progress.step}: token-state cosine {cosine:.3f}, label-attention entropy {entropy:.3f}")
            if progress.step % (steps_per_epoch // 2) == 0 or progress.step == steps:
                model.eval()
                with torch.no_grad():
                    probs = torch.cat([
                        torch.sigmoid(model(**batch(val_ids, list(range(i, min(i + 16, len(val_ids)))))).logits)
                        for i in range(0, len(val_ids), 16)
                    ]).numpy()  # fmt: skip
                result = compute_metrics(probs, val_targets.numpy().astype(np.int64), 0.5)
                print(f"epoch {progress.step / steps_per_epoch:.1f}: validation MAP {result['map']:.3f}, micro-AUC "
                      f"{result['micro_auc']:.3f}, macro-AUC {result['macro_auc']:.3f}, {time.time() - start:.0f} s")
            if progress.step >= steps:
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/synthetic", help="Folder with train.jsonl and validation.jsonl.")
    parser.add_argument("--tokenizer", default="data/synthetic-tokenizer")
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="Model initialisation and data order.")
    sub = parser.add_subparsers(dest="task", required=True)
    mlm = sub.add_parser("mlm", help="MLM from scratch on 512-token blocks")
    mlm.add_argument("--positions", choices=["absolute", "rotary"], default="rotary")
    mlm.add_argument("--learning_rate", type=float, default=1e-3)
    mlm.add_argument("--warmup", type=int, default=0)
    mlm.add_argument("--steps", type=int, default=200)
    mlm.add_argument("--batch_size", type=int, default=16)
    mlm.add_argument("--block", type=int, default=512)
    coding = sub.add_parser("coding", help="Fine-tuning from scratch, 512-token chunks")
    coding.add_argument("--model_name_or_path", help="Start from this pretrained encoder (default: from scratch).")
    coding.add_argument("--positions", choices=["absolute", "rotary"], default="rotary", help="From scratch only.")
    coding.add_argument("--learning_rate", type=float, default=2e-3, help="Encoder rate.")
    coding.add_argument("--head_learning_rate", type=float, default=3e-3)
    coding.add_argument("--query_std", type=float, help="Re-draw the queries (default: the model's init).")
    coding.add_argument("--output_std", type=float, help="Re-draw the output weights (default: = the queries).")
    coding.add_argument("--zero_bias", action="store_true", help="Output bias 0 instead of the log prior odds.")
    coding.add_argument("--freeze_encoder", action="store_true", help="Train the head alone on the encoder.")
    coding.add_argument("--unfreeze_after", type=int, help="With --freeze_encoder: train the encoder from this step.")
    coding.add_argument("--reinit_layers", type=int, help="Draw the top N layers of the encoder afresh.")
    coding.add_argument("--center_states", action="store_true", help="Label head on centred states (center_states).")
    coding.add_argument("--calibrate_bias", action="store_true", help="Start each code's mean score at its prior.")
    coding.add_argument("--mlm_loss_weight", type=float, help="Keep the checkpoint's MLM loss at this weight.")
    coding.add_argument("--init_from_descriptions", action="store_true", help="Queries from the codes' descriptions.")
    coding.add_argument("--sign_step", type=float, help="Only print sign_step_probe for a step of this size.")
    coding.add_argument("--label_attention_dim", type=int, help="LAAT's projection.")
    coding.add_argument("--warmup_ratio", type=float, default=0.0)
    coding.add_argument("--epochs", type=float, default=1.0)
    coding.add_argument("--batch_size", type=int, default=8)
    coding.add_argument("--max_length", type=int, default=1024)
    coding.add_argument("--probe_steps", type=int, help="Every N steps, print the collapse probe (collapse_probe).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    (run_mlm if args.task == "mlm" else run_coding)(args, tokenizer)


if __name__ == "__main__":
    main()
