"""A coder's view of a BERT-XML ICD-10 coding model: a local web page that codes a note and highlights the evidence.

    bert-xml-app --model runs/demo/model          # or a Hub id; a private one reads HF_TOKEN
    python -m modeling_bertxml.app --model org/bert-xml-icd10 --port 7860

Paste a note (or load a .txt file, or pick an invented example) and press "Code": the codes scored above the threshold
are listed best first with description and score; selecting one highlights the words its label attention rests on.
The slider starts at the model's tuned threshold (`config.threshold`); the second tab lists the best candidates below
it. The page is served on 127.0.0.1 only.

Privacy: what is typed into the page stays in memory. Gradio's analytics, run history (kept in the browser), MCP server
and server-side rendering are off; a loaded file is read in the browser and sent as text, never uploaded to a temporary
file; there are no flagging and no cached examples; nothing here logs a note.

This one file is also a Hugging Face Space: `train.py` copies it into the model folder as `app.py` next to a
`requirements.txt`, so it imports only gradio and transformers (the model repo carries its own code, including the
`icd-coding` pipeline, loaded with `trust_remote_code`). In a Space, set the variable `MODEL_ID` to the model repo and,
for a private model, the secret `HF_TOKEN`.
"""

import argparse
import html
import os
from pathlib import Path

# Read by gradio when it is imported and when it launches: set before the import, and not left to the environment.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["GRADIO_RUN_HISTORY"] = "False"
os.environ["GRADIO_MCP_SERVER"] = "False"
os.environ["GRADIO_SSR_MODE"] = "False"

try:
    import gradio as gr  # noqa: E402
except ImportError as error:  # the package's optional extra
    raise ImportError("The coder's web app needs gradio: pip install 'bert-xml[app]' (or pip install gradio)") from error
from transformers import pipeline  # noqa: E402

NUM_CANDIDATES = 30  # codes scored once per note; the slider then only filters them, without re-running the model
NUM_EVIDENCE_SPANS = 3
# Invented notes, no patient behind them (the Hub push scans this file like every other).
EXAMPLES = {
    "Follow-up visit": (
        "Follow-up visit. Type 2 diabetes mellitus without complications, well controlled on metformin. "
        "Essential hypertension, continue lisinopril. Denies chest pain or shortness of breath."
    ),
    "Admission note": (
        "Admitted with community-acquired pneumonia of the right lower lobe, started on ceftriaxone and azithromycin. "
        "Acute kidney injury on admission, resolved with IV fluids. History of chronic heart failure and atrial "
        "fibrillation on apixaban. No evidence of sepsis."
    ),
    "Discharge summary (long)": "\n\n".join(
        [
            "DISCHARGE SUMMARY\n\nHistory of present illness: 74-year-old man with COPD, HTN and T2DM who presented "
            "with three days of worsening shortness of breath, productive cough and fever.",
            "Hospital course: chest X-ray showed a right lower lobe infiltrate; treated for pneumonia with IV "
            "antibiotics, then oral. Hyponatremia on admission corrected with fluid restriction. Creatinine rose to "
            "twice baseline (acute kidney injury), improved after holding lisinopril. Denies chest pain; troponins "
            "negative, no evidence of NSTEMI.",
        ]
        + [
            f"Day {day}: afebrile, saturating well on room air, ambulating in the hallway. Vitals stable, blood "
            "pressure controlled, glucose within range on basal insulin. Tolerating diet. Continue current plan."
            for day in range(2, 9)
        ]
        + [
            "Discharge diagnoses: community-acquired pneumonia; COPD with acute exacerbation; acute kidney injury; "
            "hyponatremia; type 2 diabetes mellitus; essential hypertension.",
            "Family history: mother with breast cancer. Social history: former smoker, quit ten years ago.",
        ]
    ),
}
CSS = """
#note-view { max-height: 32rem; overflow-y: auto; white-space: pre-wrap; overflow-wrap: anywhere; line-height: 1.6;
             padding: 0.75rem; border: 1px solid var(--border-color-primary); border-radius: 0.5rem; }
/* No padding, margin or border on a highlight: selecting a code must not move a single character. */
#note-view mark { padding: 0; margin: 0; border: 0; border-radius: 0; color: inherit; background: #fde68a; }
#note-view mark.rank-0 { background: #fbbf24; }
"""
# Loading a file: read in the browser and handed to the server as text, so no temporary file of the note is written.
FILE_READER_HTML = '<label>Load a note (.txt) <input type="file" accept=".txt,text/plain" id="note-file"></label>'
FILE_READER_JS = """
element.addEventListener('change', async (event) => {
  const file = event.target.files && event.target.files[0];
  if (!file) return;
  props.value = await file.text();
  trigger('change');
});
"""


