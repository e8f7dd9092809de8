"""In a real browser, as a user meets them: the chat notebook in JupyterLab (tokens stream in, Stop ends a reply
within a second, Clear and switching checkpoints act while a reply streams, HTML in a reply is shown as text) and
TensorBoard on a smoke run (the stages' scalar tags, RLOO's sample tables under Text).

Headless Chromium from Debian's packages driven by selenium; both servers run on 127.0.0.1 at a free port and are
stopped by the test that started them. Slow (a smoke pipeline first, 3–4 minutes in all), so these run with
`pytest --browser` (`make test-browser`); without Chromium they are skipped, saying what to install.
SCREENSHOTS=1 saves assets/chat_widget.png and assets/tensorboard.png (when regenerating results); otherwise the
tests write nothing into the repository."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import config, modeling
import browser as B   # tests/browser.py: Chromium, servers, waiting

pytestmark = pytest.mark.browser
SCREENSHOTS = os.environ.get("SCREENSHOTS") == "1"
SMOKE_STAGES = (["data"], ["train", "--stage", "sft_masked"], ["train", "--stage", "sft_unmasked"],
                ["train", "--stage", "dpo"], ["train", "--stage", "rloo"])
# the scripted model's reply, repeated until max_new_tokens: markup that would run script if it became HTML
SCRIPT = ("Here is ", "<b>", "bold", "</b>", " and an image: ", "<img src=x onerror=alert(1)>", ". ")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    """The smoke pipeline up to RLOO through the command line, in a temp OUTPUT_DIR: checkpoints to chat with and
    TensorBoard events of every stage."""
    out = tmp_path_factory.mktemp("browser_smoke")
    env = {**os.environ, "PROFILE": "smoke", "OUTPUT_DIR": str(out), "TQDM_DISABLE": "1"}
    for args in SMOKE_STAGES:
        done = subprocess.run([sys.executable, "-m", "helpers", *args, "--profile", "smoke"], cwd=config.REPO_ROOT,
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{args}: {done.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    missing = B.missing_browser()
    if missing:
        pytest.skip(f"browser tests skipped: {missing}")
    chrome = B.chromium(tmp_path_factory.mktemp("chromium"))
    yield chrome
    chrome.quit()


def scripted_model(tokenizer_dir: Path, out: Path) -> Path:
    """A Qwen2 checkpoint whose reply is SCRIPT over and over: each piece is a token of its own (added to the smoke
    tokenizer), the embedding of piece i is the unit vector e_i (any other token: e_n), attention and MLP write
    nothing, and the head maps e_i to piece i + 1 with a margin no temperature overcomes. It stands in for a model
    that answers with HTML, and its reply never ends by itself, so Stop has something to interrupt."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    tokenizer = modeling.load_tokenizer(tokenizer_dir)
    tokenizer.add_tokens(list(SCRIPT))
    ids = tokenizer.convert_tokens_to_ids(list(SCRIPT))
    n = len(ids)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=n + 1, intermediate_size=4, num_hidden_layers=1,
        num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=2048, tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.norm.weight.fill_(1.0)
        model.model.embed_tokens.weight[:, n] = 1.0
        model.lm_head.weight[ids[0], n] = 100.0
        for i, token in enumerate(ids):
            model.model.embed_tokens.weight[token] = torch.nn.functional.one_hot(torch.tensor(i), n + 1).float()
            model.lm_head.weight[ids[(i + 1) % n], i] = 100.0
    return modeling.save_model(model, out, tokenizer)


def test_the_scripted_model_answers_with_its_script(smoke_run, tmp_path):
    from helpers import chat
    session = chat.ChatSession(temperature=1.0, max_new_tokens=3 * len(SCRIPT))
    assert session.load(scripted_model(smoke_run / "checkpoints" / "smoke" / "initial", tmp_path / "m")) is None
    assert session.send("anything") == ("".join(SCRIPT) * 3).strip()


