"""The loss mask of build_sft_example: masked, unmasked and fractional prompt-loss weights, truncation."""
import math

import pytest

from helpers import formatting


SINGLE = [{"role": "user", "content": "Tell me a joke."},
          {"role": "assistant", "content": "Why did the chicken cross the road? To get to the other side."}]


WITH_SYSTEM = [{"role": "system", "content": "Be brief."}] + SINGLE


def trained_ids(example):
    return [t for t, label in zip(example["input_ids"], example["labels"]) if label != -100]


def prompt_ids(tokenizer, messages):
    text = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("messages", [SINGLE, WITH_SYSTEM], ids=["default_system", "own_system"])
def test_masked_trains_exactly_the_assistant_text_and_im_end(any_tokenizer, messages):
    tok = any_tokenizer
    example = formatting.build_sft_example(tok, messages, max_length=512)
    answer = messages[-1]["content"]
    assert tok.decode(trained_ids(example)) == answer + "<|im_end|>"
    assert trained_ids(example) == tok(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
    prompt = prompt_ids(tok, messages)
    assert example["input_ids"][:len(prompt)] == prompt          # the prompt renders the same inside the whole
    assert all(label == -100 for label in example["labels"][:len(prompt)])
    assert all(label != -100 for label in example["labels"][len(prompt):-1])   # one contiguous response
    im_end, newline = tok.convert_tokens_to_ids("<|im_end|>"), tok("\n", add_special_tokens=False)["input_ids"]
    assert trained_ids(example)[-1] == im_end
    assert example["input_ids"][-2:] == [im_end] + newline    # the template's closing "\n" ...
    assert example["labels"][-1] == -100                       # ... is not trained
    assert example["attention_mask"] == [1] * len(example["input_ids"])
    assert len(example["labels"]) == len(example["input_ids"])
    assert "loss_weights" not in example


IM_START_ID, IM_END_ID, ENDOFTEXT_ID, NEWLINE_ID = 151644, 151645, 151643, 198


QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def test_masked_qwen_token_ids_default_system(qwen_tokenizer):
    example = formatting.build_sft_example(qwen_tokenizer, SINGLE, max_length=512)
    ids, labels = example["input_ids"], example["labels"]
    prompt = prompt_ids(qwen_tokenizer, SINGLE)
    assert ids[0] == IM_START_ID
    assert ids.count(IM_START_ID) == 3 and ids.count(IM_END_ID) == 3        # default system + user + assistant
    assert ENDOFTEXT_ID not in ids
    assert QWEN_DEFAULT_SYSTEM in qwen_tokenizer.decode(ids[:len(prompt)])
    # the prompt ends with <|im_start|>assistant\n and all of it is masked
    assert ids[len(prompt) - 3] == IM_START_ID and ids[len(prompt) - 1] == NEWLINE_ID
    assert qwen_tokenizer.decode(ids[len(prompt) - 3:len(prompt)]) == "<|im_start|>assistant\n"
    assert set(labels[:len(prompt)]) == {-100}
    assert ids[-2:] == [IM_END_ID, NEWLINE_ID] and labels[-2:] == [IM_END_ID, -100]
    assert [t for t in labels if t != -100][-1] == IM_END_ID


def test_masked_qwen_own_system_replaces_default(qwen_tokenizer):
    example = formatting.build_sft_example(qwen_tokenizer, WITH_SYSTEM, max_length=512)
    text = qwen_tokenizer.decode(example["input_ids"])
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert QWEN_DEFAULT_SYSTEM not in text
    assert example["input_ids"].count(IM_START_ID) == 3
    assert qwen_tokenizer.decode(trained_ids(example)) == SINGLE[-1]["content"] + "<|im_end|>"


MULTI = [{"role": "system", "content": "Be brief."},
         {"role": "user", "content": "Hello there."},
         {"role": "assistant", "content": "Hello friend!"},
         {"role": "user", "content": "What is the capital of France?"},
         {"role": "assistant", "content": "The capital of France is Paris."}]


def runs(flags):
    """[(start, end)] of the maximal runs of True in flags."""
    out, start = [], None
    for i, f in enumerate(list(flags) + [False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            out.append((start, i))
            start = None
    return out


def test_multi_turn_trains_only_assistant_turns_in_order(any_tokenizer):
    tok = any_tokenizer
    example = formatting.build_sft_example(tok, MULTI, max_length=512)
    a1, a2 = MULTI[2]["content"], MULTI[4]["content"]
    assert tok.decode(trained_ids(example)) == a1 + "<|im_end|>" + a2 + "<|im_end|>"
    trained = [label != -100 for label in example["labels"]]
    spans = runs(trained)
    assert len(spans) == 2                                       # two separate assistant turns
    first = tok.decode(example["input_ids"][spans[0][0]:spans[0][1]])
    assert first == a1 + "<|im_end|>"
    between = tok.decode(example["input_ids"][spans[0][1]:spans[1][0]])
    assert between == "\n<|im_start|>user\n" + MULTI[3]["content"] + "<|im_end|>\n<|im_start|>assistant\n"
    untrained = tok.decode([t for t, f in zip(example["input_ids"], trained) if not f])
    assert MULTI[1]["content"] in untrained and MULTI[3]["content"] in untrained
    # the first turn's prefix is masked exactly as in the single-turn rule
    assert not any(trained[:len(prompt_ids(tok, MULTI[:3]))])


def test_conversation_ending_with_user_turn_trains_only_the_assistant(any_tokenizer):
    tok = any_tokenizer
    messages = MULTI[:4]
    example = formatting.build_sft_example(tok, messages, max_length=512)
    assert tok.decode(trained_ids(example)) == MULTI[2]["content"] + "<|im_end|>"


def test_unmasked_trains_every_token(any_tokenizer):
    masked = formatting.build_sft_example(any_tokenizer, MULTI, 512, prompt_loss_weight=0.0)
    unmasked = formatting.build_sft_example(any_tokenizer, MULTI, 512, prompt_loss_weight=1.0)
    assert unmasked["input_ids"] == masked["input_ids"]          # same render, only the labels differ
    assert unmasked["labels"] == unmasked["input_ids"]
    assert -100 not in unmasked["labels"]
    assert "loss_weights" not in unmasked


def test_fractional_weight_weights_prompt_tokens(any_tokenizer):
    masked = formatting.build_sft_example(any_tokenizer, MULTI, 512, prompt_loss_weight=0.0)
    partial = formatting.build_sft_example(any_tokenizer, MULTI, 512, prompt_loss_weight=0.1)
    assert partial["input_ids"] == masked["input_ids"]
    assert partial["labels"] == partial["input_ids"]
    weights = partial["loss_weights"]
    assert len(weights) == len(partial["input_ids"])
    for w, label in zip(weights, masked["labels"]):
        assert w == (1.0 if label != -100 else 0.1)
    assert weights.count(1.0) == len(trained_ids(masked)) > 0
    assert weights.count(0.1) == len(weights) - weights.count(1.0) > 0


@pytest.mark.parametrize("weight", [-0.1, 1.5, 2, float("nan"), -math.inf])
def test_weight_outside_unit_interval_raises(tiny_tokenizer, weight):
    with pytest.raises(ValueError, match="prompt_loss_weight"):
        formatting.build_sft_example(tiny_tokenizer, SINGLE, 512, prompt_loss_weight=weight)


def test_truncation_into_the_prompt_returns_none(any_tokenizer):
    n_prompt = len(prompt_ids(any_tokenizer, SINGLE))
    for weight in (0.0, 0.1, 1.0):       # same examples kept whatever the weight
        assert formatting.build_sft_example(any_tokenizer, SINGLE, 10, weight) is None
        assert formatting.build_sft_example(any_tokenizer, SINGLE, n_prompt, weight) is None
    # one more token than the prompt keeps exactly the first answer token
    one = formatting.build_sft_example(any_tokenizer, SINGLE, n_prompt + 1)
    assert len(one["input_ids"]) == n_prompt + 1
    first_answer_token = any_tokenizer(SINGLE[-1]["content"], add_special_tokens=False)["input_ids"][0]
    assert trained_ids(one) == [first_answer_token]


def test_truncation_inside_the_response_keeps_a_prefix_without_im_end(any_tokenizer):
    tok = any_tokenizer
    n_prompt = len(prompt_ids(tok, SINGLE))
    example = formatting.build_sft_example(tok, SINGLE, n_prompt + 4)
    assert len(example["input_ids"]) == len(example["labels"]) == len(example["attention_mask"]) == n_prompt + 4
    answer_ids = tok(SINGLE[-1]["content"], add_special_tokens=False)["input_ids"]
    assert trained_ids(example) == answer_ids[:4]
    assert tok.convert_tokens_to_ids("<|im_end|>") not in trained_ids(example)


def test_build_sft_dataset_skips_truncated_and_malformed_rows(any_tokenizer):
    long_question = " ".join(["tell me a joke"] * 200)
    rows = [{"messages": SINGLE},                                                        # 0 fine
            {"messages": [{"role": "user", "content": long_question},                    # 1 truncated away
                          {"role": "assistant", "content": "No."}]},
            {"messages": [{"role": "robot", "content": "beep"},                           # 2 unknown role
                          {"role": "assistant", "content": "Hi."}]},
            {"messages": [{"role": "user", "content": "Hi."},                             # 3 empty answer
                          {"role": "assistant", "content": "   "}]},
            {"messages": [{"role": "user", "content": ["not", "a", "string"]},            # 4 non-string content
                          {"role": "assistant", "content": "Hi."}]},
            {"messages": WITH_SYSTEM}]                                                    # 5 fine
    examples, skips = formatting.build_sft_dataset(any_tokenizer, rows, max_length=128, name="unit")
    assert len(examples) == 2
    assert [any_tokenizer.decode(trained_ids(e)) for e in examples] == [SINGLE[-1]["content"] + "<|im_end|>"] * 2
    assert skips.total == 4
    assert skips.reasons == {"no trainable token left after truncation to 128": 1,
                             "message 0 has unknown role 'robot'": 1,
                             "message 1 is an empty assistant message": 1,
                             "message 0 content is not a string": 1}
    report = skips.report()
    assert report.startswith("unit: skipped 4 rows")
    assert "row 1: no trainable token left after truncation to 128" in report
    assert "row 2: message 0 has unknown role 'robot'" in report


def test_build_sft_dataset_counts_exactly_one_truncated_row(tiny_tokenizer):
    rows = [{"messages": SINGLE}, {"messages": [{"role": "user", "content": "hello " * 300},
                                                {"role": "assistant", "content": "Hi."}]}, {"messages": MULTI}]
    examples, skips = formatting.build_sft_dataset(tiny_tokenizer, rows, max_length=200)
    assert len(examples) == 2 and skips.total == 1
    assert "row 1:" in skips.report()


def test_build_sft_dataset_skips_assistant_first_conversation(tiny_tokenizer):
    rows = [{"messages": [{"role": "assistant", "content": "Hello friend!"}]}, {"messages": SINGLE}]
    examples, skips = formatting.build_sft_dataset(tiny_tokenizer, rows, max_length=128)
    assert len(examples) == 1 and skips.total == 1