def load_coder(model: str, token: str | None = None):
    """The `icd-coding` pipeline of a model folder or Hub repo (its own code, so bert-xml need not be installed)."""
    model = os.path.expanduser(model)
    if model.startswith(("/", ".")) and not Path(model).is_dir():  # a path, not a Hub id
        raise FileNotFoundError(f"no such model folder: {model}")
    coder = pipeline("icd-coding", model=model, trust_remote_code=True, token=token)
    architectures = getattr(coder.model.config, "architectures", None) or []
    if "BertXMLForMultiLabelCoding" not in architectures:  # e.g. a pretraining folder: its head would be random
        raise ValueError(f"{model} is not a coding model (architectures {architectures}): use train.py's output folder")
    return coder


def code_note(coder, text: str) -> list[dict]:
    """The best `NUM_CANDIDATES` codes of a note, best first, whatever their score: the slider filters them later."""
    if not text.strip():
        return []
    return coder(text, threshold=0.0, top_k=NUM_CANDIDATES, num_evidence_spans=NUM_EVIDENCE_SPANS)


def split_at(codes: list[dict], threshold: float) -> tuple[list[dict], list[dict]]:
    """(codes scored above the threshold, the others); strictly above, as the metrics and the pipeline count it."""
    return [c for c in codes if c["score"] > threshold], [c for c in codes if c["score"] <= threshold]


def code_label(item: dict) -> str:
    return f"{item['code']}  ·  {item['score']:.2f}  ·  {item['description'] or '(no description)'}"


def render_note(text: str, evidence: list[dict]) -> str:
    """The note as HTML with its evidence spans in <mark> (data-start/data-end: the character offsets in the note).

    Spans come best first; the best is marked `rank-0`. Overlapping spans (none from the pipeline) keep the first.
    """
    if not text:
        return '<div id="note-view"><em>Code a note to see it here.</em></div>'
    ranked = sorted(enumerate(evidence), key=lambda pair: pair[1]["start"])
    pieces, position = [], 0
    for rank, span in ranked:
        start, end = span["start"], span["end"]
        if start < position:
            continue
        pieces.append(html.escape(text[position:start]))
        pieces.append(
            f'<mark class="rank-{rank}" data-start="{start}" data-end="{end}" '
            f'title="attention {span["attention"]:.2f}">{html.escape(text[start:end])}</mark>'
        )
        position = end
    pieces.append(html.escape(text[position:]))
    return f'<div id="note-view">{"".join(pieces)}</div>'


def evidence_of(result: dict, code: str | None) -> list[dict]:
    return next((item["evidence"] for item in result["codes"] if item["code"] == code), [])


def code_views(result: dict, threshold: float, selected: str | None = None) -> tuple:
    """The code list (a selection of the codes above the threshold), the table below it and the highlighted note."""
    above, below = split_at(result["codes"], threshold)
    choices = [(code_label(item), item["code"]) for item in above]
    if selected not in {item["code"] for item in result["codes"]}:
        selected = above[0]["code"] if above else None
    table = [[item["code"], item["description"] or "", round(item["score"], 4)] for item in below]
    return (
        gr.Radio(choices=choices, value=selected if selected in {code for _, code in choices} else None),
        table,
        render_note(result["text"], evidence_of(result, selected)),
    )


