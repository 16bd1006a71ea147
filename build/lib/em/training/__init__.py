"""Fine-tuning: open models with Lightning + PEFT (``em.training.sft``), OpenAI models (``openai_ft``).

Open-model modules, in the order data flows through them: ``settings`` (typed settings of a run),
``collate`` (chat template -> token ids + assistant-only labels; packed or padded micro-batches),
``datamodule`` (tokenised rows -> deterministic, resumable micro-batches), ``module`` (the PEFT model and its
LightningModule), which switches the model to ``packed_attention`` (sdpa per example of a packed row) and
``fused_lora`` (the LoRA update inside one matmul), ``callbacks`` (per-step metrics, adapter-only checkpoints),
``sft`` (``train_sft``: one run).
"""
