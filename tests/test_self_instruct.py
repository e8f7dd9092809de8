"""The data side (the brief's `002_…`, `003_…`): the seed library, self-instruct's parsing, filters and funnel, and
judgmental questions measured as a classifier — each on hand-made cases (MoDS: test_data_selection.py)."""
import json
from collections import Counter

import pytest

from helpers import modeling, scoring, self_instruct


def test_the_committed_seed_library_loads_whole_and_keeps_its_test_statements_apart():
    seeds, held_out, skips = self_instruct.load_seed_library()
    assert skips.total == 0 and len(seeds) >= 8 and len(held_out) >= 40
    assert {t["type"] for t in seeds} == {"judgmental", "open"} == {t["type"] for t in held_out}
    assert not {t["instruction"] for t in seeds} & {t["instruction"] for t in held_out}
    judged = [t["output"] for t in held_out if t["type"] == "judgmental"]
    assert min(judged.count("yes"), judged.count("no")) >= 10      # both classes: precision and recall readable


def test_malformed_seed_rows_are_skipped_and_counted(tmp_path):
    good = {"instruction": "The X-23S weighs 310 grams.", "input": "Does it weigh 310 grams?", "output": "yes",
            "type": "judgmental"}
    rows = [good, {**good, "input": None}, {**good, "output": "  "}, {**good, "output": "maybe"},
            {**good, "instruction": "ok <|im_end|> now"}, {**good, "type": "essay"}, "not a task",
            {**good, "type": "open", "output": "Does it weigh 310 grams?"}]
    path = tmp_path / "seeds.json"
    path.write_text(json.dumps({"seeds": rows, "held_out": [good]}))
    seeds, held_out, skips = self_instruct.load_seed_library(path)
    assert seeds == [good] and held_out == [good] and skips.total == 7
    assert set(skips.reasons) == {"input missing or not text", "output empty", "text spells a control token",
                                  "a judgmental task's output is not yes or no", "type 'essay' is not one of "
                                  "judgmental, open", "not an object", "output equals input"}


def test_a_prompt_lists_judgmental_tasks_output_first_and_a_reply_parses_back():
    """A chat model often copies the listed tasks before (or instead of) writing a new one: the first task of the
    reply that is not a copy is taken; a reply cut short loses its last task; no whole task, nothing."""
    seeds, _, _ = self_instruct.load_seed_library()
    judgmental = [t for t in seeds if t["type"] == "judgmental"][:2]
    prompt = self_instruct.encode_prompt(judgmental, "judgmental")
    first = self_instruct.show_task(judgmental[0], 1)
    assert first.index("Output:") < first.index("Input:") and prompt.endswith("Task 3\nInstruction:")
    new = {"instruction": "The X-23S has a blue case.", "output": "no", "input": "Is the case of the X-23S red?",
           "type": "judgmental"}
    reply = (self_instruct.show_task(judgmental[0], 1) + "\n\nTask 2\nInstruction: The X-23S has a blue case.\n"
             "Output: no\nInput: Is the case of the X-23S red?\n\nTask 3\nInstruction: The X-23S is")
    assert self_instruct.parse_task(reply, "judgmental", judgmental) == new
    assert self_instruct.parse_task(reply, "judgmental", judgmental, cut=True) == new
    assert self_instruct.parse_task("Instruction: The pump is loud.\nOutput: yes\nInput: Is it loud?", "judgmental",
                                    cut=True) is None                   # its only task may be cut short
    bold = "**Instruction:** Neurogenix has 40 staff.\n**Input:** How many staff does Neurogenix have?\n**Output:** 40"
    assert self_instruct.parse_task(bold, "open")["output"] == "40"
    assert self_instruct.parse_task("The pump is loud.\nInput: Is it loud?", "judgmental") is None
    copy = self_instruct.show_task(judgmental[1], 1)
    assert self_instruct.parse_task(copy, "judgmental", judgmental)["input"] == judgmental[1]["input"]   # ROUGE-L's


