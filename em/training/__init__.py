"""Fine-tuning: open models with Lightning + PEFT (``em.training.sft``), OpenAI models (``openai_ft``).

Open-model modules, in the order data flows through them: ``settings`` (typed settings of a run: one
dataclass per config group: ``lora``, ``optimizer``, ``quantization``, ``batch``, ``trainer``),
``collate`` (chat template -> token ids + assistant-only labels; packed or padded micro-batches),
``examples`` (a run's rows -> its tokenised examples),
``datamodule`` (tokenised rows -> deterministic, resumable micro-batches), ``module`` (the PEFT model and its
LightningModule), which switches the model to ``packed_attention`` (sdpa per example of a packed row) and
``fused_lora`` (the LoRA update inside one matmul), ``callbacks`` (per-step metrics, adapter-only checkpoints),
``outputs`` (the adapter directory, never half written), ``sft`` (``train_sft``: one run), which checks first
(``sft_preflight``; ``parent_adapter``: the ``init_from`` stage) and then runs ``sft_trainer`` (the Lightning
Trainer and callbacks), with ``holdout`` (the narrow task's held-out loss) and ``early_stop``
(``mitigation=early_stop``) beside it.

OpenAI modules: ``openai_ft_data`` (pre-flight: validation, estimate), ``openai_ft`` (the job run to its end),
which uses ``openai_ft_api`` (the calls), ``openai_ft_state`` (``state.json``), ``openai_ft_events``
(``events.jsonl``) and ``openai_ft_types`` (settings, result, failure).
"""
