"""A loopback Hugging Face Hub for push tests: the real `huggingface_hub` client talks to it over HTTP.

No pip-installable local Hub accepts uploads, so this implements just what `create_repo`, `update_repo_settings`,
`model_info`, `upload_folder` (xet disabled, every file answered "regular" at preupload, so it arrives base64 in the
NDJSON commit), `create_branch`, commits to a branch or as a new pull request (`create_pr`), and `hf_hub_download` /
`from_pretrained` (at a branch, `refs/pr/N` or a head commit) use, and `whoami` / `auth_check(write=True)`, which a push
asks before training. Private repos behave as on the Hub: without the right bearer token they answer 404 `RepoNotFound`,
so a test can check that privacy is enforced, not just recorded. `hub.token` may write to the user's namespace and to
the orgs of `WRITABLE_ORGS`; `hub.read_token` only reads.

Use the `loopback_hub` fixture: it starts the server on a free 127.0.0.1 port and points the process (environment
and the `huggingface_hub.constants` read at import time) at it, with a temporary HF_HOME and no stored login.
"""

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from huggingface_hub import constants

from tests.conftest import free_port

USER = "loopback-user"
WRITABLE_ORGS = ("hospital",)  # orgs the user may create repos in (role "write"); every other namespace is not theirs
EMPTY_TREE_SHA = "0" * 40
REPO = r"(?P<repo>[^/]+/[^/]+)"