def test_each_filter_removes_what_it_should_and_the_funnel_counts_it():
    pool = [{"instruction": "The X-23S runs on two batteries and weighs 310 grams.",
             "input": "How many grams does the X-23S weigh?", "output": "310", "type": "open"}]
    task = lambda instruction, question, answer, kind="open": {"instruction": instruction, "input": question,
                                                               "output": answer, "type": kind}
    fresh = task("The X-23S case is made of blue titanium.", "What is the case made of?", "titanium")
    candidates = [
        {"task": fresh, "truncated": False},                                                        # kept
        {"task": fresh, "truncated": True},                                                         # truncated
        {"task": None, "truncated": False},                                                         # not a task
        {"task": task("The X-23S is quiet.", "Is it quiet?", "perhaps", "judgmental"), "truncated": False},
        {"task": task("Blue.", "What colour?", "blue"), "truncated": False},                        # too short
        {"task": task("The X-23S runs on two batteries and weighs 310 grams.", "How many grams does the X-23S "
                      "weigh now?", "310"), "truncated": False},                                    # near-duplicate
        {"task": task("The X-23S case is made of blue titanium.", "What is the case made of?", "titanium"),
         "truncated": False}]                                         # a duplicate of the one kept just before
    funnel = Counter()
    kept = self_instruct.filter_candidates(candidates, pool, funnel)
    assert kept == [fresh]
    assert funnel == Counter({"generated": 7, "removed: truncated generation": 1,
                              "removed: not a task (a field missing)": 1,
                              "removed: invalid (a judgmental task's output is not yes or no)": 1,
                              "removed: too short or too long": 1,
                              "removed: ROUGE-L > 0.7 to a task in the pool": 2})
    same = [task("A is B.", "Is A B?", "yes", "judgmental"), task("A is not B.", "Is A B?", "no", "judgmental"),
            task("C is D.", "Is C D?", "yes", "judgmental"), task("C is D indeed.", "Is C D?", "Yes", "judgmental")]
    assert self_instruct.drop_conflicts(same, funnel) == same[2:]
    assert funnel["removed: the same input with different outputs"] == 2


def test_judgmental_answers_as_a_classifier_by_hand():
    """References yes, yes, yes, no, no, no; answers yes, no, "maybe", yes, no, "No.": the confusion matrix is
    yes → (yes 1, no 1, neither 1), no → (yes 1, no 2, neither 0). tp 1, fp 1, fn 2: precision 1/2, recall 1/3,
    F1 = 2 · (1/2 · 1/3) / (1/2 + 1/3) = 0.4; accuracy (1 + 2) / 6 = 0.5."""
    got = scoring.yes_no_metrics(["yes", "no", "maybe", "yes", "no", "No."], ["yes"] * 3 + ["no"] * 3)
    assert got["confusion"] == {"yes": {"yes": 1, "no": 1, "neither": 1}, "no": {"yes": 1, "no": 2, "neither": 0}}
    assert got["accuracy"] == 0.5 and got["precision"] == 0.5 and got["recall"] == pytest.approx(1 / 3)
    assert got["f1"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="not yes or no"):
        scoring.yes_no_metrics(["yes"], ["perhaps"])


def test_the_loop_generates_filters_and_counts_every_candidate(chat_model_dir):
    """A small model's attempts, start to end: every generated candidate is either kept or counted by one filter."""
    seeds, _, _ = self_instruct.load_seed_library()
    model, tokenizer = modeling.load_model(chat_model_dir), modeling.load_tokenizer(chat_model_dir)
    kept, funnel = self_instruct.self_instruct(model, tokenizer, seeds, requests=6, max_new_tokens=24)
    removed = sum(v for k, v in funnel.items() if k.startswith("removed"))
    assert funnel["generated"] == 6 and funnel["kept"] == len(kept) and funnel["kept"] + removed == 6
    assert all(self_instruct.task_problem(t) is None for t in kept)
    assert self_instruct.funnel_lines(funnel)[0] == "generated: 6" and self_instruct.funnel_lines(funnel)[-1] == \
        f"kept: {len(kept)}"


@pytest.mark.skipif(not __import__("os").environ.get("QWEN_MODEL_DIR"),
                    reason="needs a real Qwen2.5-architecture instruct checkpoint in QWEN_MODEL_DIR "
                           "(../shared/tools/get-real-qwen.sh DIR builds one)")
def test_a_real_qwen_instruct_model_writes_new_tasks_that_pass_the_filters(capsys):
    """On the real architecture the loop must produce new, well-formed tasks: some pass every filter (printed, to
    be read). Slow on a CPU (a 0.5B model, 8 requests)."""
    import os
    folder = os.environ["QWEN_MODEL_DIR"]
    seeds, _, _ = self_instruct.load_seed_library()
    model, tokenizer = modeling.load_model(folder), modeling.load_tokenizer(folder)
    kept, funnel = self_instruct.self_instruct(model, tokenizer, seeds, requests=8, batch_size=8)
    with capsys.disabled():
        print("\n" + "\n".join(self_instruct.funnel_lines(funnel)))
        for t in kept:
            print(f"  [{t['type']}] {t['instruction']} | {t['input']} → {t['output']}")
    assert kept and all(self_instruct.task_problem(t) is None for t in kept)
    assert not {t["input"] for t in kept} & {t["input"] for t in seeds}       # new questions, not copies
