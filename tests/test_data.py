"""Converters of the real hub schemas, skip accounting, holdout splits, manifests, jsonl reading."""
import json

import pytest

from helpers import config, countdown, data
from helpers.data import SkipCounter


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


@pytest.mark.hostile
def test_convert_smoltalk_good_and_bad_rows():
    rows = [
        {"messages": [{"role": "system", "content": "Be kind."}, user("Hi!"), assistant("Hello! How can I help?")],
         "source": "smol-magpie-ultra"},                                                     # 0 good
        {"messages": [{"content": "no role"}, assistant("x")], "source": "s"},                 # 1 missing role
        {"messages": [user("Hi"), {"role": "robot", "content": "beep"}], "source": "s"},       # 2 unknown role
        {"messages": [user(None), assistant("x")], "source": "s"},                             # 3 non-string
        {"messages": [user("Hi"), assistant("  \n ")], "source": "s"},                        # 4 empty answer
        {"source": "s"},                                                                       # 5 no messages
        {"messages": [user("Hi")], "source": "s"},                                             # 6 no assistant
        {"messages": [user("Q1"), assistant("A1"), user("Q2"), assistant("A2")]},              # 7 good, no source
    ]
    skips = SkipCounter("smoltalk")
    out = data.convert_smoltalk(rows, skips)
    assert out == [
        {"messages": [{"role": "system", "content": "Be kind."}, user("Hi!"), assistant("Hello! How can I help?")],
         "source": "smol-magpie-ultra"},
        {"messages": [user("Q1"), assistant("A1"), user("Q2"), assistant("A2")], "source": "smoltalk"}]
    assert skips.total == 6
    assert skips.reasons == {"message 0 has no role": 1, "message 1 has unknown role 'robot'": 1,
                             "message 0 content is not a string": 1, "message 1 is an empty assistant message": 1,
                             "messages missing or empty": 1, "no assistant message": 1}
    report = skips.report()
    assert report.startswith("smoltalk: skipped 6 rows")
    assert "row 1: message 0 has no role" in report and "row 2: message 1 has unknown role 'robot'" in report
    assert "row 3: message 0 content is not a string" in report
    assert "row 4" not in report                       # only the first three examples are shown


def test_convert_smoltalk_keeps_only_role_and_content():
    rows = [{"messages": [dict(user("Hi"), name="alice"), dict(assistant("Hello"), weight=0)], "source": "s"}]
    assert data.convert_smoltalk(rows, SkipCounter("s"))[0]["messages"] == [user("Hi"), assistant("Hello")]


def test_skip_counter_with_nothing_skipped():
    skips = SkipCounter("clean")
    assert data.convert_smoltalk([{"messages": [user("a"), assistant("b")]}], skips)
    assert skips.total == 0 and skips.report() == "clean: no rows skipped"


def uf_row(prompt, chosen, rejected, **extra):
    return {"prompt": prompt, "prompt_id": "id-" + prompt[:8],
            "chosen": [user(prompt), assistant(chosen)], "rejected": [user(prompt), assistant(rejected)],
            "messages": [user(prompt), assistant(chosen)], "score_chosen": 8.0, "score_rejected": 3.5, **extra}


@pytest.mark.hostile
def test_convert_ultrafeedback_good_and_bad_rows():
    rows = [
        uf_row("What is 2 + 2?", "2 + 2 = 4.", "It is 5."),                                      # 0 good
        uf_row("Same?", "Identical answer.", "  Identical answer. "),                             # 1 identical
        {**uf_row("Missing", "a", "b"), "rejected": None},                                        # 2 missing field
        {**uf_row("Robot", "a", "b"), "chosen": [user("Robot"), {"role": "robot", "content": "a"}]},  # 3 role
        {**uf_row("Empty", "a", "b"), "chosen": [user("Empty"), assistant("")]},                 # 4 empty chosen
        {**uf_row("Last", "a", "b"), "rejected": [assistant("b"), user("Last")]},                # 5 ends with user
        {**uf_row("Bad", "a", "b"), "rejected": [user("Bad"), assistant(42)]},                   # 6 non-string
        {**uf_row("NoPrompt", "a", "b"), "chosen": [assistant("a")]},                            # 7 empty prompt
        uf_row("Name a colour.", "Blue.", "A dog."),                                              # 8 good
    ]
    skips = SkipCounter("ultrafeedback")
    out = data.convert_ultrafeedback(rows, skips)
    assert [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in out] == [
        {"prompt": [user("What is 2 + 2?")], "chosen": "2 + 2 = 4.", "rejected": "It is 5."},
        {"prompt": [user("Name a colour.")], "chosen": "Blue.", "rejected": "A dog."}]
    assert out[0]["score_chosen"] == 8.0 and out[0]["score_rejected"] == 3.5
    assert all(isinstance(r["chosen"], str) and isinstance(r["rejected"], str) for r in out)
    assert skips.total == 7
    assert skips.reasons == {"chosen identical to rejected": 1, "messages missing or empty": 1,
                             "message 1 has unknown role 'robot'": 1, "message 1 is an empty assistant message": 1,
                             "last message is not the assistant's": 1, "message 1 content is not a string": 1,
                             "empty prompt": 1}
    assert "row 1: chosen identical to rejected" in skips.report()