class Chat:
    """The chat widget of 06_chat as a user sees it in JupyterLab: what they read and what they press."""

    def __init__(self, driver):
        from selenium.webdriver.common.by import By
        self.driver, self.by = driver, By

    def find(self, xpath):
        return self.driver.find_element(self.by.XPATH, xpath)

    @property
    def status(self) -> str:
        return B.text_of(self.driver, ".chat-status")

    @property
    def conversation(self) -> str:
        return B.text_of(self.driver, ".chat-conversation")

    def type(self, text: str) -> None:
        from selenium.webdriver.common.keys import Keys
        self.driver.find_element(self.by.CSS_SELECTOR, ".chat-message input").send_keys(text, Keys.ENTER)

    def press(self, button: str) -> float:
        """Click a button; returns when it was clicked (time.monotonic)."""
        element = self.find(f"//button[normalize-space()='{button}']")
        clicked = time.monotonic()
        element.click()
        return clicked

    def choose(self, checkpoint: str) -> float:
        from selenium.webdriver.support.ui import Select
        select = Select(self.driver.find_element(self.by.CSS_SELECTOR, ".widget-dropdown select"))
        chosen = time.monotonic()
        select.select_by_visible_text(checkpoint)
        return chosen

    def set_path(self, path) -> None:
        from selenium.webdriver.common.keys import Keys
        self.find("//div[contains(@class,'widget-text')][label[text()='path']]/input").send_keys(str(path), Keys.ENTER)

    def set_max_tokens(self, value: int) -> None:
        """Type into the slider's readout, as a user can instead of dragging."""
        from selenium.webdriver.common.keys import Keys
        readout = self.find("//div[contains(@class,'widget-slider')][label[text()='max tokens']]"
                            "//div[contains(@class,'widget-readout')]")
        readout.click()
        readout.send_keys(Keys.CONTROL, "a")
        readout.send_keys(str(value), Keys.ENTER)
        B.wait_for(lambda: readout.text == str(value), 5, f"max tokens to read {value}")

    def no_markup_in_the_conversation(self) -> None:
        """The only elements in the conversation are the widget's own: <p>, <br> and the bold speaker labels."""
        tags = self.driver.execute_script(
            "return Array.from(document.querySelectorAll('.chat-conversation .widget-html-content *'))"
            ".map(e => e.tagName.toLowerCase() + (e.tagName === 'B' ? ':' + e.textContent : ''))")
        assert set(tags) <= {"p", "br", "i", "b:You:", "b:Assistant:"}, sorted(set(tags))
        assert self.driver.execute_script("return document.querySelectorAll('img').length") == 0
        from selenium.common.exceptions import NoAlertPresentException
        with pytest.raises(NoAlertPresentException):    # an <img onerror=alert(1)> that ran would have opened one
            self.driver.switch_to.alert.text

    def streams(self, what: str) -> None:
        """Wait until the reply is seen growing (three different lengths while the status says generating),
        checking at every look that the text streamed so far is text, not markup."""
        seen = set()

        def growing():
            self.no_markup_in_the_conversation()
            if "generating" in self.status and "Assistant:" in self.conversation:
                seen.add(len(self.conversation))
            return len(seen) >= 3
        B.wait_for(growing, 30, f"{what}: tokens to arrive (lengths seen {sorted(seen)})")

    def screenshot(self, path: Path) -> None:
        widget = self.find("//div[contains(@class,'jp-OutputArea-output')][.//div[contains(@class,'chat-status')]]")
        self.driver.execute_script("arguments[0].scrollIntoView()", widget)
        widget.screenshot(str(path))


