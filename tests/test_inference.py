# .venv/bin/python -m pytest tests/test_inference.py -q
"""Chat inference on the starter model: streaming equals plain generation, history trimming, model resolution."""

import pytest

from trainer_core.data.chat_format import prompt_ids
from trainer_core.common.errors import UserError
from trainer_core.models.inference import GenParams, load_chat_model, reply, resolve_model_dir, stream_reply, trim_history


@pytest.fixture(scope="module")
def chat_model(starter_model):
    return load_chat_model(starter_model)


def test_stream_pieces_join_to_the_greedy_reply(chat_model):
    model, tok = chat_model
    params = GenParams(max_new_tokens=12, temperature=0)
    msgs = [{"role": "user", "content": "皇上驾到"}]
    pieces = list(stream_reply(model, tok, msgs, persona="你是甄嬛", params=params))
    assert "".join(pieces) == reply(model, tok, msgs, persona="你是甄嬛", params=params)


def test_an_abandoned_reply_frees_the_inference_thread(chat_model):
    """A reader that stops reading (a closed tab) must not keep the single inference thread busy with the rest of a
    long generation: the next chat would wait for it."""
    import threading

    from trainer_core.models.inference import on_inference_thread

    model, tok = chat_model
    forwards = []
    hook = model.register_forward_hook(lambda *args: forwards.append(1))  # one forward per generated token
    model.generation_config.min_new_tokens = 1500  # no early end-of-text: only the cancel can stop it
    try:
        params = GenParams(max_new_tokens=1500, temperature=0)
        stream = stream_reply(model, tok, [{"role": "user", "content": "皇上驾到"}], persona="你是甄嬛", params=params)
        next(stream)
        stream.close()  # what Python does to a generator nobody reads any more
        # Anything queued after it runs once the abandoned generation has stopped.
        assert on_inference_thread(threading.current_thread).result(timeout=120).name.startswith("inference")
    finally:
        model.generation_config.min_new_tokens = None
        hook.remove()
    assert len(forwards) < 500, f"the abandoned reply generated {len(forwards)} of its 1500 tokens"


def test_stop_ends_the_generation_early_and_keeps_what_was_said(chat_model):
    """The Chat page's stop button: stop() from another thread ends `generate` itself at the next token (not only
    the display), the stream ends cleanly, and the text streamed so far is the start of the full reply."""
    import threading

    from trainer_core.models.inference import ReplyHandle

    model, tok = chat_model
    forwards = []
    hook = model.register_forward_hook(lambda *args: forwards.append(1))  # one forward per generated token
    model.generation_config.min_new_tokens = 400  # no early end-of-text: only the stop can end it sooner
    params = GenParams(max_new_tokens=400, temperature=0, repetition_penalty=1.0)
    msgs = [{"role": "user", "content": "皇上驾到"}]
    try:
        handle = ReplyHandle()
        pieces = []
        for piece in stream_reply(model, tok, msgs, persona="你是甄嬛", params=params, handle=handle):
            pieces.append(piece)
            if len(pieces) == 3:  # the click arrives on the page's thread while the model is writing
                threading.Thread(target=handle.stop).start()
        generated = len(forwards)
        # Greedy: the unstopped reply a few tokens longer starts with exactly what was streamed.
        longer = GenParams(max_new_tokens=handle.tokens + 8, temperature=0, repetition_penalty=1.0)
        model.generation_config.min_new_tokens = longer.max_new_tokens
        full = reply(model, tok, msgs, persona="你是甄嬛", params=longer)
    finally:
        model.generation_config.min_new_tokens = None
        hook.remove()
    assert handle.stopped and handle.finished.is_set()
    assert generated < 200 and handle.tokens < 200, f"stopped after {handle.tokens} of 400 tokens"
    assert 3 <= handle.tokens <= generated
    assert full.startswith("".join(pieces)) and len("".join(pieces)) < len(full)


def test_a_reply_counts_its_tokens_and_speed(chat_model):
    from trainer_core.models.inference import ReplyHandle

    model, tok = chat_model
    model.generation_config.min_new_tokens = 20
    handle = ReplyHandle()
    try:
        text = "".join(stream_reply(model, tok, [{"role": "user", "content": "你是谁？"}], persona="你是甄嬛",
                                    params=GenParams(max_new_tokens=20, temperature=0), handle=handle))
    finally:
        model.generation_config.min_new_tokens = None
    assert handle.tokens == 20 and not handle.stopped  # ran to max_new_tokens: every token counted, none stopped
    assert text and handle.seconds > 0 and handle.tokens_per_s == pytest.approx(20 / handle.seconds)
    handle.stop()  # a click that comes after the end changes nothing
    assert not handle.stopped


