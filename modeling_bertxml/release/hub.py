"""Push a trained model folder to the Hugging Face Hub: private by default, and never with patient identifiers.

A model trained on clinical notes can leak them through what travels with the weights: a model card with an example
note, a tokenizer vocabulary that memorised an MRN, a results file, a checkpoint's optimizer state. `push_folder`
therefore uploads only what a model repo holds (`MODEL_REPO_FILES`; of a run's output dir, only the model the run
saved there), scans every one of those files (decoded from UTF-8, UTF-16 or UTF-32; a safetensors file's header) for
strings that look like MRNs, phone numbers or dates of birth (and for the access token itself), refuses when it finds
any (an override exists for checked false positives; the token, and a file that cannot be read as text, never pass),
creates or re-privatises the repo, then uploads. A network failure becomes one `HubPushError` saying the local folder
is intact.

`train.py` calls `add_hub_args(parser)` and `push_from_args(args, folder)`; `bert-xml-push FOLDER --hub_model_id
org/name` (`python -m modeling_bertxml.release.hub`) pushes (or re-pushes) an existing folder the same way.
"""

import argparse
import codecs
import fnmatch
import logging
import re
import shlex
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx2
from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

from ..model.pipeline_bertxml import ONNX_DIR, ONNX_FILES
from ..training.checkpointing import Manifest, is_run_dir

logger = logging.getLogger(__name__)

TOKEN_KIND = "access token"
DEFAULT_COMMIT_MESSAGE = "Upload BERT-XML model"


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
            "identifiers are not patient data, push again with --hub_allow_phi (an access token, or a file that cannot "
            "be scanned, is never pushed)."
        )


class HubPushError(RuntimeError):
    """The Hub could not be reached or refused the push; the local folder was not touched."""