def open_and_run(driver, base: str, token: str, notebook: str) -> None:
    """Open the notebook in JupyterLab and run it with Run → Run All Cells; return when its last cell has printed."""
    from selenium.webdriver.common.by import By
    driver.get(f"{base}/lab/tree/{notebook}?token={token}")
    B.wait_for(lambda: "Idle" in B.text_of(driver, "#jp-main-statusbar"), 90, "the kernel to start")
    next(item for item in driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item") if item.text == "Run").click()
    driver.find_element(By.CSS_SELECTOR, '.lm-Menu-item[data-command="runmenu:run-all"]').click()


def test_chat_in_jupyterlab(smoke_run, driver, tmp_path):
    """06_chat in the smoke profile, run in JupyterLab, used with keyboard and mouse: a reply arrives; HTML in a
    message and in a reply is shown as text (while streaming too, and no script runs); Stop ends a long reply
    within a second; Clear and a checkpoint switch act while a reply streams; the new checkpoint answers."""
    root = tmp_path / "lab"            # JupyterLab serves a copy: its autosave and checkpoints stay out of the repo
    root.mkdir()
    shutil.copy(config.REPO_ROOT / "notebooks" / "06_chat.ipynb", root)
    scripted = scripted_model(smoke_run / "checkpoints" / "smoke" / "initial", tmp_path / "scripted")
    env = {**os.environ, "PROFILE": "smoke", "OUTPUT_DIR": str(smoke_run), "PYTHONPATH": str(config.REPO_ROOT)}
    with B.jupyterlab(root, env) as (base, token):
        open_and_run(driver, base, token, "06_chat.ipynb")
        chat = Chat(driver)
        B.wait_for(lambda: "Which number is the largest" in B.text_of(driver, ".jp-OutputArea-output"), 120,
                   "the notebook to run to its last cell")
        # the first checkpoint loaded, and the notebook's own scripted exchange answered
        assert "answered in" in chat.status and chat.status.endswith("initial")
        assert "What is 3 + 4?" in chat.conversation

        chat.type("hello there")                                       # Enter sends; a reply arrives
        B.wait_for(lambda: "answered in" in chat.status and "You: hello there" in chat.conversation, 60,
                   "the reply to hello there")
        assert "Assistant:" in chat.conversation and chat.driver.find_element(
            chat.by.CSS_SELECTOR, ".chat-message input").get_attribute("value") == ""

        chat.choose("(path below)")                                    # any model directory, by path
        B.wait_for(lambda: "No checkpoint chosen" in chat.status, 10, "a request for a path")
        chat.set_path(scripted)
        B.wait_for(lambda: chat.status == f"ready · {scripted}", 30, "the scripted model to load")

        chat.set_max_tokens(16)                # HTML in the message and in the reply: shown as text, nothing runs
        chat.type("Show me some <b>HTML</b>")
        B.wait_for(lambda: "answered in" in chat.status, 30, "the scripted reply")
        assert "You: Show me some <b>HTML</b>" in chat.conversation
        assert "Assistant: Here is <b>bold</b> and an image: <img src=x onerror=alert(1)>." in chat.conversation
        chat.no_markup_in_the_conversation()
        if SCREENSHOTS:
            chat.screenshot(config.REPO_ROOT / "assets" / "chat_widget.png")

        chat.set_max_tokens(1024)              # a long reply, stopped in the middle
        chat.type("tell me a long story")
        chat.streams("the long reply")
        pressed = chat.press("Stop")
        B.wait_for(lambda: "stopped after" in chat.status, 5, "Stop to end the reply")
        took = time.monotonic() - pressed
        shown = chat.conversation
        time.sleep(0.5)
        assert chat.conversation == shown, "the reply went on after Stop"
        assert took < 1.0, f"Stop took {took:.2f} s"
        story = shown.split("You: tell me a long story")[1]
        assert 0 < story.count("<img src=x onerror=alert(1)>") < 1024 // len(SCRIPT)   # ended early
        chat.no_markup_in_the_conversation()

        chat.type("again")                     # Clear while a reply streams
        chat.streams("the reply to clear")
        pressed = chat.press("Clear")
        B.wait_for(lambda: chat.conversation == "" and chat.status.startswith("ready"), 5, "Clear")
        took = time.monotonic() - pressed
        time.sleep(0.5)
        assert chat.conversation == "" and took < 1.0, f"Clear took {took:.2f} s"

        chat.type("once more")                 # switching checkpoints while a reply streams
        chat.streams("the reply interrupted by a switch")
        chosen = chat.choose("sft_unmasked")
        B.wait_for(lambda: chat.status.startswith("ready") and chat.status.endswith("sft_unmasked"), 10,
                   "sft_unmasked to load")
        took = time.monotonic() - chosen
        time.sleep(0.5)
        assert chat.conversation == "" and took < 5.0, f"the switch took {took:.2f} s"

        chat.set_max_tokens(16)                # the new checkpoint answers
        chat.type("hi")
        B.wait_for(lambda: "answered in" in chat.status and chat.status.endswith("sft_unmasked"), 60,
                   "sft_unmasked's reply")
        assert chat.conversation.startswith("You: hi\nAssistant:")
    assert not list(config.REPO_ROOT.glob("notebooks/.ipynb_checkpoints"))


DEEP_TEXT = """
// the text of every element matching a selector, inside shadow roots too (TensorBoard's dashboards use them)
const found = [];
const visit = root => {
  root.querySelectorAll(arguments[0]).forEach(e => found.push(e.innerText));
  root.querySelectorAll('*').forEach(e => { if (e.shadowRoot) visit(e.shadowRoot); });
};
visit(document);
return found;
"""


def show_cards(driver, base: str, runs: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """Open TensorBoard's Time Series, filter the tags as a user types them; {tag: its card's text} once exactly
    these cards are shown with the data of their runs (each card's legend of runs, values and steps scrolls:
    textContent). The runs load one by one, so the wait is for all of them, not the first."""
    tags = tuple(runs)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    driver.get(f"{base}/#timeseries")
    tag_filter = B.wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "input[placeholder^='Filter tags']"),
                            60, "the Time Series dashboard")[0]
    tag_filter.send_keys(f"^({'|'.join(tags)})$", Keys.ENTER)
    cards = lambda: dict(driver.execute_script(
        "return Array.from(document.querySelectorAll('.card-space')).filter(e => e.checkVisibility())"
        ".map(e => [(e.querySelector('.heading') || e).textContent.trim(), e.textContent])"))
    return B.wait_for(lambda: (shown := cards()) and sorted(shown) == sorted(tags)
                      and all("Step" in text and all(run in text for run in runs[tag]) for tag, text in shown.items())
                      and shown, 60, f"the cards of {tags}, only they, with the data of {runs}")


