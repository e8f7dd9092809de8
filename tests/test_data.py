"""Converters of the real hub schemas, skip accounting, holdout splits, manifests, the tiny world and configs."""
import json

import pytest

import helpers
from helpers import SkipCounter


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# ── smol-smoltalk: {"messages": [{role, content}], "source"} ────────────────────────────────────────
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
    out = helpers.convert_smoltalk(rows, skips)
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
    assert helpers.convert_smoltalk(rows, SkipCounter("s"))[0]["messages"] == [user("Hi"), assistant("Hello")]


def test_skip_counter_with_nothing_skipped():
    skips = SkipCounter("clean")
    assert helpers.convert_smoltalk([{"messages": [user("a"), assistant("b")]}], skips)
    assert skips.total == 0 and skips.report() == "clean: no rows skipped"


# ── ultrafeedback_binarized: prompt str, chosen/rejected message lists, scores ───────────────────────────
def uf_row(prompt, chosen, rejected, **extra):
    return {"prompt": prompt, "prompt_id": "id-" + prompt[:8],
            "chosen": [user(prompt), assistant(chosen)], "rejected": [user(prompt), assistant(rejected)],
            "messages": [user(prompt), assistant(chosen)], "score_chosen": 8.0, "score_rejected": 3.5, **extra}


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
    out = helpers.convert_ultrafeedback(rows, skips)
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


# ── cog_behav_all_strategies (WarmStart): query, completion ─────────────────────────────────────────────
def test_convert_warmstart_good_and_bad_rows():
    query = "Using the numbers [8, 9, 5], create an equation that equals 12."
    completion = "<think> 8 + 9 = 17, 17 - 5 = 12 </think>\n<answer> (8 + 9) - 5 </answer>"
    rows = [{"query": "  " + query + "\n", "completion": completion + "  \n"},       # 0 good (stripped)
            {"query": query},                                                      # 1 missing completion
            {"query": query, "completion": "   "},                                 # 2 empty completion
            {"query": ["not text"], "completion": completion},                     # 3 non-string query
            {"completion": completion}]                                            # 4 missing query
    skips = SkipCounter("warmstart")
    out = helpers.convert_warmstart(rows, skips)
    assert out == [{"messages": [user(query), assistant(completion)], "source": "warmstart"}]
    assert skips.reasons == {"field 'completion' missing or not a string": 1, "message 1 is an empty assistant message": 1,
                             "field 'query' missing or not a string": 2}
    assert "row 1: field 'completion' missing or not a string" in skips.report()


# ── Countdown-Tasks-3to4: target int, nums list of ints ──────────────────────────────────────────────
def test_convert_countdown_good_and_bad_rows():
    rows = [{"target": 12, "nums": [8, 9, 5]},               # 0 good
            {"target": 98, "nums": [44, 19, 35]},            # 1 good
            {"target": 12, "nums": "8, 9, 5"},               # 2 nums not a list
            {"nums": [1, 2]},                                # 3 target missing
            {"target": "12", "nums": [8, 9, 5]},             # 4 target not an int
            {"target": 12, "nums": [8, 9.5]},                # 5 float in nums
            {"target": 12, "nums": []},                      # 6 empty nums
            {"target": True, "nums": [1]},                   # 7 bool is not a target
            {"target": 3, "nums": [1, 2], "extra": "x"}]     # 8 good, extra field dropped
    skips = SkipCounter("countdown")
    out = helpers.convert_countdown(rows, skips)
    assert out == [{"target": 12, "nums": [8, 9, 5]}, {"target": 98, "nums": [44, 19, 35]},
                   {"target": 3, "nums": [1, 2]}]
    assert skips.reasons == {"field 'nums' missing or not a list of non-negative integers": 3,
                             "field 'target' missing or not an integer": 3}
    assert "row 2: field 'nums'" in skips.report()