class PushRefusedError(HubPushError):
    """Why a push to `url` cannot succeed (`check_push_access`), found before anything was uploaded."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"cannot push to {url}: {reason}")
        self.reason = reason


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


# What a model repo holds, and nothing else: weights, configs, the tokenizer, the remote code, Endpoint handler and
# Space app, the card, its figures and the results. Only files directly in the folder: train.py's checkpoints/
# (optimizer and RNG state), logs/ (TensorBoard events, hparams) and run_args.json stay local, whichever command pushes.
MODEL_REPO_FILES = (
    "*.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json", "adapter_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
    "tokenizer_report.json", "*.py", "README.md", "eval_results.json", "test_results.json", "train_results.json",
    "requirements.txt", "*.png",  # what the remote code (and the Space-ready app) needs; the model card's figures
)
UNSCANNABLE_KIND = "binary file that cannot be scanned"
_ALWAYS_BLOCKING = (TOKEN_KIND, UNSCANNABLE_KIND)  # --hub_allow_phi cannot vouch for what nobody could read
# Byte-order marks, UTF-32 before UTF-16 (the UTF-32 LE mark starts with the UTF-16 LE one).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)
# Without a mark, mostly-ASCII text in a wide encoding has NUL bytes at fixed positions: (encoding, width, positions).
_NUL_PATTERNS = (
    ("utf-32-le", 4, (1, 2, 3)), ("utf-32-be", 4, (0, 1, 2)), ("utf-16-le", 2, (1,)), ("utf-16-be", 2, (0,)),
)
_MAX_SAFETENSORS_HEADER = 100_000_000  # as the safetensors library itself limits it
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def files_to_upload(folder: str | Path) -> tuple[list[Path], list[str]]:
    """(the files of `folder` a model repo holds, sorted; the names left local) by `MODEL_REPO_FILES`, and the ONNX
    Runtime backends' export (`onnx/model.onnx`, `onnx/model_int8.onnx`: an Endpoint serves from it). In a run's
    output dir (a manifest, or an older run's run_args.json), only what bert-xml wrote there: its user's files stay
    local whatever their names (an analysis.py, a figure of theirs, an onnx/ folder of their own)."""
    folder = Path(folder)
    manifest = Manifest.read(folder) if is_run_dir(folder) else None
    owned, saved = (manifest.owned(), set(manifest.model)) if manifest else (None, None)
    kept, left = [], []
    for path in sorted(folder.iterdir()):
        repo_file = any(fnmatch.fnmatch(path.name, pattern) for pattern in MODEL_REPO_FILES)
        if path.is_file() and not path.is_symlink() and repo_file and (saved is None or path.name in saved):
            kept.append(path)
        elif path.name == ONNX_DIR and _is_real_dir(path) and (owned is None or ONNX_DIR in owned):
            exported = [path / name for name in sorted(ONNX_FILES.values())]
            kept.extend(file for file in exported if file.is_file() and not file.is_symlink())
            left.extend(f"{ONNX_DIR}/{other.name}" for other in sorted(path.iterdir()) if other not in exported)
        else:
            left.append(path.name + ("/" if path.is_dir() else ""))
    return kept, left


def _is_real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _text_encoding(head: bytes) -> str | None:
    """The encoding of a file starting with `head`: from its byte-order mark, else its NUL bytes (None: not text)."""
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return encoding
    if b"\0" not in head:
        return "utf-8"
    for encoding, width, positions in _NUL_PATTERNS:
        sample = head[: len(head) // width * width]
        columns = [sample[i::width] for i in range(width)]
        nul_share = [column.count(0) / max(len(column), 1) for column in columns]
        if all(nul_share[i] > 0.9 if i in positions else nul_share[i] < 0.1 for i in range(width)):
            return encoding
    return None


def _png_text(data: bytes) -> str | None:
    """The text chunks of a PNG (tEXt, zTXt, iTXt: free-form metadata), one per line; None when it is not a valid PNG.

    Pixels are not read: train.py's figures draw only numbers and fixed labels (tests/test_plots.py checks it).
    """
    if not data.startswith(_PNG_SIGNATURE):
        return None
    texts, position = [], len(_PNG_SIGNATURE)
    try:
        while position < len(data):
            length = int.from_bytes(data[position : position + 4], "big")
            kind, body = data[position + 4 : position + 8], data[position + 8 : position + 8 + length]
            if len(body) != length:
                return None
            key, _, value = body.partition(b"\0")
            if kind == b"tEXt":
                texts.append(key + b" " + value)
            elif kind == b"zTXt":
                texts.append(key + b" " + zlib.decompress(value[1:]))
            elif kind == b"iTXt":
                compressed, value = value[0], value[2:].split(b"\0", 2)[-1]  # skip language and translated keyword
                texts.append(key + b" " + (zlib.decompress(value) if compressed else value))
            position += 12 + length
    except (zlib.error, IndexError):
        return None
    return "\n".join(text.decode("utf-8", errors="replace") for text in texts)


def _onnx_text(path: Path) -> str | None:
    """Every string of an ONNX model (names, doc strings, metadata, string attributes and tensors), one per line; its
    numeric tensors (`raw_data`, the weights) are numbers and not read. None without the `onnx` package
    (bert-xml[serve]) or for a file it cannot parse."""
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:
        return None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError):
        return None
    return "\n".join(_protobuf_strings(model))


def _protobuf_strings(message) -> Iterable[str]:
    for field, value in message.ListFields():
        values = value if field.is_repeated else [value]
        if field.type == field.TYPE_MESSAGE:
            for item in values:
                yield from _protobuf_strings(item)
        elif field.type == field.TYPE_STRING:
            yield from values
        elif field.type == field.TYPE_BYTES and field.name != "raw_data":
            yield from (item.decode("utf-8", errors="replace") for item in values)


def _scannable_text(path: Path) -> str | None:
    """What the scan reads of a file: its text in whatever Unicode encoding, a safetensors file's JSON header (which
    may hold free-form metadata), a PNG's text chunks, an ONNX model's strings, or None when it cannot be read as
    text."""
    if path.suffix == ".onnx":
        return _onnx_text(path)
    data = path.read_bytes()
    if path.suffix == ".png":
        return _png_text(data)
    if path.suffix == ".safetensors":
        size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
        if not 0 <= size <= min(_MAX_SAFETENSORS_HEADER, len(data) - 8):
            return None
        data = data[8 : 8 + size]
    encoding = _text_encoding(data[:8192])
    if encoding is None:
        return None
    # errors="replace": a Latin-1 note is still text and still scanned.
    text = data.decode(encoding, errors="replace")
    return None if "\0" in text else text


def _mask_json_numbers(line: str) -> str:
    return _JSON_STRING_OR_NUMBER.sub(lambda match: match.group(1) or "0", line)


def _scan_lines(lines: Iterable[str], is_json: bool, rules: Sequence[_Rule]) -> Iterable[tuple[int, str]]:
    for number, line in enumerate(lines, start=1):
        masked = _mask_json_numbers(line) if is_json else line
        kinds = {rule.kind for rule in rules if rule.pattern.search(line if rule.matches_json_numbers else masked)}
        yield from ((number, kind) for kind in sorted(kinds))


def scan_for_identifiers(folder: str | Path, secrets: Sequence[str] = ()) -> list[Finding]:
    """Every line of the files about to be uploaded that looks like an MRN, a phone number, a date of birth, a
    Hugging Face token or one of `secrets` (the token in use); a file that cannot be read as text is a finding too."""
    rules = (*IDENTIFIER_RULES, *(_Rule(TOKEN_KIND, re.compile(re.escape(secret))) for secret in secrets if secret))
    findings = []
    for path in files_to_upload(folder)[0]:
        name = path.relative_to(folder).as_posix()
        text = _scannable_text(path)
        if text is None:
            findings.append(Finding(name, 1, UNSCANNABLE_KIND))
            continue
        is_json = path.suffix in _JSON_SUFFIXES or path.suffix == ".safetensors"
        findings.extend(Finding(name, line, kind) for line, kind in _scan_lines(text.split("\n"), is_json, rules))
    return findings


def check_push_access(repo_id: str, token: str | None = None) -> str:
    """The full id of `repo_id` ("org/name", or "name" under the token's account) when a push there can succeed, else
    `PushRefusedError` saying why: offline mode, no token, the Hub unreachable or refusing the token, a read-only
    token, a token that may not write the repo (or, for a repo not made yet, create one in its namespace). Asks the Hub
    (whoami, auth-check), nothing else: call it on one process, before hours of training rather than after them."""
    endpoint = constants.ENDPOINT

    def refuse(reason: str) -> PushRefusedError:
        return PushRefusedError(f"{endpoint}/{repo_id}", reason.replace(token, "***") if token else reason)

    if constants.HF_HUB_OFFLINE:
        raise refuse("offline mode is on (HF_HUB_OFFLINE=1)")
    token = token or get_token()
    if not token:
        raise refuse("no Hub token: pass --hub_token, set HF_TOKEN or run `hf auth login`")
    api = HfApi(token=token)
    try:
        me = api.whoami()
        access = (me.get("auth") or {}).get("accessToken") or {}
        if access.get("role") == "read":
            raise refuse("the token is read-only (role read); use one that may write")
        full_id = repo_id if "/" in repo_id else f"{me['name']}/{repo_id}"
        try:
            api.auth_check(full_id, write=True)
            return full_id
        except RepositoryNotFoundError:  # not made yet (or not visible to the token): the push would create it
            pass
    except HfHubHTTPError as error:  # 401 from whoami, 403 from the write check of an existing repo
        status = error.response.status_code
        reason = "the Hub refused the token" if status == 401 else "the token may not write to it"
        raise refuse(f"{reason} ({status}: {str(error).splitlines()[0]})") from None
    except httpx2.HTTPError as error:
        raise refuse(f"{endpoint} cannot be reached ({type(error).__name__}: {error})") from None
    namespace = full_id.split("/")[0]
    if not _may_create_in(me, access, namespace):
        raise refuse(f"{full_id} does not exist and {me['name']} may not create repos in {namespace}")
    return full_id


def _may_create_in(me: dict, access: dict, namespace: str) -> bool:
    """Whether whoami's account and token (`access`) may create a repo in `namespace`: its own, or an org where it
    writes; a fine-grained token only where it was granted `repo.write`."""
    if access.get("role") == "fineGrained":
        scoped = (access.get("fineGrained") or {}).get("scoped") or []
        granted = {scope["entity"]["name"] for scope in scoped if "repo.write" in scope.get("permissions", [])}
        if namespace not in granted:
            return False
    roles = {org["name"]: org.get("roleInOrg") for org in me.get("orgs") or []}
    return namespace == me["name"] or (namespace in roles and roles[namespace] != "read")


def push_folder(
    folder: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool = True,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    allow_phi: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
) -> str:
    """Upload `folder` to the model repo `repo_id` ("org/name", or "name" under the token's account) and return its URL
    (the pull request's with `create_pr`).

    One commit of `commit_message` on the branch `revision` (default main; created from main when missing), or with
    `create_pr` a pull request against it, so that a model under review does not replace the published one.
    The repo is created private unless `private=False`; an existing public repo is made private first. Refuses with
    `IdentifiersFoundError` when the files look like they hold patient identifiers (unless `allow_phi`) or the token.
    The token is `token`, else the standard login (HF_TOKEN or `hf auth login`); it is never logged.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"Cannot push {folder}: it is not a folder")
    secret = token or get_token()
    files, left_local = files_to_upload(folder)
    if left_local:
        logger.info("Not pushed (not part of a model repo): %s", ", ".join(left_local))
    findings = scan_for_identifiers(folder, secrets=[secret] if secret else [])
    blocking = [finding for finding in findings if not allow_phi or finding.kind in _ALWAYS_BLOCKING]
    if blocking:
        raise IdentifiersFoundError(folder, blocking)
    if findings:
        logger.warning("Pushing %s despite %d possible identifier(s) (--hub_allow_phi):", folder, len(findings))
        for finding in findings:
            logger.warning("  %s", finding)

    api = HfApi(token=token)
    try:
        check_push_access(repo_id, secret)
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        # create_repo leaves an existing repo as it is, whatever `private` says.
        if private and not api.model_info(repo_url.repo_id).private:
            logger.warning("%s already exists and is public: making it private before uploading", repo_url.repo_id)
            api.update_repo_settings(repo_url.repo_id, private=True)
        # The exact files that were scanned: no pattern matching on the way to the Hub.
        operations = [CommitOperationAdd(path.relative_to(folder).as_posix(), path) for path in files]
        if revision not in (None, "main"):
            api.create_branch(repo_url.repo_id, branch=revision, exist_ok=True)
        commit = api.create_commit(
            repo_url.repo_id, operations, commit_message=commit_message, revision=revision, create_pr=create_pr
        )
    except (httpx2.HTTPError, OfflineModeIsEnabled, PushRefusedError) as err:
        if isinstance(err, PushRefusedError):
            reason = err.reason
        else:
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no details'}"
        if secret:
            reason = reason.replace(secret, "***")
        # `from None`: the chained HTTP error would print request details that this message deliberately leaves out.
        raise HubPushError(
            f"Could not push to {api.endpoint}/{repo_id} ({reason}).\n"
            f"Nothing local was changed: the model folder is intact at {folder.resolve()}.\n"
            "Fix the cause, then push it with: "
            f"python -m modeling_bertxml.release.hub {folder} --hub_model_id {repo_id}"
            + ("" if private else " --hub_public")
            + (" --hub_allow_phi" if allow_phi else "")
            + (f" --hub_revision {revision}" if revision else "")
            + (" --create_pr" if create_pr else "")
            + (f" --commit_message {shlex.quote(commit_message)}" if commit_message != DEFAULT_COMMIT_MESSAGE else "")
        ) from None
    where = f"pull request {commit.pr_url}" if commit.pr_url else f"{repo_url}, branch {revision or 'main'}"
    logger.info("Pushed %s to %s (%s)", folder, where, "private" if private else "public")
    return commit.pr_url or str(repo_url)


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
    group.add_argument("--hub_revision", help="Branch to push to (created from main if missing; default: main).")
    group.add_argument(
        "--create_pr", action="store_true", help="Open a pull request (against --hub_revision) instead of committing."
    )
    group.add_argument("--commit_message", default=DEFAULT_COMMIT_MESSAGE, help="Message of the Hub commit.")


def _repo_and_token(args: argparse.Namespace, folder: str | Path) -> tuple[str, str | None]:
    """The repo --push_to_hub pushes `folder` to (--hub_model_id, else the folder's name) and --hub_token's value."""
    return args.hub_model_id or Path(folder).resolve().name, args.hub_token.value if args.hub_token else None


def check_push_from_args(args: argparse.Namespace, folder: str | Path) -> None:
    """What `train.py` and `pretrain.py` check before their first step (on the main process only): that the push
    `push_from_args` will make at the end can succeed (`check_push_access`); nothing unless --push_to_hub."""
    if not args.push_to_hub:
        return
    try:
        check_push_access(*_repo_and_token(args, folder))
    except HubPushError as error:
        raise HubPushError(f"--push_to_hub: {error}; checked before training, so nothing was trained") from None


def push_from_args(args: argparse.Namespace, folder: str | Path) -> str | None:
    """The push `train.py` does at the end (on the main process only): nothing unless --push_to_hub."""
    if not args.push_to_hub:
        return None
    repo_id, token = _repo_and_token(args, folder)
    return push_folder(
        folder,
        repo_id,
        token=token,
        private=not args.hub_public,
        allow_phi=args.hub_allow_phi,
        revision=args.hub_revision,
        create_pr=args.create_pr,
        commit_message=args.commit_message,
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