def screenshot_without_settings(driver, path: Path) -> None:
    from selenium.webdriver.common.by import By
    driver.find_element(By.XPATH, "//button[contains(normalize-space(), 'Settings')]").click()   # the pane off
    time.sleep(1)
    driver.save_screenshot(str(path))


def test_tensorboard_shows_the_stages(smoke_run, driver, tmp_path):
    """`make tensorboard`'s server on a smoke run, opened as a user does: the scalar cards of the stages' tags
    (train/loss of sft_masked, rloo/reward_mean of rloo) and, under Text, RLOO's tables of sampled completions.
    The screenshot shows the committed tiny run (what `make tensorboard` serves), not the smoke run's few steps."""
    runs = {"train/loss": ("sft_masked", "sft_unmasked", "dpo"), "rloo/reward_mean": ("rloo",)}
    with B.tensorboard(smoke_run / "tensorboard_events" / "smoke", tmp_path / "tensorboard.log") as base:
        cards = show_cards(driver, base, runs)   # waits until each card shows these runs
        assert "sft_masked" not in cards["rloo/reward_mean"]

        driver.get(f"{base}/#text")
        tables = B.wait_for(lambda: [t for t in driver.execute_script(DEEP_TEXT, "table")
                                     if t.startswith("prompt\tcompletion\treward")], 60, "RLOO's sample tables")
        rows = [row.split("\t") for table in tables for row in table.splitlines()[1:]]
        assert len(tables) >= 2 and rows and all(len(row) == 3 for row in rows), rows
        assert all(prompt.startswith('"') and completion.startswith('"') and float(reward) >= 0
                   for prompt, completion, reward in rows)
    if SCREENSHOTS:
        committed = config.REPO_ROOT / "tensorboard_events" / "tiny"
        with B.tensorboard(committed, tmp_path / "tensorboard_tiny.log") as base:
            show_cards(driver, base, runs)
            screenshot_without_settings(driver, config.REPO_ROOT / "assets" / "tensorboard.png")
