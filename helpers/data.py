"""Datasets on disk: jsonl files with manifests, the converters from each hub dataset's schema into three record
types (conversation, preference pair, verifiable prompt), and `prepare_data` for every profile.
Imports: config, tiny_world."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections import Counter
from pathlib import Path

from .config import Config, MissingData, out_path, write_atomic
from .countdown import countdown_prompt, parse_countdown_task
from .tiny_world import build_tiny_world


def write_jsonl(path: Path, rows) -> None:
    """One JSON object per line, written whole or not at all (`write_atomic`)."""
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_jsonl(path: Path) -> list[dict]:
    """One JSON object per line; a line that is not UTF-8, not JSON or not an object is named with its number."""
    rows = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}: line {line_no} is not UTF-8 text ({err.reason} at byte "
                                 f"{err.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {line_no} is not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}: line {line_no} is a JSON {type(row).__name__}, not an object")
            rows.append(row)
    return rows


ROLES = ("system", "user", "assistant")


def conversation_problem(messages) -> str | None:
    """Why a message list cannot be trained on, or None if it is fine."""
    if not isinstance(messages, list) or not messages:
        return "messages missing or empty"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            return f"message {i} has no role"
        if m["role"] not in ROLES:
            return f"message {i} has unknown role {m['role']!r}"
        if not isinstance(m.get("content"), str):
            return f"message {i} content is not a string"
        if m["role"] in ("user", "assistant") and not m["content"].strip():
            return f"message {i} is an empty {m['role']} message"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant message"
    return None


def prompt_problem(prompt) -> str | None:
    """Why a prompt (the messages before an answer) cannot be answered, or None: it must be a list of valid messages
    that ends with the user's turn."""
    if not isinstance(prompt, list) or not prompt:
        return f"prompt is not a list of messages ({type(prompt).__name__})"
    problem = conversation_problem(prompt + [{"role": "assistant", "content": "answer"}])
    if problem is None and prompt[-1]["role"] != "user":
        problem = "prompt does not end with a user message"
    return problem


class SkipCounter:
    """Counts skipped rows by reason and remembers the first few, so nothing is dropped silently; also counts rows
    kept with a remark (`note`), e.g. text that spells a control token."""

    def __init__(self, name: str, show: int = 3):
        self.name, self.show, self.reasons, self.examples, self.notes = name, show, Counter(), [], Counter()

    def skip(self, index, reason: str, detail: str = "") -> None:
        self.reasons[reason] += 1
        if len(self.examples) < self.show:
            self.examples.append(f"row {index}: {reason}" + (f" ({detail})" if detail else ""))

    def note(self, remark: str) -> None:
        self.notes[remark] += 1

    @property
    def total(self) -> int:
        return sum(self.reasons.values())

    def report(self) -> str:
        kept = "".join(f"; kept {n} row(s) whose {remark}" for remark, n in self.notes.items())
        if not self.total:
            return f"{self.name}: no rows skipped" + kept
        return f"{self.name}: skipped {self.total} rows — " + "; ".join(self.examples) + kept


CONTROL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")


def objects(rows, skips: SkipCounter):
    """(index, row) of every row that is a JSON object; None, numbers, strings and lists are skipped and counted.
    Rows whose text spells a control token are kept — it stays text (formatting.encode_chat) — and counted."""
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            skips.skip(i, "row is not an object", type(row).__name__)
            continue
        if any(token in json.dumps(row, ensure_ascii=False) for token in CONTROL_TOKENS):
            skips.note("text spells a control token such as <|im_end|> (kept as text)")
        yield i, row


def convert_smoltalk(rows, skips: SkipCounter) -> list[dict]:
    out = []
    for i, row in objects(rows, skips):
        problem = conversation_problem(row.get("messages"))
        if problem:
            skips.skip(i, problem)
            continue
        out.append({"messages": [{"role": m["role"], "content": m["content"]} for m in row["messages"]],
                    "source": row.get("source", "smoltalk")})
    return out


