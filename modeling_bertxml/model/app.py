"""A coder's view of a BERT-XML ICD-10 coding model: a local web page that codes a note and highlights the evidence.

    bert-xml-app --model runs/demo/model          # or a Hub id; a private one reads HF_TOKEN
    python -m modeling_bertxml.model.app --model org/bert-xml-icd10 --port 7860

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
except ImportError:  # the package's optional extra: `main` says how to install it, `build_app` raises
    gr = None
from transformers import pipeline  # noqa: E402

GRADIO_MISSING = "the coder's web app needs gradio: pip install 'bert-xml[app]' (or gradio)"

NUM_CANDIDATES = 30  # codes scored once per note; the slider then only filters them, without re-running the model
NUM_EVIDENCE_SPANS = 3
# Invented notes and one note of the synthetic demo corpus (`python -m modeling_bertxml.data.synthetic`, test split,
# first note): no patient behind any of them. The Hub push scans this file like every other.
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
    "Synthetic discharge summary (demo corpus)": (
        "DISCHARGE SUMMARY\n"
        "Admission Date: [**2179-10-22**]\n"
        "Sex: M   Age: 29   Service: MEDICINE\n"
        "\n"
        "CHIEF COMPLAINT:\n"
        "Septicemia, worsening over several days\n"
        "\n"
        "HISTORY OF PRESENT ILLNESS:\n"
        "29-year-old man presenting to the ED.\n"
        "He denies any history of unspecified atrial fibrillation.\n"
        "He was recently diagnosed with hyperlipidemia by his primary care physician.\n"
        "No known history of low platelets.\n"
        "He reports feeling generally unwell for about 9 days.\n"
        "He has a known history of sepsis.\n"
        "Review of systems was otherwise reviewed and is as per HPI.\n"
        "In the emergency department vital signs were notable for a heart rate of 120 and blood "
        "pressure of 131/95.\n"
        "He was last seen by his outpatient provider 5 weeks ago.\n"
        "He has not traveled recently and has had no sick contacts.\n"
        "He was able to provide a history and confirmed the medication list.\n"
        "Course has been complicated by DM with CKD.\n"
        "\n"
        "PAST MEDICAL HISTORY:\n"
        "- Essential (primary) hypertension, diagnosed in 2153\n"
        "- Diabetic nephropathy\n"
        "- Esophageal reflux, followed by his primary care physician\n"
        "- remote knee arthroscopy\n"
        "\n"
        "SOCIAL HISTORY:\n"
        "Enjoys gardening and walks daily.\n"
        "Retired bus driver.\n"
        "\n"
        "FAMILY HISTORY:\n"
        "Brother died of complications of acute kidney failure, unspecified at age 73.\n"
        "\n"
        "MEDICATIONS ON ADMISSION:\n"
        "1. apixaban 5 mg PO BID\n"
        "2. polyethylene glycol 17 g PO daily\n"
        "3. levothyroxine 75 mcg PO daily\n"
        "4. gabapentin 300 mg PO TID\n"
        "\n"
        "PHYSICAL EXAM:\n"
        "Vitals: T 101.0 HR 93 BP 167/63 RR 19 SpO2 89% on room air.\n"
        "General: elderly appearing, resting comfortably.\n"
        "HEENT: normocephalic, atraumatic, mucous membranes moist.\n"
        "Neck: supple, JVP not elevated.\n"
        "CV: irregular rhythm, no murmurs, rubs or gallops.\n"
        "Lungs: bibasilar crackles, no wheezes.\n"
        "Abdomen: obese, soft, mild tenderness.\n"
        "Extremities: trace edema bilaterally.\n"
        "Neuro: cranial nerves II through XII grossly intact, strength 5/5 throughout.\n"
        "Exam not consistent with hypomagnesemia.\n"
        "Exam not consistent with potassium deficiency.\n"
        "\n"
        "PERTINENT RESULTS:\n"
        "Renal ultrasound: kidneys are normal in size without hydronephrosis.\n"
        "Workup confirmed acute respiratory failure with hypoxia.\n"
        "Chest radiograph: lungs are well expanded; no acute osseous abnormality.\n"
        "EKG: sinus rhythm at 78 beats per minute, normal intervals.\n"
        "Abdominal radiograph: nonobstructive bowel gas pattern.\n"
        "CT negative for hypothyroidism.\n"
        "Echocardiogram: left ventricular ejection fraction of 67 percent; no significant valvular "
        "disease.\n"
        "\n"
        "ASSESSMENT AND PLAN:\n"
        "Hypomagnesemia: ruled out, no further workup.\n"
        "Atrial fibrillation: ruled out, no further workup.\n"
        "Low suspicion for hypothyroidism, unspecified; monitor clinically.\n"
        "GERD: active.\n"
        "\n"
        "BRIEF HOSPITAL COURSE:\n"
        "Electrolytes were monitored daily and repleted as needed.\n"
        "He remained hemodynamically stable on the floor.\n"
        "Fingerstick glucose checks were performed before meals and at bedtime.\n"
        "His diet was advanced as tolerated and he tolerated a regular diet.\n"
        "Blood pressure ranged from 98/90 to 172/91 during the stay.\n"
        "The team discussed the plan of care with his son, who agreed with the plan.\n"
        "He was transitioned from IV to oral medications on hospital day 4.\n"
        "He was counseled on medication changes and expressed understanding.\n"
        "Venous thromboembolism prophylaxis was given with heparin 5000 units SC TID.\n"
        "He was treated for septicemia during this admission.\n"
        "# Atherosclerotic heart disease: no evidence of this on repeat studies; no treatment "
        "needed.\n"
        "A peripheral IV was placed on admission and removed prior to discharge.\n"
        "Nutrition was consulted and recommended oral supplements with meals.\n"
        "He was treated for hyperlipidemia, unspecified during this admission.\n"
        "\n"
        "DISCHARGE MEDICATIONS:\n"
        "1. ceftriaxone 1 g IV Q24H\n"
        "2. pantoprazole 40 mg PO Q24H\n"
        "3. carvedilol 6.25 mg PO BID\n"
        "4. sertraline 50 mg PO daily\n"
        "5. acetaminophen 650 mg PO Q6H PRN\n"
        "6. gabapentin 300 mg PO TID\n"
        "7. tamsulosin 0.4 mg PO QHS\n"
        "8. atorvastatin 40 mg PO QHS\n"
        "\n"
        "DISCHARGE DIAGNOSES:\n"
        "Primary:\n"
        "Sepsis\n"
        "Secondary:\n"
        "- Diabetic nephropathy\n"
        "- Esophageal reflux\n"
        "- Postmenopausal osteoporosis without current pathological fracture\n"
        "- Acute respiratory failure with hypoxia\n"
        "- Chest pain\n"
        "\n"
        "DISCHARGE CONDITION:\n"
        "Mental status: clear and coherent.\n"
        "Activity status: ambulatory, independent.\n"
        "\n"
        "DISCHARGE INSTRUCTIONS:\n"
        "Please follow up with your primary care physician within 9 weeks.\n"
        "Return to the emergency department if you develop new or worsening symptoms.\n"
        "Please take your medications as prescribed and keep your follow-up appointments."
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
# Selecting a code scrolls the note to its best evidence span (a long note's evidence may be far down).
SCROLL_TO_EVIDENCE_JS = """
watch('value', () => {
  const view = element.querySelector('#note-view');
  const best = view && view.querySelector('mark.rank-0');
  if (best) view.scrollTop = best.offsetTop - view.offsetTop - view.clientHeight / 3;
});
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