# ── alpaca-cleaned: instruction, input (maybe empty), output ──────────────────────────────────────────
def test_convert_alpaca_good_and_bad_rows():
    rows = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},          # 0 good, with input
            {"instruction": " Name a colour. ", "input": "", "output": " Blue. "},            # 1 good, empty input
            {"instruction": "Say hi.", "output": "Hi."},                                       # 2 good, no input key
            {"instruction": "Say hi.", "input": ""},                                           # 3 missing output
            {"instruction": "Say hi.", "input": "", "output": "   "},                          # 4 empty output
            {"instruction": 7, "input": "", "output": "x"}]                                    # 5 non-string
    skips = SkipCounter("alpaca")
    out = helpers.convert_alpaca(rows, skips)
    assert out == [
        {"messages": [user("Add the numbers.\n\n2 and 3"), assistant("5")], "source": "alpaca"},
        {"messages": [user("Name a colour."), assistant("Blue.")], "source": "alpaca"},
        {"messages": [user("Say hi."), assistant("Hi.")], "source": "alpaca"}]
    assert skips.reasons == {"field 'output' missing or not a string": 1, "message 1 is an empty assistant message": 1,
                             "field 'instruction' missing or not a string": 1}
    assert "row 3: field 'output' missing or not a string" in skips.report()


def test_convert_alpaca_non_string_input_does_not_crash():
    skips = SkipCounter("alpaca")
    out = helpers.convert_alpaca([{"instruction": "Say hi.", "input": None, "output": "Hi."},
                                  {"instruction": "Say hi.", "input": "", "output": "Hi."}], skips)
    # either treated as empty or skipped and counted; never an exception
    assert len(out) + skips.total == 2 and len(out) >= 1


# ── holdout split and manifests ──────────────────────────────────────────────────────────────────────
def test_split_holdout_is_deterministic_and_disjoint():
    rows = [{"i": i} for i in range(50)]
    split = helpers.split_holdout(rows, 10, seed=3)
    assert len(split["test"]) == 10 and len(split["train"]) == 40
    test_ids, train_ids = {r["i"] for r in split["test"]}, {r["i"] for r in split["train"]}
    assert not test_ids & train_ids and test_ids | train_ids == set(range(50))
    assert helpers.split_holdout(rows, 10, seed=3) == split
    assert {r["i"] for r in helpers.split_holdout(rows, 10, seed=4)["test"]} != test_ids
    assert [r["i"] for r in split["test"]] == sorted(test_ids)          # test rows keep their original order
    assert rows == [{"i": i} for i in range(50)]                        # input untouched


