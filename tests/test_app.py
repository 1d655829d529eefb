"""The coder's web app (`bert-xml-app`) driven in a real headless Chromium, on a tiny model trained on synthetic notes.

Needs the `app` extra (gradio), Playwright's Python package and Debian's `chromium` at /usr/bin/chromium: `make test`
installs all three (see the README). Playwright only drives that binary; no browser is downloaded.
"""

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from modeling_bertxml.release.pipeline_folder import make_pipeline_ready
from tests.conftest import SUBPROCESS_TIMEOUT_S, free_port
from tests.synthetic_coding import DESCRIPTIONS, TRIGGERS, trained_coder

CHROMIUM = Path("/usr/bin/chromium")
HOW_TO_RUN = "run `make test` (it installs them), or: apt-get install chromium; pip install -e '.[app,dev]'"
if not CHROMIUM.exists():
    pytest.skip(f"no Chromium at {CHROMIUM}; {HOW_TO_RUN}", allow_module_level=True)
pytest.importorskip("gradio", reason=f"gradio (the `app` extra) is not installed; {HOW_TO_RUN}")
sync_api = pytest.importorskip("playwright.sync_api", reason=f"playwright is not installed; {HOW_TO_RUN}")

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
# A note for the tiny model: two codes' trigger phrases among filler words it knows, and a negated third.
NOTE = "patient admitted with chest pain and stable vitals , glucose and insulin ; denies heart failure . pneumonia"
EXPECTED = {"R07.9": "chest pain", "J18.9": "pneumonia"}
UPLOADED = "patient discharged with essential hypertension on lisinopril"
# Where each mark sits in the rendered note: its text offset from the note's start, measured in the DOM.
MARKS_JS = """() => {
  const view = document.querySelector('#note-view');
  return {
    text: view.textContent,
    scrolls: view.scrollHeight > view.clientHeight && getComputedStyle(view).overflowY === 'auto',
    marks: [...view.querySelectorAll('mark')].map(mark => {
      const range = document.createRange();
      range.setStart(view, 0);
      range.setEndBefore(mark);
      return {offset: range.toString().length, text: mark.textContent, start: +mark.dataset.start,
              end: +mark.dataset.end, rank: mark.className};
    }),
  };
}"""
# Screen position of every character of the note: highlights must not move any of them.
LAYOUT_JS = """() => {
  const view = document.querySelector('#note-view');
  const walker = document.createTreeWalker(view, NodeFilter.SHOW_TEXT);
  const positions = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    for (let i = 0; i < node.length; i++) {
      const range = document.createRange();
      range.setStart(node, i);
      range.setEnd(node, i + 1);
      const box = range.getBoundingClientRect();
      positions.push([Math.round(box.left * 10), Math.round(box.top * 10)]);
    }
  }
  return positions;
}"""


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory):
    """The app serving a tiny trained model on a free loopback port; yields its URL, its log and its temp dir.

    BERT_XML_APP_MODEL=FOLDER serves another model instead (for the README's screenshot: only the example test holds
    for any model)."""
    folder = tmp_path_factory.mktemp("coder")
    model_folder = os.environ.get("BERT_XML_APP_MODEL") or folder
    if model_folder == folder:
        model, tokenizer = trained_coder()
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        make_pipeline_ready(folder, descriptions=DESCRIPTIONS)
    port, log, gradio_tmp = free_port(), folder / "app.log", tmp_path_factory.mktemp("gradio-tmp")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_TEMP_DIR": str(gradio_tmp)}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "modeling_bertxml.model.app", "--model", str(model_folder), "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the app did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url, log, gradio_tmp
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def page(tmp_path: Path):
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )  # fmt: skip
        try:
            yield context.new_page()
        finally:
            context.close()


def code_labels(page) -> list[str]:
    return page.locator("#codes label").all_inner_texts()