def convert_ultrafeedback(rows, skips: SkipCounter) -> list[dict]:
    """chosen/rejected are full message lists (prompt + answer): keep the prompt once, the two answers as text."""
    out = []
    for i, row in objects(rows, skips):
        chosen, rejected = row.get("chosen"), row.get("rejected")
        problem = conversation_problem(chosen) or conversation_problem(rejected)
        if problem is None and (chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant"):
            problem = "last message is not the assistant's"
        if problem is None:
            prompt = chosen[:-1]
            if not prompt or not any(m["content"].strip() for m in prompt):
                problem = "empty prompt"
            elif chosen[-1]["content"].strip() == rejected[-1]["content"].strip():
                problem = "chosen identical to rejected"
            elif [(m["role"], m["content"]) for m in chosen[:-1]] != [(m["role"], m["content"]) for m in rejected[:-1]]:
                problem = "chosen and rejected answer different prompts"
        if problem:
            skips.skip(i, problem)
            continue
        out.append({"prompt": [dict(role=m["role"], content=m["content"]) for m in chosen[:-1]],
                    "chosen": chosen[-1]["content"], "rejected": rejected[-1]["content"],
                    "score_chosen": row.get("score_chosen"), "score_rejected": row.get("score_rejected"),
                    "source": "ultrafeedback"})
    return out


def _text_pair_rows(rows, skips, fields, build, extra=lambda messages: {}):
    """Rows of text fields -> {"messages", **extra(messages)}; `extra` returns None to skip a row (counted)."""
    out = []
    for i, row in objects(rows, skips):
        bad = next((f for f in fields if not isinstance(row.get(f), str)), None)
        if bad:
            skips.skip(i, f"field {bad!r} missing or not a string")
            continue
        messages = build(row)
        problem = conversation_problem(messages)
        more = extra(messages) if problem is None else {}
        if problem or more is None:
            skips.skip(i, problem or "query names no Countdown task")
            continue
        out.append({"messages": messages, **more})
    return out


def convert_warmstart(rows, skips: SkipCounter) -> list[dict]:
    """cog_behav_all_strategies: `query` is the full Countdown prompt (a user turn, as the course trains it),
    `completion` the worked answer. The task's numbers and target are read from the query, so every WarmStart row
    is verifiable; a query that names no Countdown task is skipped."""
    def task(messages):
        found = parse_countdown_task(messages[0]["content"])
        return None if found is None else {"source": "warmstart", "nums": found[0], "target": found[1]}
    return _text_pair_rows(rows, skips, ("query", "completion"),
                           lambda r: [{"role": "user", "content": r["query"].strip()},
                                      {"role": "assistant", "content": r["completion"].strip()}], task)


def convert_alpaca(rows, skips: SkipCounter) -> list[dict]:
    def build(r):
        extra = r.get("input") if isinstance(r.get("input"), str) else ""
        user = r["instruction"].strip() + (("\n\n" + extra.strip()) if extra.strip() else "")
        return [{"role": "user", "content": user}, {"role": "assistant", "content": r["output"].strip()}]
    return [dict(r, source="alpaca") for r in _text_pair_rows(rows, skips, ("instruction", "output"), build)]


def is_count(value, high: int) -> bool:
    """A whole number in [0, high] — and not a bool, which Python counts as an int."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= high


COUNTDOWN_MAX_NUMBERS, COUNTDOWN_MAX_VALUE = 6, 10_000     # the course's tasks: 3–4 numbers below 100


def convert_countdown(rows, skips: SkipCounter) -> list[dict]:
    out = []
    for i, row in objects(rows, skips):
        target, nums = row.get("target"), row.get("nums")
        if not is_count(target, COUNTDOWN_MAX_VALUE) or target == 0:
            skips.skip(i, "field 'target' missing or not a whole number in 1..10000", repr(target)[:40])
        elif not isinstance(nums, list) or not 2 <= len(nums) <= COUNTDOWN_MAX_NUMBERS \
                or not all(is_count(n, COUNTDOWN_MAX_VALUE) for n in nums):
            skips.skip(i, "field 'nums' missing or not 2-6 whole numbers in 0..10000", repr(nums)[:40])
        else:
            out.append({"target": target, "nums": list(nums)})
    return out


def drop_duplicates(rows: list[dict], skips: SkipCounter) -> list[dict]:
    """Exact duplicate rows (after conversion) are dropped and counted: a repeated row is trained on twice, and a
    test row repeated in training leaks."""
    seen, out = set(), []
    for i, row in enumerate(rows):
        key = json.dumps(row, sort_keys=True, ensure_ascii=False)
        if key in seen:
            skips.skip(i, "duplicate of an earlier row")
            continue
        seen.add(key)
        out.append(row)
    return out


HUB_SOURCES = {   # name: (hub id, {our split: hub split}, converter)
    "smoltalk": ("HuggingFaceTB/smol-smoltalk", {"train": "train", "test": "test"}, convert_smoltalk),
    "ultrafeedback": ("HuggingFaceH4/ultrafeedback_binarized", {"train": "train_prefs", "test": "test_prefs"},
                      convert_ultrafeedback),
    "warmstart": ("Asap7772/cog_behav_all_strategies", {"train": "train"}, convert_warmstart),
    "countdown": ("Jiayi-Pan/Countdown-Tasks-3to4", {"train": "train"}, convert_countdown),
    "alpaca": ("yahma/alpaca-cleaned", {"train": "train"}, convert_alpaca),
}


def split_holdout(rows: list, test_size: int, seed: int) -> dict[str, list]:
    """A fixed held-out test split carved from a single-split dataset (deterministic for the seed)."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    test = set(order[:test_size])
    return {"train": [rows[i] for i in order[test_size:]], "test": [rows[i] for i in sorted(test)]}


def content_hash(splits: dict[str, list]) -> str:
    digest = hashlib.sha256()
    for split in sorted(splits):
        digest.update(f"{split}\0{len(splits[split])}\0".encode())   # a row moving between splits changes it
        for row in splits[split]:
            digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()[:16]


def write_dataset(cfg: Config, name: str, splits: dict[str, list], source: str, revision: str = "local",
                  filters: str = "", skips: SkipCounter | None = None) -> Path:
    """Write data/<profile>/<name>/<split>.jsonl plus manifest.json (source, sizes, filters, drops, hash)."""
    folder = out_path("data", cfg, name)
    for split, rows in splits.items():
        write_jsonl(folder / f"{split}.jsonl", rows)
    manifest = {"name": name, "source": source, "revision": revision, "profile": cfg.profile,
                "seed": cfg.data.seed, "splits": {s: len(r) for s, r in splits.items()}, "filters": filters,
                "dropped": dict(skips.reasons) if skips else {}, "kept_with_notes": dict(skips.notes) if skips else {},
                "content_hash": content_hash(splits)}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


def load_split(cfg: Config, name: str, split: str) -> list[dict]:
    path = out_path("data", cfg, name, f"{split}.jsonl")
    if not path.exists():
        raise MissingData(f"{path} not found: run notebooks/00_data.ipynb (or `python -m helpers data "
                                f"--profile {cfg.profile}`) first")
    check_built_with(cfg, path.parent)
    return read_jsonl(path)


def check_built_with(cfg: Config, folder: Path) -> None:
    """A tiny-world dataset must have been built from this config's data settings (its manifest records them): a
    folder left by other settings (an older world, another prompt format) would silently train the wrong task."""
    if cfg.data.world != "tiny":
        return
    rebuild = f"rebuild it with notebooks/00_data.ipynb (or `python -m helpers data --profile {cfg.profile}`)"
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        raise MissingData(f"{folder}: its manifest is missing or unreadable: {rebuild}") from None
    try:
        built = json.loads(manifest["filters"])
    except (KeyError, TypeError, ValueError):
        return                          # filters that are not settings: a folder written by other means
    wanted = json.loads(json.dumps(dataclasses.asdict(cfg.data)))
    if isinstance(built, dict) and built != wanted:
        changed = ", ".join(f"{k} {built.get(k)!r} → {v!r}" for k, v in wanted.items() if built.get(k) != v)
        raise MissingData(f"{folder} was built with other data settings ({changed}): {rebuild}")


def hub_revision(hub_id: str) -> str:
    """The dataset repository's commit hash, as the hub reports it ("unknown" when it cannot be asked)."""
    try:
        from huggingface_hub import HfApi
        return HfApi().dataset_info(hub_id).sha or "unknown"
    except Exception as err:    # offline, rate-limited, renamed: the manifest says so instead of failing the run
        return f"unknown ({type(err).__name__})"


def load_hub_split(cfg: Config, hub_id: str, split: str):
    """One split of a hub dataset as a `datasets.Dataset`, and its revision: from the hub, or from
    `cfg.data.hub_dir/<hub id with / as __>/<split>.jsonl` (qwen_smoke's local files in the same schema)."""
    from datasets import load_dataset
    if cfg.data.hub_dir:
        path = Path(cfg.data.hub_dir) / hub_id.replace("/", "__") / f"{split}.jsonl"
        if not path.exists():
            raise MissingData(f"{path} not found: the local stand-in for {hub_id} [{split}]")
        return load_dataset("json", data_files=str(path), split="train"), f"local file {path.name}"
    return load_dataset(hub_id, split=split), hub_revision(hub_id)


def countdown_tasks(cfg: Config, split: str, rows: int | None = None) -> list[dict]:
    """The profile's Countdown tasks ({"nums", "target"}) with their "prompt": the one prompt builder, in the
    profile's format, for every Countdown step — on-policy DPO pairs, RLOO, evaluation — as SFT saw it."""
    skips = SkipCounter(f"countdown {split}")
    tasks = convert_countdown(load_split(cfg, "countdown", split), skips)     # a row on disk is input: checked
    if skips.total:
        print(skips.report())
    return [dict(t, prompt=countdown_prompt(t["nums"], t["target"], cfg.data.countdown_format))
            for t in tasks[:rows]]


def download_and_convert(cfg: Config, name: str) -> Path:
    """Hub world: fetch one dataset with `datasets` (a seeded random sample of at most `max_rows` rows per split),
    convert it, write it with its manifest (the hub's commit hash as its revision)."""
    hub_id, split_map, converter = HUB_SOURCES[name]
    skips, splits, revision = SkipCounter(name), {}, ""
    for ours, theirs in split_map.items():
        ds, revision = load_hub_split(cfg, hub_id, theirs)
        if cfg.data.max_rows and len(ds) > cfg.data.max_rows:      # a sample of the whole set, not its first rows
            ds = ds.shuffle(seed=cfg.data.seed).select(range(cfg.data.max_rows))
        splits[ours] = drop_duplicates(converter(ds, skips), skips)
    if name == "countdown":
        splits = split_holdout(splits["train"], cfg.data.countdown_test, cfg.data.seed)
    print(skips.report())
    return write_dataset(cfg, name, splits, source=hub_id, revision=revision,
                         filters=f"max_rows={cfg.data.max_rows} (seeded sample, seed {cfg.data.seed})", skips=skips)


def prepare_data(cfg: Config) -> dict[str, Path]:
    """Build (tiny world) or download (hub world: qwen; local hub-schema files: qwen_smoke) every dataset of the
    profile; returns {name: folder}."""
    if cfg.data.world == "hub":
        return {name: download_and_convert(cfg, name) for name in HUB_SOURCES}
    world = build_tiny_world(cfg.data)
    return {name: write_dataset(cfg, name, splits, source="tiny world (helpers.build_tiny_world)",
                                filters=json.dumps(dataclasses.asdict(cfg.data)))
            for name, splits in world.items()}