def test_write_dataset_writes_splits_and_manifest(output_dir):
    cfg = helpers.get_config("smoke")
    splits = {"train": [{"messages": [user("Hi"), assistant("Hello")]}, {"messages": [user("a"), assistant("b")]}],
              "test": [{"messages": [user("Q"), assistant("A")]}]}
    skips = SkipCounter("demo")
    skips.skip(4, "no assistant message")
    skips.skip(9, "no assistant message")
    folder = helpers.write_dataset(cfg, "demo", splits, source="unit test", skips=skips)
    assert folder == output_dir / "data" / "smoke" / "demo"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "test.jsonl", "train.jsonl"]
    assert helpers.read_jsonl(folder / "train.jsonl") == splits["train"]
    assert helpers.load_split(cfg, "demo", "test") == splits["test"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["splits"] == {"train": 2, "test": 1}
    assert manifest["dropped"] == {"no assistant message": 2}
    assert manifest["source"] == "unit test" and manifest["profile"] == "smoke" and manifest["name"] == "demo"
    first_hash = manifest["content_hash"]
    assert first_hash == helpers.content_hash(splits) and len(first_hash) == 16
    # same content, same hash; one changed character, a new hash
    helpers.write_dataset(cfg, "demo", json.loads(json.dumps(splits)), source="unit test")
    assert json.loads((folder / "manifest.json").read_text())["content_hash"] == first_hash
    changed = json.loads(json.dumps(splits))
    changed["test"][0]["messages"][1]["content"] = "B"
    helpers.write_dataset(cfg, "demo", changed, source="unit test")
    assert json.loads((folder / "manifest.json").read_text())["content_hash"] != first_hash


def test_content_hash_sees_rows_moving_between_splits():
    a, b = {"q": "a"}, {"q": "b"}
    assert helpers.content_hash({"test": [a], "train": [b]}) != helpers.content_hash({"test": [a, b], "train": []})


def test_load_split_names_the_fix_when_missing():
    with pytest.raises(FileNotFoundError, match="00_data"):
        helpers.load_split(helpers.get_config("smoke"), "nothing_here", "train")


def test_read_jsonl_reports_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\n{"a": \n')
    with pytest.raises(ValueError, match="line 3"):
        helpers.read_jsonl(path)


# ── the tiny world ───────────────────────────────────────────────────────────────────────────────────
def test_tiny_world_is_deterministic(smoke_world):
    data = helpers.get_config("smoke").data
    assert helpers.build_tiny_world(data) == smoke_world
    other = helpers.build_tiny_world(helpers.replace_config(data, seed=1))
    assert other["instructions"]["test"] != smoke_world["instructions"]["test"]
    assert other["countdown"]["test"] != smoke_world["countdown"]["test"]


def test_tiny_world_sizes_follow_the_config(smoke_world):
    data = helpers.get_config("smoke").data
    sizes = {name: {split: len(rows) for split, rows in splits.items()} for name, splits in smoke_world.items()}
    assert sizes == {"instructions": {"train": data.instruction_train, "test": data.instruction_test},
                     "preferences": {"train": data.preference_train + data.preference_train_extra,
                                     "test": data.preference_test},
                     "countdown": {"train": data.countdown_train, "test": data.countdown_test},
                     "warmstart": {"train": data.warmstart_rows}, "pretrain": {"train": data.pretrain_rows}}


def test_tiny_world_test_prompts_never_seen_in_training(smoke_world):
    w = smoke_world
    test_prompts = [r["messages"][0]["content"] for r in w["instructions"]["test"]]
    test_prompts += [r["prompt"][0]["content"] for r in w["preferences"]["test"]]
    assert len(set(test_prompts)) == len(test_prompts)
    train_prompts = {r["messages"][0]["content"] for r in w["instructions"]["train"]}
    train_prompts |= {r["prompt"][0]["content"] for r in w["preferences"]["train"]}
    assert not set(test_prompts) & train_prompts
    pretrain = "\n".join(r["text"] for r in w["pretrain"]["train"])
    assert [p for p in test_prompts if p in pretrain] == []
    assert "Question: " in pretrain and "<|im_start|>" not in pretrain       # plain text, not the chat format


def test_tiny_world_rows_are_well_formed(smoke_world):
    for row in smoke_world["instructions"]["train"] + smoke_world["instructions"]["test"]:
        assert helpers.conversation_problem(row["messages"]) is None
        assert row["messages"][-1]["content"] == row["reference"]
    for row in smoke_world["preferences"]["train"] + smoke_world["preferences"]["test"]:
        assert helpers.conversation_problem(row["prompt"] + [{"role": "assistant", "content": row["chosen"]}]) is None
        assert row["rejected"].strip()
    add = next(r for r in smoke_world["instructions"]["train"] if r["source"] == "tiny/add")
    a, b = map(int, [t.strip("?.") for t in add["messages"][0]["content"].split() if t.strip("?.").isdigit()])
    assert add["reference"] == str(a + b)


def test_tiny_world_preference_pairs_differ(smoke_world):
    pairs = smoke_world["preferences"]["train"] + smoke_world["preferences"]["test"]
    assert [r["prompt"][0]["content"] for r in pairs if r["chosen"] == r["rejected"]] == []


def test_tiny_world_countdown_disjoint_solvable_and_warmstart_scores_one(smoke_world):
    w, data = smoke_world, helpers.get_config("smoke").data
    key = lambda t: (tuple(t["nums"]), t["target"])
    test_keys = {key(t) for t in w["countdown"]["test"]}
    assert len(test_keys) == data.countdown_test
    assert not test_keys & {key(t) for t in w["countdown"]["train"]}
    for task in w["countdown"]["train"] + w["countdown"]["test"]:
        assert len(task["nums"]) == data.countdown_numbers
        assert all(1 <= n <= data.countdown_max_value for n in task["nums"])
        assert helpers.solve_countdown(task["nums"], task["target"]) is not None
    pretrain = "\n".join(r["text"] for r in w["pretrain"]["train"])
    assert [t for t in w["countdown"]["test"] if f"Numbers {t['nums']} make {t['target']}:" in pretrain] == []
    for row in w["warmstart"]["train"]:
        assert row["messages"][:-1] == helpers.countdown_prompt(row["nums"], row["target"])
        assert key(row) not in test_keys
        assert helpers.countdown_reward(row["messages"][-1]["content"], row["target"], row["nums"]) == 1.0


def test_tiny_world_asking_for_more_countdown_tasks_than_exist_is_a_clear_error():
    data = helpers.replace_config(helpers.get_config("smoke").data, countdown_numbers=2, countdown_max_value=3)
    with pytest.raises(ValueError, match="countdown_max_value"):
        helpers.build_tiny_world(data)


def test_tiny_profile_countdown_test_not_a_permutation_of_train():
    w = helpers.build_tiny_world(helpers.get_config("tiny").data)
    key = lambda t: (tuple(sorted(t["nums"])), t["target"])
    train = {key(t) for t in w["countdown"]["train"]}
    assert [t for t in w["countdown"]["test"] if key(t) in train] == []


# ── configs and paths ────────────────────────────────────────────────────────────────────────────────
def test_get_config_unknown_profile_names_it():
    with pytest.raises(ValueError, match="'nope'"):
        helpers.get_config("nope")


def test_get_config_unknown_field_names_it():
    with pytest.raises(ValueError, match="sft__not_a_field"):
        helpers.get_config("tiny", sft__not_a_field=1)
    with pytest.raises(ValueError, match="nosection__max_steps"):
        helpers.get_config("tiny", nosection__max_steps=1)
    with pytest.raises(ValueError, match="profile__x"):
        helpers.get_config("tiny", profile__x=1)


def test_get_config_overrides_do_not_leak():
    assert helpers.get_config("smoke", sft__max_steps=3).sft.max_steps == 3
    assert helpers.get_config("smoke", data__seed=5).data.seed == 5
    assert helpers.get_config("smoke").sft.max_steps == 6 and helpers.get_config("smoke").data.seed == 0
    assert helpers.get_config("tiny").sft.max_steps == helpers.SFTConfig().max_steps


def test_profile_env_var_picks_the_profile(monkeypatch):
    monkeypatch.delenv("PROFILE", raising=False)
    assert helpers.get_config().profile == "tiny"
    monkeypatch.setenv("PROFILE", "smoke")
    assert helpers.get_config().profile == "smoke"
    assert helpers.get_config().sft.max_steps == 6
    assert helpers.get_config("tiny").profile == "tiny"                 # an explicit profile wins
    monkeypatch.setenv("PROFILE", "nope")
    with pytest.raises(ValueError, match="'nope'"):
        helpers.get_config()


def test_replace_config_names_unknown_fields():
    sft = helpers.get_config("smoke").sft
    assert helpers.replace_config(sft, lr=0.5).lr == 0.5 and sft.lr != 0.5
    with pytest.raises(ValueError, match="bogus"):
        helpers.replace_config(sft, bogus=1)


def test_out_path_lives_under_output_dir(output_dir):
    cfg = helpers.get_config("smoke")
    assert helpers.output_root() == output_dir
    assert helpers.out_path("data", cfg, "x") == output_dir / "data" / "smoke" / "x"
    assert helpers.out_path("checkpoints", cfg, "sweep", 3) == output_dir / "checkpoints" / "smoke" / "sweep" / "3"
    assert helpers.out_path("data", cfg) == output_dir / "data" / "smoke"
