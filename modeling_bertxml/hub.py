"""Push a trained model folder to the Hugging Face Hub: private by default, and never with patient identifiers.

A model trained on clinical notes can leak them through what travels with the weights: a model card with an example
note, a tokenizer vocabulary that memorised an MRN, a results file. `push_folder` therefore scans every text file it is
about to upload for strings that look like MRNs, phone numbers or dates of birth (and for the access token itself),
refuses when it finds any (an override exists for checked false positives; the token never passes), creates or
re-privatises the repo, then uploads. A network failure becomes one `HubPushError` saying the local folder is intact.

`train.py` calls `add_hub_args(parser)` and `push_from_args(args, folder)`; `python -m modeling_bertxml.hub FOLDER
--hub_model_id org/name` pushes (or re-pushes) an existing folder the same way.
"""

import argparse
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import OfflineModeIsEnabled
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

logger = logging.getLogger(__name__)

TOKEN_KIND = "access token"


@dataclass(frozen=True)
class _Rule:
    kind: str
    pattern: re.Pattern
    # False: a JSON number value (vocab_size, num_notes, a metric) never matches; digits inside JSON strings still do.
    matches_json_numbers: bool = True


_DATE = (
    r"(?:\d{1,2}[/.-]\d{1,2}[/.-](?:\d{4}|\d{2})"  # 01/02/1960, 1-2-60
    r"|\d{4}[/.-]\d{1,2}[/.-]\d{1,2}"  # 1960-01-02
    r"|(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+\d{1,2}(?:st|nd|rd|th)?,?\s+\d{4}"  # Jan 2, 1960
    r"|\d{1,2}(?:st|nd|rd|th)?\s+(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?,?\s+\d{4})"  # 2 Jan 1960
    r"(?!\d)"
)
# A label may be followed by up to 6 separators (": ", "#", '": "' in JSON) before the value.
_AFTER_LABEL = r"(?![a-z])[^\w\n]{0,6}"

# All identifier patterns live here. A bare date is not flagged (release and training dates are normal in a card):
# only a date labelled as a birth date is. Bare 6-10 digit runs are, unless they are part of a decimal number, a
# version, a hash or a longer run.
IDENTIFIER_RULES: tuple[_Rule, ...] = (
    _Rule(
        "MRN",
        re.compile(
            r"\b(?:mrn|mr\s*#|mr\s*no\.?|medical\s+record(?:\s+(?:number|no\.?|#))?|patient\s+(?:id|number|no\.?|#))"
            + _AFTER_LABEL
            + r"[a-z]{0,3}\d{4,12}(?!\d)",
            re.IGNORECASE,
        ),
    ),
    _Rule("MRN", re.compile(r"(?<![\w.])\d{6,10}(?!\w|\.\d)"), matches_json_numbers=False),
    _Rule(
        "phone number",
        # North American numbers (area code and exchange start with 2-9), with separators: 212-555-0199, (212) 555 0199.
        re.compile(r"(?<![\w.+-])(?:\+?1[\s.-]?)?(?:\([2-9]\d\d\)\s?|[2-9]\d\d[\s.-])[2-9]\d\d[\s.-]\d{4}(?!\w|\.\d)"),
    ),
    _Rule(
        "date of birth",
        re.compile(
            r"\b(?:dob|d\.o\.b\.?|date\s+of\s+birth|birth\s*date|born(?:\s+on)?)" + _AFTER_LABEL + _DATE, re.IGNORECASE
        ),
    ),
    _Rule(TOKEN_KIND, re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")),
)
_JSON_STRING_OR_NUMBER = re.compile(r'("(?:[^"\\]|\\.)*")|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?')
_JSON_SUFFIXES = (".json", ".jsonl")


@dataclass(frozen=True)
class Finding:
    """Where a possible identifier is: the file (relative to the pushed folder), the 1-based line and what it looks
    like. The matched text is deliberately not kept, so reporting a finding cannot leak it."""

    file: str
    line: int
    kind: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.kind}"