def test_history_is_trimmed_from_the_oldest_turn(starter_tokenizer):
    history = []
    for i in range(6):
        history += [{"role": "user", "content": f"第{i}问" * 20}, {"role": "assistant", "content": f"第{i}答" * 20}]
    history.append({"role": "user", "content": "最后一问"})
    full = len(prompt_ids(starter_tokenizer, history, "你是甄嬛"))
    kept, ids = trim_history(starter_tokenizer, history, "你是甄嬛", budget=full // 2)
    assert len(ids) <= full // 2
    assert kept[-1]["content"] == "最后一问", "the newest user turn always stays"
    assert kept[0]["role"] == "user" and kept[0]["content"] != history[0]["content"], "oldest turns dropped first"
    assert kept == history[len(history) - len(kept):], "what stays is the newest, in order"


def test_generation_parameters_are_validated():
    with pytest.raises(UserError, match="top_p"):
        GenParams(top_p=0)
    with pytest.raises(UserError, match="max_new_tokens"):
        GenParams(max_new_tokens=0)


def test_a_run_without_a_model_yet_is_explained(tmp_path):
    (tmp_path / "config.yaml").write_text("name: x\n")
    with pytest.raises(UserError, match="no final model and no complete checkpoint"):
        resolve_model_dir(tmp_path)


def test_plain_model_folder_uses_its_own_default_system_prompt(starter_model, tmp_path):
    from trainer_core.runs import protocol
    from trainer_core.models.inference import PERSONA_GIVEN, PERSONA_MODEL_DEFAULT, PERSONA_TRAINED, chat_persona

    assert chat_persona(starter_model, None) == ("", PERSONA_MODEL_DEFAULT)
    assert chat_persona(starter_model, "你是甄嬛") == ("你是甄嬛", PERSONA_GIVEN)
    trained = tmp_path / "final"
    trained.mkdir()
    protocol.write_json_atomic(trained / "persona.json", {"persona": "你是华妃"})
    assert chat_persona(trained, None) == ("你是华妃", PERSONA_TRAINED)

    # No persona: the template's own default system turn is what the model sees.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(starter_model)
    tok.chat_template = ("{%- if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
                         "<|im_end|>\n{%- endif %}{%- for m in messages %}<|im_start|>{{ m['role'] }}\n"
                         "{{ m['content'] }}<|im_end|>\n{%- endfor %}<|im_start|>assistant\n")
    persona, _ = chat_persona(starter_model, None)
    text = tok.decode(prompt_ids(tok, [{"role": "user", "content": "hi"}], persona))
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")


def test_stream_drops_stop_tokens_and_a_half_character(chat_model):
    import torch

    from trainer_core.models.inference import _reply_streamer

    _, tok = chat_model
    good = tok("好ok", add_special_tokens=False)["input_ids"]
    fish = tok("鱻", add_special_tokens=False)["input_ids"]
    assert len(fish) == 2  # two byte-level tokens; the first alone decodes to U+FFFD
    stop = tok("X", add_special_tokens=False)["input_ids"][0]  # an ordinary token used as a stop id: never shown
    streamer = _reply_streamer(tok, [stop])
    streamer.put(torch.tensor([[1, 2, 3]]))  # the prompt
    for token in [*good, stop, fish[0]]:  # max_new_tokens cut the last character in half
        streamer.put(torch.tensor([token]))
    streamer.end()
    assert "".join(streamer) == "好ok"


def test_stream_shows_each_token_as_it_arrives(chat_model):
    """The CLI and the Chat page print a byte-level BPE model's first token when it is generated, not when a space
    follows it; the pieces still join to the whole reply, and half a character waits for its other bytes."""
    import torch

    from trainer_core.models.inference import _reply_streamer

    _, tok = chat_model
    words = tok("Hello world", add_special_tokens=False)["input_ids"]
    fish = tok("鱻", add_special_tokens=False)["input_ids"]
    streamer = _reply_streamer(tok, [])
    streamer.put(torch.tensor([[1, 2, 3]]))  # the prompt
    shown = []
    for token in [*words, *fish, *tok("!\nok", add_special_tokens=False)["input_ids"]]:
        streamer.put(torch.tensor([token]))
        pieces = []
        while not streamer.text_queue.empty():
            pieces.append(streamer.text_queue.get_nowait())
        shown.append("".join(pieces))
    streamer.end()
    assert shown[0] == tok.decode(words[:1]) and shown[0].strip()  # "Hello" before any space
    assert shown[len(words)] == ""  # the first byte of 鱻 alone is held back
    assert "".join(shown) + "".join(streamer) == "Hello world鱻!\nok"