@pytest.mark.hostile
def test_convert_warmstart_good_and_bad_rows():
    query = "Using the numbers [8, 9, 5], create an equation that equals 12."
    completion = "<think> 8 + 9 = 17, 17 - 5 = 12 </think>\n<answer> (8 + 9) - 5 </answer>"
    rows = [{"query": "  " + query + "\n", "completion": completion + "  \n"},       # 0 good (stripped)
            {"query": query},                                                      # 1 missing completion
            {"query": query, "completion": "   "},                                 # 2 empty completion
            {"query": ["not text"], "completion": completion},                     # 3 non-string query
            {"completion": completion},                                            # 4 missing query
            {"query": "Write a poem.", "completion": completion}]                  # 5 names no Countdown task
    skips = SkipCounter("warmstart")
    out = data.convert_warmstart(rows, skips)
    assert out == [{"messages": [user(query), assistant(completion)], "source": "warmstart", "nums": [8, 9, 5],
                    "target": 12}]
    assert skips.reasons == {"field 'completion' missing or not a string": 1,
                             "message 1 is an empty assistant message": 1, "field 'query' missing or not a string": 2,
                             "query names no Countdown task": 1}
    assert "row 1: field 'completion' missing or not a string" in skips.report()


@pytest.mark.hostile
def test_convert_countdown_good_and_bad_rows():
    rows = [{"target": 12, "nums": [8, 9, 5]},               # 0 good
            {"target": 98, "nums": [44, 19, 35]},            # 1 good
            {"target": 12, "nums": "8, 9, 5"},               # 2 nums not a list
            {"nums": [1, 2]},                                # 3 target missing
            {"target": "12", "nums": [8, 9, 5]},             # 4 target not an int
            {"target": 12, "nums": [8, 9.5]},                # 5 float in nums
            {"target": 12, "nums": []},                      # 6 empty nums
            {"target": True, "nums": [1]},                   # 7 bool is not a target
            {"target": 3, "nums": [1, 2], "extra": "x"},     # 8 good, extra field dropped
            {"target": 12, "nums": [True, 11]},              # 9 bool in nums
            {"target": -5, "nums": [1, 6]},                  # 10 negative target
            {"target": 12, "nums": list(range(10_000))},     # 11 ten thousand numbers
            None, 7, "text", [1, 2]]                         # 12-15 not objects
    skips = SkipCounter("countdown")
    out = data.convert_countdown(rows, skips)
    assert out == [{"target": 12, "nums": [8, 9, 5]}, {"target": 98, "nums": [44, 19, 35]},
                   {"target": 3, "nums": [1, 2]}]
    assert skips.reasons == {"field 'nums' missing or not 2-6 whole numbers in 0..10000": 5,
                             "field 'target' missing or not a whole number in 1..10000": 4,
                             "row is not an object": 4}
    assert "row 2: field 'nums'" in skips.report()


@pytest.mark.hostile
def test_convert_alpaca_good_and_bad_rows():
    rows = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},          # 0 good, with input
            {"instruction": " Name a colour. ", "input": "", "output": " Blue. "},            # 1 good, empty input
            {"instruction": "Say hi.", "output": "Hi."},                                       # 2 good, no input key
            {"instruction": "Say hi.", "input": ""},                                           # 3 missing output
            {"instruction": "Say hi.", "input": "", "output": "   "},                          # 4 empty output
            {"instruction": 7, "input": "", "output": "x"}]                                    # 5 non-string
    skips = SkipCounter("alpaca")
    out = data.convert_alpaca(rows, skips)
    assert out == [
        {"messages": [user("Add the numbers.\n\n2 and 3"), assistant("5")], "source": "alpaca"},
        {"messages": [user("Name a colour."), assistant("Blue.")], "source": "alpaca"},
        {"messages": [user("Say hi."), assistant("Hi.")], "source": "alpaca"}]
    assert skips.reasons == {"field 'output' missing or not a string": 1, "message 1 is an empty assistant message": 1,
                             "field 'instruction' missing or not a string": 1}
    assert "row 3: field 'output' missing or not a string" in skips.report()


@pytest.mark.hostile
def test_convert_alpaca_non_string_input_does_not_crash():
    skips = SkipCounter("alpaca")
    out = data.convert_alpaca([{"instruction": "Say hi.", "input": None, "output": "Hi."},
                                  {"instruction": "Say hi.", "input": "", "output": "Hi."}], skips)
    # either treated as empty or skipped and counted; never an exception
    assert len(out) + skips.total == 2 and len(out) >= 1