def build_app(coder, title: str = "BERT-XML ICD-10 coder") -> gr.Blocks:
    """The page: note input, threshold slider, codes above it, candidates below it, the note with its evidence."""
    threshold = float(getattr(coder.model.config, "threshold", 0.5))

    def run(text: str, threshold: float) -> tuple:
        result = {"text": text, "codes": code_note(coder, text)}
        return (result, *code_views(result, threshold))

    def refilter(result: dict, threshold: float, selected: str | None) -> tuple:
        return code_views(result, threshold, selected)

    def highlight(result: dict, code: str | None) -> str:
        return render_note(result["text"], evidence_of(result, code))

    def highlight_candidate(result: dict, event: gr.SelectData) -> str:
        code = event.row_value[0] if event.row_value else None
        return render_note(result["text"], evidence_of(result, code))

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        result = gr.State({"text": "", "codes": []})
        gr.Markdown(
            f"## {title}\nSuggestions for a professional coder to review, not codes to submit unchecked. "
            "Nothing you enter is stored."
        )
        with gr.Row():
            with gr.Column(scale=3):
                note = gr.Textbox(label="Clinical note", lines=8, max_lines=16, elem_id="note-input")
            with gr.Column(scale=1, min_width=240):
                example = gr.Dropdown(
                    choices=list(EXAMPLES), value=None, label="Invented example notes", elem_id="example-picker"
                )
                upload = gr.HTML(
                    value="", html_template=FILE_READER_HTML, js_on_load=FILE_READER_JS, elem_id="note-file-reader"
                )
                code_button = gr.Button("Code", variant="primary", elem_id="code-button")
        with gr.Row():
            with gr.Column(scale=3):
                note_view = gr.HTML(render_note("", []), elem_id="note-view-container")
            with gr.Column(scale=2, min_width=320):
                slider = gr.Slider(0.0, 1.0, value=threshold, step=0.01, label="Threshold", elem_id="threshold")
                with gr.Tabs():
                    with gr.Tab("Suggested codes"):
                        codes = gr.Radio(choices=[], label="Codes above the threshold", elem_id="codes")
                    with gr.Tab("Below the threshold"):
                        candidates = gr.Dataframe(
                            headers=["code", "description", "score"], value=[], interactive=False,
                            label="Best candidates below the threshold (select one to see its evidence)",
                            elem_id="candidates",
                        )  # fmt: skip

        example.change(lambda name: EXAMPLES.get(name, ""), example, note)
        upload.change(lambda text: text, upload, note)
        outputs = [codes, candidates, note_view]
        code_button.click(run, [note, slider], [result, *outputs])
        slider.change(refilter, [result, slider, codes], outputs)
        codes.select(highlight, [result, codes], note_view)
        candidates.select(highlight_candidate, result, note_view)
    return app


def default_model() -> str | None:
    """`MODEL_ID` (a Space's variable), else this file's folder when it is a model folder (a cloned model repo)."""
    if os.environ.get("MODEL_ID"):
        return os.environ["MODEL_ID"]
    here = Path(__file__).resolve().parent
    return str(here) if (here / "config.json").is_file() else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Code a clinical note in the browser and see the evidence.")
    parser.add_argument(
        "--model", default=default_model(),
        help="Model folder (train.py's output_dir) or Hub repo id (default: $MODEL_ID, or this file's folder).",
    )  # fmt: skip
    parser.add_argument(
        "--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="Address to serve on (default 127.0.0.1: this machine only; a Space sets GRADIO_SERVER_NAME).",
    )  # fmt: skip
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    args = parser.parse_args(argv)
    if not args.model:
        parser.error("--model is required (a model folder or a Hub repo id), or set MODEL_ID")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        coder = load_coder(args.model, token=os.environ.get("HF_TOKEN"))
    except (OSError, ValueError, KeyError) as error:  # no such folder or repo, no access, not an icd-coding model
        raise SystemExit(f"error: cannot load the icd-coding pipeline of {args.model}: {error}") from None
    build_app(coder).launch(
        server_name=args.host,
        server_port=args.port,
        share=False,
        quiet=True,
        footer_links=[],
        run_history=False,
        mcp_server=False,
        ssr_mode=False,
        enable_monitoring=False,
        css=CSS,
        theme=gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]),
    )


if __name__ == "__main__":
    main()