class IdentifiersFoundError(ValueError):
    """The folder holds text that looks like patient identifiers (or a token): nothing was uploaded."""

    def __init__(self, folder: Path, findings: Sequence[Finding], max_listed: int = 20):
        self.findings = list(findings)
        listed = "\n".join(f"  {finding}" for finding in self.findings[:max_listed])
        more = f"\n  ... and {len(self.findings) - max_listed} more" if len(self.findings) > max_listed else ""
        super().__init__(
            f"Refusing to push {folder}: {len(self.findings)} finding(s) of possible patient identifiers or secrets "
            f"(the matched text is not shown):\n{listed}{more}\nNothing was uploaded. If you have checked that the "
            "identifiers are not patient data, push again with --hub_allow_phi (an access token is never pushed)."
        )


class HubPushError(RuntimeError):
    """The Hub could not be reached or refused the push; the local folder was not touched."""


class Secret:
    """An access token that prints as *** so `logger.info(args)` or a saved copy of the arguments cannot leak it.
    Not a `str` subclass on purpose: `json.dump(vars(args))` fails loudly instead of writing the token."""

    __slots__ = ("value",)

    def __init__(self, value: str):
        self.value = value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"


def files_to_upload(folder: str | Path, ignore_patterns: Sequence[str] = ()) -> list[Path]:
    """The files `HfApi.upload_folder` would send, selected the same way, so the scan sees exactly what is pushed."""
    folder = Path(folder)
    relative = [path.relative_to(folder).as_posix() for path in sorted(folder.glob("**/*")) if path.is_file()]
    kept = filter_repo_objects(relative, ignore_patterns=[*ignore_patterns, *DEFAULT_IGNORE_PATTERNS])
    return [folder / name for name in kept]


def _is_text(path: Path) -> bool:
    """Weights, optimizer states and other binaries (safetensors headers included) have NUL bytes early on."""
    with path.open("rb") as file:
        return b"\0" not in file.read(8192)


def _mask_json_numbers(line: str) -> str:
    return _JSON_STRING_OR_NUMBER.sub(lambda match: match.group(1) or "0", line)


def _scan_lines(lines: Iterable[str], is_json: bool, rules: Sequence[_Rule]) -> Iterable[tuple[int, str]]:
    for number, line in enumerate(lines, start=1):
        masked = _mask_json_numbers(line) if is_json else line
        kinds = {rule.kind for rule in rules if rule.pattern.search(line if rule.matches_json_numbers else masked)}
        yield from ((number, kind) for kind in sorted(kinds))


def scan_for_identifiers(
    folder: str | Path, ignore_patterns: Sequence[str] = (), secrets: Sequence[str] = ()
) -> list[Finding]:
    """Every line of the text files about to be uploaded that looks like an MRN, a phone number, a date of birth, a
    Hugging Face token or one of `secrets` (the token in use). Binary files are skipped."""
    rules = (*IDENTIFIER_RULES, *(_Rule(TOKEN_KIND, re.compile(re.escape(secret))) for secret in secrets if secret))
    findings = []
    for path in files_to_upload(folder, ignore_patterns):
        if not _is_text(path):
            continue
        # errors="replace": a Latin-1 note is still text and still scanned, not skipped.
        with path.open(encoding="utf-8", errors="replace") as file:
            hits = _scan_lines(file, path.suffix in _JSON_SUFFIXES, rules)
            findings.extend(Finding(path.relative_to(folder).as_posix(), line, kind) for line, kind in hits)
    return findings