def build_app(coder, title: str = "BERT-XML ICD-10 coder") -> "gr.Blocks":
    """The page: note input, threshold slider, codes above it, candidates below it, the note with its evidence."""
    if gr is None:
        raise ImportError(GRADIO_MISSING)
    # Shown to 3 decimals (the tuned value comes from a grid of 100 points in [0, 1]: 0.7070...).
    threshold = round(float(getattr(coder.model.config, "threshold", 0.5)), 3)

    def run(text: str, threshold: float) -> tuple:
        length, limit = len(coder.tokenizer(text)["input_ids"]), coder.model.config.max_note_length
        if length > limit:  # the pipeline truncates: say so on the page, where the coder reads the evidence
            gr.Warning(f"This note has {length:,} tokens and the model reads the first {limit:,}: codes and evidence "
                       "come from that part only.")  # fmt: skip
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
                    choices=list(EXAMPLES), value=None, label="Example notes (invented or synthetic)",
                    elem_id="example-picker",
                )
                upload = gr.HTML(
                    value="", html_template=FILE_READER_HTML, js_on_load=FILE_READER_JS, elem_id="note-file-reader"
                )
                code_button = gr.Button("Code", variant="primary", elem_id="code-button")
        with gr.Row():
            with gr.Column(scale=3):
                note_view = gr.HTML(
                    render_note("", []), js_on_load=SCROLL_TO_EVIDENCE_JS, elem_id="note-view-container"
                )
            with gr.Column(scale=2, min_width=320):
                slider = gr.Slider(
                    0.0, 1.0, value=threshold, step=0.001, label="Threshold (starts at the tuned one)",
                    elem_id="threshold",
                )
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
    if gr is None:  # before the model loads
        raise SystemExit(f"error: {GRADIO_MISSING}")
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