def git_blob_sha1(content: bytes) -> str:
    """The oid the Hub reports for a regular file (the client compares it to skip unchanged files)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Ref:
    """A branch or a pull request: its commits (oids, with their messages) and the files at its head."""

    commits: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def head(self) -> str:
        return self.commits[-1] if self.commits else EMPTY_TREE_SHA

    def copy(self) -> "Ref":
        return Ref(list(self.commits), list(self.messages), dict(self.files))


@dataclass
class Repo:
    """A model repo: branches by name ("main" always) and pull requests (`refs/pr/N` is `pull_requests[N - 1]`)."""

    private: bool
    branches: dict[str, Ref] = field(default_factory=lambda: {"main": Ref()})
    pull_requests: list[Ref] = field(default_factory=list)

    @property
    def files(self) -> dict[str, bytes]:
        return self.branches["main"].files

    @property
    def commits(self) -> list[str]:
        return self.branches["main"].commits

    @property
    def head(self) -> str:
        return self.branches["main"].head

    def ref(self, revision: str) -> Ref:
        """The branch, pull request (`refs/pr/N`) or commit named by `revision`, as the Hub resolves it."""
        if revision in self.branches:
            return self.branches[revision]
        if (match := re.fullmatch(r"refs/pr/(\d+)", revision)) and 0 < int(match[1]) <= len(self.pull_requests):
            return self.pull_requests[int(match[1]) - 1]
        for ref in [*self.branches.values(), *self.pull_requests]:
            if revision == ref.head:  # only the heads' files are kept, so older commits do not resolve
                return ref
        raise HubError(404, f"Revision {revision} not found", "RevisionNotFound", repo=self)


class HubError(Exception):
    """An HTTP error answered the way the Hub does, with the X-Error-Code the client maps to its exceptions."""

    def __init__(
        self, status: int, message: str, code: str | None = None, repo: Repo | None = None, **extra: object
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.repo, self.extra = status, message, code, repo, extra


class LoopbackHub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, token: str):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.token, self.read_token = token, token.replace("FAKE", "READ")
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"
        self.repos: dict[str, Repo] = {}
        self.requests: list[str] = []
        self.lock = threading.Lock()

    def authorized(self, header: str | None, write: bool = False) -> bool:
        if header is None:
            return False
        if header == f"Bearer {self.read_token}" and not write:
            return True
        if header == f"Bearer {self.read_token}":
            raise HubError(403, "You don't have the rights to write with a read token")
        if header != f"Bearer {self.token}":
            raise HubError(401, "Invalid credentials in Authorization header")
        return True

    def repo(self, repo_id: str, header: str | None) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not self.authorized(header)):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def writable_repo(self, repo_id: str, header: str | None) -> Repo:
        if not self.authorized(header, write=True):
            raise HubError(401, "You must be authenticated to write", "RepoNotFound")
        return self.repo(repo_id, header)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every answer carries Content-Length
    server: LoopbackHub

    def log_message(self, format: str, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        self._dispatch(_GET_ROUTES)

    def do_HEAD(self) -> None:
        self._dispatch(_GET_ROUTES)

    def do_POST(self) -> None:
        self._dispatch(_POST_ROUTES)

    def do_PUT(self) -> None:
        self._dispatch(_PUT_ROUTES)

    def _dispatch(self, routes: list[tuple[re.Pattern, str]]) -> None:
        path, query = urlsplit(self.path).path, urlsplit(self.path).query
        self.query = parse_qs(query)
        self.server.requests.append(f"{self.command} {path}")
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            for pattern, method in routes:
                if match := pattern.fullmatch(path):
                    with self.server.lock:
                        groups = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                        getattr(self, method)(body, **groups)
                    return
            raise HubError(404, f"Loopback Hub does not implement {self.command} {path}")
        except HubError as err:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            if err.repo is not None:
                headers["X-Repo-Commit"] = err.repo.head
            self._send(err.status, json.dumps({"error": err.message, **err.extra}).encode(), headers)

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload: object) -> None:
        self._send(200, json.dumps(payload).encode())

    @property
    def _auth(self) -> str | None:
        return self.headers.get("Authorization")

    # -- API ---------------------------------------------------------------------------------------------------

    def whoami(self, body: bytes) -> None:
        if not self.server.authorized(self._auth):
            raise HubError(401, "Invalid user token.")
        role = "read" if self._auth == f"Bearer {self.server.read_token}" else "write"
        orgs = [{"type": "org", "name": org, "roleInOrg": "write"} for org in WRITABLE_ORGS]
        self._json({"type": "user", "name": USER, "orgs": orgs,
                    "auth": {"type": "access_token", "accessToken": {"displayName": "loopback", "role": role}}})

    def auth_check(self, body: bytes, repo: str, write: str = "") -> None:
        if write:
            self.server.writable_repo(repo, self._auth)
        else:
            self.server.repo(repo, self._auth)
        self._json({})

    def create_repo(self, body: bytes) -> None:
        request = json.loads(body)
        if not self.server.authorized(self._auth, write=True):
            raise HubError(401, "You must be authenticated to create a repo")
        if request.get("type", "model") != "model":
            raise HubError(400, "Loopback Hub only hosts model repos")
        namespace = request.get("organization") or USER
        if namespace not in (USER, *WRITABLE_ORGS):
            raise HubError(403, f"You don't have the rights to create a model under the namespace {namespace}")
        repo_id = f"{namespace}/{request['name']}"
        url = f"{self.server.endpoint}/{repo_id}"
        if repo_id in self.server.repos:
            raise HubError(409, "You already created this model repo", url=url)  # the client reads `url` even here
        # Like the Hub: no visibility in the request means public.
        self.server.repos[repo_id] = Repo(private=request.get("visibility") == "private")
        self._json({"url": url, "name": repo_id})

    def update_settings(self, body: bytes, repo: str) -> None:
        settings = json.loads(body)
        if "visibility" in settings:
            self.server.writable_repo(repo, self._auth).private = settings["visibility"] == "private"
        self._json({})

    def repo_info(self, body: bytes, repo: str, revision: str = "main") -> None:
        info = self.server.repo(repo, self._auth)
        ref = info.ref(revision)
        siblings = [{"rfilename": name} for name in sorted(ref.files)]
        self._json({"id": repo, "private": info.private, "sha": ref.head, "siblings": siblings})

    def validate_yaml(self, body: bytes) -> None:
        self._json({"errors": [], "warnings": []})

    def preupload(self, body: bytes, repo: str, revision: str) -> None:
        ref = self.server.writable_repo(repo, self._auth).ref(revision)
        answers = []
        for file in json.loads(body)["files"]:
            existing = ref.files.get(file["path"])
            oid = git_blob_sha1(existing) if existing is not None else None
            answers.append({"path": file["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
        self._json({"files": answers})

    def create_branch(self, body: bytes, repo: str, branch: str) -> None:
        info = self.server.writable_repo(repo, self._auth)
        if branch in info.branches:
            raise HubError(409, f"Branch {branch} already exists")
        start = (json.loads(body) if body else {}).get("startingPoint") or "main"
        info.branches[branch] = info.ref(start).copy()
        self._json({})

    def commit(self, body: bytes, repo: str, revision: str) -> None:
        """A commit on `revision` (a branch that must exist), or with ?create_pr=1 a new pull request from it."""
        info = self.server.writable_repo(repo, self._auth)
        if revision not in info.branches and not revision.startswith("refs/pr/"):
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound", repo=info)
        ref = info.ref(revision)
        pull_request = self.query.get("create_pr") == ["1"]
        if pull_request:
            ref = ref.copy()
            info.pull_requests.append(ref)
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            raise HubError(400, "Commit payload must start with a header line")
        for line in lines[1:]:
            value = line["value"]
            if line["key"] != "file" or value.get("encoding") != "base64":
                raise HubError(400, f"Loopback Hub accepts base64 regular files only, got {line['key']}")
            ref.files[value["path"]] = base64.b64decode(value["content"])
        state = json.dumps([ref.head, lines[0]["value"], sorted(map(git_blob_sha1, ref.files.values()))])
        ref.commits.append(hashlib.sha1(state.encode()).hexdigest())
        ref.messages.append(lines[0]["value"]["summary"])
        url = f"{self.server.endpoint}/{repo}/commit/{ref.head}"
        pr_url = f"{self.server.endpoint}/{repo}/discussions/{len(info.pull_requests)}" if pull_request else None
        self._json({"commitUrl": url, "commitOid": ref.head, "pullRequestUrl": pr_url})

    def resolve(self, body: bytes, repo: str, revision: str, filename: str) -> None:
        info = self.server.repo(repo, self._auth)
        ref = info.ref(revision)
        if filename not in ref.files:
            raise HubError(404, f"Entry {filename} not found", "EntryNotFound", repo=info)
        content = ref.files[filename]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(content)))
        self.send_header("ETag", f'"{git_blob_sha1(content)}"')
        self.send_header("X-Repo-Commit", ref.head)
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(content)


def _routes(*pairs: tuple[str, str]) -> list[tuple[re.Pattern, str]]:
    return [(re.compile(pattern), method) for pattern, method in pairs]


_GET_ROUTES = _routes(
    (r"/api/whoami-v2", "whoami"),
    (rf"/api/models/{REPO}/auth-check(?P<write>/write)?", "auth_check"),
    (rf"/api/models/{REPO}", "repo_info"),
    (rf"/api/models/{REPO}/revision/(?P<revision>[^/]+)", "repo_info"),
    (rf"/{REPO}/resolve/(?P<revision>[^/]+)/(?P<filename>.+)", "resolve"),
)
_POST_ROUTES = _routes(
    (r"/api/repos/create", "create_repo"),
    (r"/api/validate-yaml", "validate_yaml"),
    (rf"/api/models/{REPO}/preupload/(?P<revision>[^/]+)", "preupload"),
    (rf"/api/models/{REPO}/commit/(?P<revision>[^/]+)", "commit"),
    (rf"/api/models/{REPO}/branch/(?P<branch>[^/]+)", "create_branch"),
)
_PUT_ROUTES = _routes((rf"/api/models/{REPO}/settings", "update_settings"))


def closed_port_endpoint() -> str:
    """An endpoint on a port nothing listens on: what a push sees on a machine without network."""
    return f"http://127.0.0.1:{free_port()}"


def point_hub_client_at(monkeypatch: pytest.MonkeyPatch, endpoint: str, hf_home: Path) -> None:
    """Aim `huggingface_hub` (already imported, so its constants too) and child processes at `endpoint`."""
    env = {"HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0", "HF_HOME": str(hf_home)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    patched = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_OFFLINE": False,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_TOKEN_PATH": str(hf_home / "token"),  # no stored login: only explicit tokens authenticate
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
    }
    for name, value in patched.items():
        monkeypatch.setattr(constants, name, value)


@pytest.fixture
def loopback_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A running `LoopbackHub` (token `hub.token`) that this process and its children use as the Hub."""
    hub = LoopbackHub(token="hf_loopbackFAKEtoken0123456789abcdefghij")
    thread = threading.Thread(target=hub.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    point_hub_client_at(monkeypatch, hub.endpoint, tmp_path / "hf_home")
    yield hub
    hub.shutdown()
    hub.server_close()
    thread.join()