def push_folder(
    folder: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool = True,
    commit_message: str = "Upload BERT-XML model",
    allow_phi: bool = False,
    ignore_patterns: Sequence[str] = (),
) -> str:
    """Upload `folder` to the model repo `repo_id` ("org/name", or "name" under the token's account) and return its URL.

    The repo is created private unless `private=False`; an existing public repo is made private first. Refuses with
    `IdentifiersFoundError` when the files look like they hold patient identifiers (unless `allow_phi`) or the token.
    The token is `token`, else the standard login (HF_TOKEN or `hf auth login`); it is never logged.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"Cannot push {folder}: it is not a folder")
    secret = token or get_token()
    findings = scan_for_identifiers(folder, ignore_patterns, secrets=[secret] if secret else [])
    blocking = [finding for finding in findings if not allow_phi or finding.kind == TOKEN_KIND]
    if blocking:
        raise IdentifiersFoundError(folder, blocking)
    if findings:
        logger.warning("Pushing %s despite %d possible identifier(s) (--hub_allow_phi):", folder, len(findings))
        for finding in findings:
            logger.warning("  %s", finding)

    api = HfApi(token=token)
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        # create_repo leaves an existing repo as it is, whatever `private` says.
        if private and not api.model_info(repo_url.repo_id).private:
            logger.warning("%s already exists and is public: making it private before uploading", repo_url.repo_id)
            api.update_repo_settings(repo_url.repo_id, private=True)
        api.upload_folder(
            folder_path=folder,
            repo_id=repo_url.repo_id,
            commit_message=commit_message,
            ignore_patterns=list(ignore_patterns),
        )
    except (httpx2.HTTPError, OfflineModeIsEnabled) as err:
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no details'}"
        if secret:
            reason = reason.replace(secret, "***")
        # `from None`: the chained HTTP error would print request details that this message deliberately leaves out.
        raise HubPushError(
            f"Could not push to {api.endpoint}/{repo_id} ({reason}).\n"
            f"Nothing local was changed: the model folder is intact at {folder.resolve()}.\n"
            f"Fix the cause, then push it with: python -m modeling_bertxml.hub {folder} --hub_model_id {repo_id}"
            + ("" if private else " --hub_public")
            + (" --hub_allow_phi" if allow_phi else "")
        ) from None
    logger.info("Pushed %s to %s (%s)", folder, repo_url, "private" if private else "public")
    return str(repo_url)


def add_hub_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Hugging Face Hub")
    group.add_argument("--push_to_hub", action="store_true", help="Push the model folder to the Hub when done.")
    group.add_argument(
        "--hub_model_id", help="Repo to push to, 'org/name' (default: the folder's name under your account)."
    )
    group.add_argument(
        "--hub_token", type=Secret, help="Hub access token (default: HF_TOKEN or `hf auth login`); never printed."
    )
    group.add_argument(
        "--hub_public",
        action="store_true",
        help="Create a new repo public. Default: private, and an existing public repo is made private first.",
    )
    group.add_argument(
        "--hub_allow_phi",
        action="store_true",
        help="Push even if files look like they hold MRNs, phone numbers or dates of birth; only after checking.",
    )


def push_from_args(args: argparse.Namespace, folder: str | Path, ignore_patterns: Sequence[str] = ()) -> str | None:
    """The push `train.py` does at the end (on the main process only): nothing unless --push_to_hub."""
    if not args.push_to_hub:
        return None
    return push_folder(
        folder,
        args.hub_model_id or Path(folder).resolve().name,
        token=args.hub_token.value if args.hub_token else None,
        private=not args.hub_public,
        allow_phi=args.hub_allow_phi,
        ignore_patterns=ignore_patterns,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Push a saved model folder to the Hub (private, scanned for PHI).")
    parser.add_argument("folder", type=Path, help="A folder written by save_pretrained (e.g. train.py's output_dir).")
    add_hub_args(parser)
    parser.set_defaults(push_to_hub=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        print(push_from_args(args, args.folder))
    except (IdentifiersFoundError, HubPushError) as err:
        raise SystemExit(f"error: {err}") from None  # an expected outcome: the message, without a traceback


if __name__ == "__main__":
    main()