def test_a_pasted_note_gets_its_codes_and_the_selected_code_is_highlighted_at_its_evidence(
    app_url, page, tmp_path: Path
) -> None:
    url, log, gradio_tmp = app_url
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(url)
    page.locator("#note-input textarea").fill(NOTE)
    page.locator("#code-button").click()
    page.locator("#codes label").first.wait_for(timeout=60_000)
    outside = [address for address in requested if not address.startswith((url, "data:", "blob:"))]
    assert not outside  # no web fonts, analytics or CDN: the page talks to the app only

    labels = code_labels(page)
    listed = [label.split()[0] for label in labels]
    assert set(EXPECTED) <= set(listed), labels
    scores = [float(label.split("·")[1]) for label in labels]
    assert scores == sorted(scores, reverse=True)  # best first
    assert "Chest pain, unspecified" in labels[listed.index("R07.9")]  # with its description

    for code, phrase in EXPECTED.items():
        start = NOTE.index(phrase)
        end = start + len(phrase)
        page.locator("#codes label", has_text=code).click()
        # The best evidence span of the selected code lies inside its trigger phrase.
        page.wait_for_function(
            "([start, end]) => { const m = document.querySelector('#note-view mark.rank-0');"
            " return m && +m.dataset.start >= start && +m.dataset.end <= end; }",
            arg=[start, end], timeout=30_000,
        )  # fmt: skip
        state = page.evaluate(MARKS_JS)
        assert state["text"] == NOTE  # the note is shown exactly as typed
        assert state["marks"]
        for mark in state["marks"]:
            assert mark["offset"] == mark["start"]  # drawn at the characters the pipeline's offsets name
            assert mark["text"] == NOTE[mark["start"] : mark["end"]]
    page.screenshot(path=tmp_path / "app.png", full_page=True)
    assert (tmp_path / "app.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_highlights_do_not_move_text_and_the_threshold_moves_codes_to_the_candidates(app_url, page) -> None:
    url, _, _ = app_url
    page.goto(url)
    page.locator("#note-input textarea").fill(NOTE)
    page.locator("#code-button").click()
    page.locator("#codes label", has_text="J18.9").wait_for(timeout=60_000)
    before = page.evaluate(LAYOUT_JS)
    marks_before = page.evaluate(MARKS_JS)["marks"]
    page.locator("#codes label", has_text="J18.9").click()
    page.wait_for_function(
        f"() => document.querySelector('#note-view mark').dataset.start != {marks_before[0]['start']}"
    )
    after = page.evaluate(LAYOUT_JS)
    # Every character stays on its line, within a pixel (text shaping may differ by a fraction at a mark's edge).
    assert len(after) == len(before)
    assert all(top_a == top_b and abs(left_a - left_b) <= 10 for (left_a, top_a), (left_b, top_b) in zip(after, before))

    # Above every score: no suggested code is left, and all of them are candidates below the threshold.
    number = page.locator("#threshold input[type=number]")
    number.fill("1")
    number.press("Enter")
    page.wait_for_function("() => document.querySelectorAll('#codes label').length === 0", timeout=30_000)
    page.get_by_role("tab", name="Below the threshold").click()
    for code in EXPECTED:
        sync_api.expect(page.locator("#candidates")).to_contain_text(code, timeout=30_000)


def test_a_loaded_file_and_a_long_note_are_read_in_the_browser_and_nothing_is_written_or_logged(app_url, page) -> None:
    url, log, gradio_tmp = app_url
    page.goto(url)
    page.locator("#note-file").set_input_files(
        files=[{"name": "note.txt", "mimeType": "text/plain", "buffer": UPLOADED.encode()}]
    )
    page.wait_for_function(f"() => document.querySelector('#note-input textarea').value === {UPLOADED!r}")

    long_note = "\n".join([NOTE] * 60)  # longer than the tiny model reads: coded from its beginning, shown whole
    page.locator("#note-input textarea").fill(long_note)
    page.locator("#code-button").click()
    page.locator("#codes label", has_text="R07.9").wait_for(timeout=60_000)
    page.get_by_text("the model reads the first 64").wait_for(timeout=30_000)  # the page says it was truncated
    state = page.evaluate(MARKS_JS)
    assert state["text"] == long_note
    assert state["scrolls"]  # the note scrolls inside its box instead of stretching the page

    written = [path for path in gradio_tmp.rglob("*") if path.is_file()]
    assert not [path for path in written if any(text in path.read_bytes() for text in (b"lisinopril", b"chest pain"))]
    assert "chest pain" not in log.read_text() and "lisinopril" not in log.read_text()


def test_an_example_note_is_picked_coded_and_highlighted(app_url, page, tmp_path: Path) -> None:
    """Holds for any model. The README's screenshot: BERT_XML_APP_MODEL=runs/demo/model BERT_XML_APP_EXAMPLE=
    "Synthetic discharge summary (demo corpus)" BERT_XML_APP_SCREENSHOT=docs/app.png pytest tests/test_app.py -k example
    """
    from modeling_bertxml.model.app import EXAMPLES

    url, _, _ = app_url
    page.goto(url)
    name = os.environ.get("BERT_XML_APP_EXAMPLE", "Admission note")  # the tiny model reads 64 tokens: a short one
    page.locator("#example-picker input").click()
    page.get_by_role("option", name=name).click()
    page.wait_for_function(f"() => document.querySelector('#note-input textarea').value === {EXAMPLES[name]!r}")
    page.locator("#code-button").click()
    page.locator("#note-view mark").first.wait_for(timeout=60_000)  # the best code is selected and highlighted
    state = page.evaluate(MARKS_JS)
    assert state["text"] == EXAMPLES[name]
    for mark in state["marks"]:
        assert mark["offset"] == mark["start"] and mark["text"] == EXAMPLES[name][mark["start"] : mark["end"]]
    page.screenshot(path=tmp_path / "app.png", full_page=True)
    if os.environ.get("BERT_XML_APP_SCREENSHOT"):
        shutil.copyfile(tmp_path / "app.png", os.environ["BERT_XML_APP_SCREENSHOT"])