def test_split_holdout_is_deterministic_and_disjoint():
    rows = [{"i": i} for i in range(50)]
    split = data.split_holdout(rows, 10, seed=3)
    assert len(split["test"]) == 10 and len(split["train"]) == 40
    test_ids, train_ids = {r["i"] for r in split["test"]}, {r["i"] for r in split["train"]}
    assert not test_ids & train_ids and test_ids | train_ids == set(range(50))
    assert data.split_holdout(rows, 10, seed=3) == split
    assert {r["i"] for r in data.split_holdout(rows, 10, seed=4)["test"]} != test_ids
    assert [r["i"] for r in split["test"]] == sorted(test_ids)          # test rows keep their original order
    assert rows == [{"i": i} for i in range(50)]                        # input untouched


def test_write_dataset_writes_splits_and_manifest(output_dir):
    cfg = config.get_config("smoke")
    splits = {"train": [{"messages": [user("Hi"), assistant("Hello")]}, {"messages": [user("a"), assistant("b")]}],
              "test": [{"messages": [user("Q"), assistant("A")]}]}
    skips = SkipCounter("demo")
    skips.skip(4, "no assistant message")
    skips.skip(9, "no assistant message")
    folder = data.write_dataset(cfg, "demo", splits, source="unit test", skips=skips)
    assert folder == output_dir / "data" / "smoke" / "demo"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "test.jsonl", "train.jsonl"]
    assert data.read_jsonl(folder / "train.jsonl") == splits["train"]
    assert data.load_split(cfg, "demo", "test") == splits["test"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["splits"] == {"train": 2, "test": 1}
    assert manifest["dropped"] == {"no assistant message": 2}
    assert manifest["source"] == "unit test" and manifest["profile"] == "smoke" and manifest["name"] == "demo"
    first_hash = manifest["content_hash"]
    assert first_hash == data.content_hash(splits) and len(first_hash) == 16
    # same content, same hash; one changed character, a new hash
    data.write_dataset(cfg, "demo", json.loads(json.dumps(splits)), source="unit test")
    assert json.loads((folder / "manifest.json").read_text())["content_hash"] == first_hash
    changed = json.loads(json.dumps(splits))
    changed["test"][0]["messages"][1]["content"] = "B"
    data.write_dataset(cfg, "demo", changed, source="unit test")
    assert json.loads((folder / "manifest.json").read_text())["content_hash"] != first_hash


def test_content_hash_sees_rows_moving_between_splits():
    a, b = {"q": "a"}, {"q": "b"}
    assert data.content_hash({"test": [a], "train": [b]}) != data.content_hash({"test": [a, b], "train": []})


@pytest.mark.hostile
def test_load_split_names_the_fix_when_missing():
    with pytest.raises(FileNotFoundError, match="00_data"):
        data.load_split(config.get_config("smoke"), "nothing_here", "train")


@pytest.mark.hostile
def test_read_jsonl_reports_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\n{"a": \n')
    with pytest.raises(ValueError, match="line 3"):
        data.read_jsonl(path)


FIXTURES = config.REPO_ROOT / "tests" / "fixtures" / "hub"


def test_local_hub_files_convert_without_skips_and_warmstart_queries_are_the_prompt_builders(output_dir):
    """qwen_smoke reads local files in each hub dataset's schema; WarmStart queries are exactly what
    countdown_prompt(…, "warmstart") builds for their task, so SFT and every later Countdown step ask alike."""
    cfg = config.get_config("qwen_smoke")
    for name in data.HUB_SOURCES:
        folder = data.download_and_convert(cfg, name)
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["dropped"] == {} and manifest["revision"].startswith("local file"), name
    warmstart = data.load_split(cfg, "warmstart", "train")
    assert warmstart and all(countdown.countdown_prompt(r["nums"], r["target"], "warmstart") == r["messages"][:1]
                             for r in warmstart)
    assert all(countdown.countdown_reward(r["messages"][1]["content"], r["target"], r["nums"]) == 1.0
               for r in warmstart)


def test_max_rows_takes_a_seeded_sample_not_the_first_rows(output_dir):
    cfg = config.get_config("qwen_smoke")
    first = [json.loads(line) for line in (FIXTURES / "yahma__alpaca-cleaned" / "train.jsonl").open()][:5]
    samples = []
    for seed in (0, 0, 1):
        cfg.data = config.replace_config(cfg.data, max_rows=5, seed=seed)
        rows = data.load_split(cfg, "alpaca", "train") if data.download_and_convert(cfg, "alpaca") else None
        samples.append([r["messages"][0]["content"] for r in rows])
    assert len(samples[0]) == 5 and samples[0] == samples[1] != samples[2]
    assert samples[0] != [r["instruction"].strip() + ("\n\n" + r["input"].strip() if r["input"].strip() else "")
                          for r in first]
