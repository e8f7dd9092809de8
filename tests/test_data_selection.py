"""MoDS (`data_selection`): k-center greedy, the quality and necessity filters, the three steps together, and the
embeddings coverage is measured on — each on hand-made cases."""
import pytest
import torch

from helpers import data_selection, modeling



def test_k_center_greedy_on_points_of_a_line():
    """Points 0, 1, 10, 11, 5 on a line, from the first: the farthest is 11 (index 3); then each point's distance to
    its nearest centre is 1, 1, 5 for 1, 10, 5, so 5 (index 4) comes next. From {0, 11}, one more is that 5."""
    points = torch.tensor([[0.0], [1.0], [10.0], [11.0], [5.0]])
    assert data_selection.k_center_greedy(points, 3) == [0, 3, 4]
    assert data_selection.k_center_greedy(points, 1, start=[0, 3]) == [4]
    assert data_selection.k_center_greedy(points, 0) == []
    assert data_selection.k_center_greedy(torch.zeros(3, 2), 3) == [0]      # nothing else to cover
    with pytest.raises(ValueError, match="k = 6"):
        data_selection.k_center_greedy(points, 6)


def test_quality_and_necessity_keep_the_high_and_the_low_scorers():
    assert data_selection.quality_filter(["a", "b", "c"], [0.9, 0.1, 0.5], 0.4) == (["a", "c"], [0, 2])
    assert data_selection.necessity_pool([0.9, 0.1, 0.5, 0.3], 0.3) == [1, 3]


def test_mods_selects_by_quality_then_coverage_then_necessity():
    """Six rows on a line (their embeddings), scored by a stand-in reward model: row 5 scores low (quality drops it);
    of the other five, k-center picks 2 seeds (0, then the farthest, 4); a model "trained on the seeds" answers the
    rest (1, 2, 3) — rows 2 and 3 poorly — and k-center over those two picks one: the first, 2."""
    position = {0: 0.0, 1: 1.0, 2: 5.0, 3: 6.0, 4: 10.0, 5: 3.0}
    rows = list(range(6))
    score = lambda rs: [0.1 if r == 5 else 0.9 for r in rs]
    calls = []
    embed = lambda rs: calls.append(list(rs)) or torch.tensor([[position[r]] for r in rs])
    seen = {}

    def fine_tune_and_score(seeds, others):
        seen["seeds"], seen["others"] = seeds, others
        return [0.2 if r in (2, 3) else 0.8 for r in others]
    lines = []
    got = data_selection.mods_select(rows, score, embed, fine_tune_and_score, quality_threshold=0.5, seed_size=2,
                                     necessity_threshold=0.5, necessity_size=1, progress=lines.append)
    assert got == {"quality": [0, 1, 2, 3, 4], "seeds": [0, 4], "necessary": [2], "selected": [0, 4, 2]}
    assert seen == {"seeds": [0, 4], "others": [1, 2, 3]}
    assert calls == [[0, 1, 2, 3, 4]]                 # embedded once: necessity reuses the quality rows' vectors
    assert lines[0] == "quality: 5 of 6 rows score above 0.5 by the reward model" and lines[-1].startswith(
        "selected: 2 seeds + 1 necessary = 3")


def test_mean_pooled_embeddings_leave_padding_out(chat_model_dir):
    """A text alone and the same text in a batch beside a longer one get the same vector (padding masked)."""
    model, tokenizer = modeling.load_model(chat_model_dir), modeling.load_tokenizer(chat_model_dir)
    alone = data_selection.mean_pooled_embeddings(model, tokenizer, ["Is the pump loud?"])
    batch = data_selection.mean_pooled_embeddings(model, tokenizer, ["Is the pump loud?", "a much longer text " * 5])
    assert batch.shape[0] == 2 and torch.allclose(alone[0], batch[0], atol=1e-5)


def test_the_raw_pool_has_its_defects_at_the_stated_rates():
    """100 clean rows of two families: 10 % answered wrong (another answer of the family), 5 near-duplicates added,
    then the "add" family repeated until it is half the pool; every defect labelled, the clean rows untouched."""
    rows = [{"messages": [{"role": "user", "content": f"Add {i} and 1."}, {"role": "assistant", "content": str(i + 1)}],
             "source": "tiny/add" if i % 2 else "tiny/max", "reference": str(i + 1)} for i in range(100)]
    pool = data_selection.raw_pool(rows, wrong=0.1, near_duplicates=0.05, easy_family="tiny/add", easy_share=0.5)
    defects = __import__("collections").Counter(r["defect"] for r in pool)
    assert defects["wrong answer"] == 10 and defects["near-duplicate"] == 5
    assert sum(r["source"] == "tiny/add" for r in pool) >= 0.5 * len(pool)
    for r in pool:
        if r["defect"] == "wrong answer":
            assert r["messages"][-1]["content"] != r["reference"]
        elif r["defect"] is None:
            assert r["messages"][-1]["content"] == r["reference"]
    assert data_selection.raw_pool(rows, 0.1, 0.05, "tiny/add", 0.5) == pool            # seeded
    with pytest.raises(ValueError, match="no rows of the family 'tiny/count'"):
        data_selection.raw_pool(rows, 0.1, 0.05, "tiny/count", 0.5)
