# .venv/bin/python -m pytest tests/app/test_chat_compare_adapter.py -q
"""Compare mode on a LoRA run: the base side answers from the fine-tuned side's model with its adapter switched off
(peft's disable_adapter), so the base is loaded once. Real peft adapter of the starter, greedy replies."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from app import chat_view as cv
from trainer_core.config.run_config import RunConfig
from trainer_core.config.sections import TrainArgs
from trainer_core.models import adapters, inference
from trainer_core.models.inference import GenParams
from trainer_core.runs import protocol

GREEDY = GenParams(max_new_tokens=8, temperature=0.0, seed=0)
ASK = [{"role": "user", "content": "你是谁"}]


def test_the_base_side_switches_the_adapter_off_instead_of_loading_the_base(tmp_path, starter_model):
    torch.manual_seed(0)
    model = adapters.wrap_for_training(AutoModelForCausalLM.from_pretrained(starter_model),
                                       RunConfig(train=TrainArgs(method="lora")))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # an adapter that changes the replies
    final = tmp_path / "final"
    model.save_pretrained(final)
    AutoTokenizer.from_pretrained(starter_model).save_pretrained(final)
    protocol.mark_complete(final, {})
    inference.release_chat_models()
    try:
        tuned = "".join(cv.reply_stream(final, False, ASK, "", GREEDY))
        base = "".join(cv.reply_stream(starter_model, False, ASK, "", GREEDY))
        tuned_again = "".join(cv.reply_stream(final, False, ASK, "", GREEDY))
        assert [k[0] for k in inference.held_chat_models()] == [str(final)]  # one model held: the base not loaded
        assert tuned_again == tuned  # the adapter is on again after the base's turn
        inference.release_chat_models()
        alone = "".join(cv.reply_stream(starter_model, False, ASK, "", GREEDY))  # the base loaded by itself
        assert base == alone and tuned != base
    finally:
        inference.release_chat_models()
