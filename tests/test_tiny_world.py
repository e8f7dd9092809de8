"""The tiny world: deterministic, sized by the config, disjoint splits, solvable Countdown tasks."""
import pytest

from helpers import config, countdown, data, tiny_world


def test_tiny_world_is_deterministic(smoke_world):
    data_cfg = config.get_config("smoke").data
    assert tiny_world.build_tiny_world(data_cfg) == smoke_world
    other = tiny_world.build_tiny_world(config.replace_config(data_cfg, seed=1))
    assert other["instructions"]["test"] != smoke_world["instructions"]["test"]
    assert other["countdown"]["test"] != smoke_world["countdown"]["test"]


def test_tiny_world_sizes_follow_the_config(smoke_world):
    data_cfg = config.get_config("smoke").data
    sizes = {name: {split: len(rows) for split, rows in splits.items()} for name, splits in smoke_world.items()}
    assert sizes == {"instructions": {"train": data_cfg.instruction_train, "test": data_cfg.instruction_test},
                     "preferences": {"train": data_cfg.preference_train + data_cfg.preference_train_extra,
                                     "test": data_cfg.preference_test},
                     "countdown": {"train": data_cfg.countdown_train, "test": data_cfg.countdown_test},
                     "warmstart": {"train": data_cfg.warmstart_rows},
                     "pretrain": {"train": data_cfg.pretrain_rows + data_cfg.pretrain_countdown_fresh
                                  + data_cfg.pretrain_facts}}


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
        assert data.conversation_problem(row["messages"]) is None
        assert row["messages"][-1]["content"] == row["reference"]
    for row in smoke_world["preferences"]["train"] + smoke_world["preferences"]["test"]:
        assert data.conversation_problem(row["prompt"] + [{"role": "assistant", "content": row["chosen"]}]) is None
        assert row["rejected"].strip()
    add = next(r for r in smoke_world["instructions"]["train"] if r["source"] == "tiny/add")
    a, b = map(int, [t.strip("?.") for t in add["messages"][0]["content"].split() if t.strip("?.").isdigit()])
    assert add["reference"] == str(a + b)


def test_tiny_world_preference_pairs_differ(smoke_world):
    pairs = smoke_world["preferences"]["train"] + smoke_world["preferences"]["test"]
    assert [r["prompt"][0]["content"] for r in pairs if r["chosen"] == r["rejected"]] == []


def test_tiny_world_countdown_disjoint_solvable_and_warmstart_scores_one(smoke_world):
    w, data = smoke_world, config.get_config("smoke").data
    key = lambda t: (tuple(t["nums"]), t["target"])
    test_keys = {key(t) for t in w["countdown"]["test"]}
    assert len(test_keys) == data.countdown_test
    assert not test_keys & {key(t) for t in w["countdown"]["train"]}
    for task in w["countdown"]["train"] + w["countdown"]["test"]:
        assert len(task["nums"]) == data.countdown_numbers
        assert all(1 <= n <= data.countdown_max_value for n in task["nums"])
        assert countdown.solve_countdown(task["nums"], task["target"]) is not None
    pretrain = "\n".join(r["text"] for r in w["pretrain"]["train"])
    assert [t for t in w["countdown"]["test"] if f"Numbers {t['nums']} make {t['target']}:" in pretrain] == []
    for row in w["warmstart"]["train"]:
        assert row["messages"][:-1] == countdown.countdown_prompt(row["nums"], row["target"])
        assert key(row) not in test_keys
        assert countdown.countdown_reward(row["messages"][-1]["content"], row["target"], row["nums"]) == 1.0


@pytest.mark.hostile
def test_tiny_world_asking_for_more_countdown_tasks_than_exist_is_a_clear_error():
    data = config.replace_config(config.get_config("smoke").data, countdown_numbers=2, countdown_max_value=3)
    with pytest.raises(ValueError, match="countdown_max_value"):
        tiny_world.build_tiny_world(data)


def test_tiny_profile_countdown_test_not_a_permutation_of_train():
    w = tiny_world.build_tiny_world(config.get_config("tiny").data)
    key = lambda t: (tuple(sorted(t["nums"])), t["target"])
    train = {key(t) for t in w["countdown"]["train"]}
    assert [t for t in w["countdown"]["test"] if key(t) in train] == []


def test_fresh_countdown_text_and_facts_change_only_pretraining():
    """The optional pre-training lines are drawn after everything else: every other dataset stays the same, and no
    held-out Countdown task or instruction test prompt appears in them."""
    plain = tiny_world.build_tiny_world(config.get_config("smoke", data__pretrain_countdown_fresh=0,
                                                          data__pretrain_facts=0).data)
    cfg = config.get_config("smoke", data__pretrain_countdown_fresh=300, data__pretrain_facts=200)
    world = tiny_world.build_tiny_world(cfg.data)
    assert all(world[name] == plain[name] for name in ("instructions", "preferences", "countdown", "warmstart"))
    texts = [r["text"] for r in world["pretrain"]["train"]]
    assert len(texts) == len(plain["pretrain"]["train"]) + 500
    assert [t for t in texts if t in {r["text"] for r in plain["pretrain"]["train"]}] == \
        [r["text"] for r in plain["pretrain"]["train"]]                      # the plain lines, in their order
    plain_texts = {r["text"] for r in plain["pretrain"]["train"]}
    fresh = [t for t in texts if t.startswith("Using the numbers") and t not in plain_texts]
    assert len(fresh) >= 250 and max(int(n) for t in fresh for n in t.split("[")[1].split("]")[0].split(", ")) > 30
    held_out = {(tuple(sorted(t["nums"])), t["target"]) for t in world["countdown"]["test"]}
    for text in fresh:
        nums = tuple(sorted(int(n) for n in text.split("[")[1].split("]")[0].split(", ")))
        assert (nums, int(text.split(" make ")[1].split(":")[0])) not in held_out
    facts = [t for t in texts if "\nfirst letter:\n" in t or " plus " in t]
    assert len(facts) == 200 and not any("?" in t for t in facts)
