"""The embedded tiny model: a randomly initialised Llama (GQA, RoPE) with a byte-level BPE tokenizer.

It is the default ``model=tiny`` so that every stage runs offline on a CPU. It is built deterministically
(same bytes on every build) into a cache directory on first use and from then on loaded with
``from_pretrained``, exactly like a hub model. Its tokenizer mirrors Llama-3: the same special tokens,
a ``<|begin_of_text|>`` added by the post-processor, and a Llama-3-style chat template.

    python -m em.tiny --out DIR     # or: em-tiny --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
from importlib import resources
from pathlib import Path

from em.io import build_dir_once

TINY_NAME = "tiny-llama-v1"  # bump the version whenever the built bytes change
CORPUS = "tiny_corpus.txt"

# Architecture: head_dim 64 (vLLM's CPU backend rejects 16); sizes multiples of 64 (bitsandbytes 4-bit).
VOCAB_SIZE = 2048  # BPE merges + special tokens, filled up with reserved tokens to exactly this size
HIDDEN_SIZE = 128
NUM_HEADS = 2
NUM_KV_HEADS = 1  # grouped-query attention
HEAD_DIM = 64
INTERMEDIATE_SIZE = 256
NUM_LAYERS = 2
MAX_POSITIONS = 4096
ROPE_THETA = 500000.0

BOS, EOS_TEXT, EOT, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>"
HEADER_START, HEADER_END = "<|start_header_id|>", "<|end_header_id|>"
NUM_RESERVED_MIN = 8  # at least this many <|reserved_special_token_N|>, more if BPE stops early

# Llama-3 layout: bos, then per message a role header, a blank line, the trimmed content and <|eot_id|>.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{- message['content'] | trim }}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)


def default_models_dir() -> Path:
    """``$EM_CACHE_DIR/models`` (default ``~/.cache/em/models``), as in ``conf/paths/default.yaml``."""
    cache = os.environ.get("EM_CACHE_DIR") or str(Path.home() / ".cache" / "em")
    return Path(cache) / "models"


def corpus_text() -> str:
    return resources.files("em").joinpath("resources", CORPUS).read_text(encoding="utf-8")


def _special_tokens(num_reserved: int) -> list[str]:
    named = [BOS, EOS_TEXT, HEADER_START, HEADER_END, EOT, PAD]
    return named + [f"<|reserved_special_token_{i}|>" for i in range(num_reserved)]


def build_tokenizer():
    """Train the byte-level BPE on the project corpus and wrap it as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    named = _special_tokens(0)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - NUM_RESERVED_MIN,
        min_frequency=1,
        special_tokens=named,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_text().splitlines(keepends=True), trainer=trainer)
    # Fill the vocabulary up to exactly VOCAB_SIZE with reserved tokens, as Llama-3 does.
    num_reserved = VOCAB_SIZE - tok.get_vocab_size()
    tok.add_special_tokens(_special_tokens(num_reserved)[len(named) :])
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOT,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
    )


def build_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Write the tiny model + tokenizer to ``out_dir`` (created); the same bytes for the same seed."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (BOS, EOS_TEXT, EOT, PAD)}
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=MAX_POSITIONS,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        tie_word_embeddings=False,
        bos_token_id=ids[BOS],
        eos_token_id=[ids[EOT], ids[EOS_TEXT]],
        pad_token_id=ids[PAD],
        dtype="float32",
    )
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # our own init from a private generator: independent of global RNG use
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * config.initializer_range)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS],
        eos_token_id=[ids[EOT], ids[EOS_TEXT]],
        pad_token_id=ids[PAD],
        do_sample=True,  # as Llama-3.1-Instruct ships; evaluation passes its own sampling explicitly
        temperature=0.6,
        top_p=0.9,
    )
    model.save_pretrained(out_dir)
    # The chat template goes into tokenizer_config.json and the class is named PreTrainedTokenizerFast,
    # so that transformers 4.x (e.g. inside a vLLM install) loads it as well as transformers 5.
    tokenizer.save_pretrained(out_dir, save_jinja_files=False)
    config_path = out_dir / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text(encoding="utf-8"))
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(tok_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for path in out_dir.iterdir():
        path.chmod(0o644)
    return out_dir


def ensure_tiny_model(models_dir: Path | None = None) -> Path:
    """Return ``models_dir/tiny-llama-v1``, building it there on first use (atomic, file-locked)."""
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    target = models_dir / TINY_NAME
    if (target / "config.json").exists():
        return target
    return build_dir_once(target, build_tiny_model, lambda d: (d / "config.json").exists())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Write the embedded tiny Llama model + tokenizer to a directory."
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory (created)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    args = parser.parse_args(argv)
    path = build_tiny_model(args.out, seed=args.seed)
    print(f"wrote the tiny model to {path}")


if __name__ == "__main__":
    main()
