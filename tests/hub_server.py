"""In-process fake Hugging Face Hub for tests: standard library only (http.server + threading).

`HubServer` runs a `ThreadingHTTPServer` on 127.0.0.1 (free port) that speaks the part of the Hub HTTP protocol
used by huggingface_hub 2.4.0 on its classic (non-Xet) path, and by transformers 5.x through it. Contract:
/work/shared/reference/hub-http-contract.md. All state is in memory and dies with the server.

Routes (<t> = models|datasets|spaces, {p} = ""|"datasets/"|"spaces/"):
  POST /api/repos/create (409 + JSON {"url"} if it exists); GET /api/whoami-v2; POST /api/validate-yaml (always
       valid); GET /api/agent-harnesses (empty registry); GET /api/<t>/{repo}[/revision/{rev}] (id, sha, private,
       siblings; sizes with ?blobs); GET /api/<t>/{repo}/tree/{rev}[/{path}]?recursive= (one page, no Link header);
  POST /api/<t>/{repo}/preupload/{rev} (uploadMode, shouldIgnore=false, oid of the file now at rev);
  POST /api/<t>/{repo}/commit/{branch} (NDJSON header/file/lfsFile/deletedFile/deletedFolder; a parentCommit
       that is not the head gives 412); POST /api/<t>/{repo}/branch/{branch} ({"startingPoint"}; 409 if it exists);
  POST /{p}{repo}.git/info/lfs/objects/batch, then PUT to its href (like an S3 presigned URL: a ?sig= token and no
       Authorization header), then POST .../objects/verify;
  HEAD|GET /{p}{repo}/resolve/{rev}/{path}: X-Repo-Commit, ETag (git blob sha1), and for LFS files X-Linked-Etag
       (sha256) and X-Linked-Size. Errors are JSON {"error"} with X-Error-Message, plus X-Error-Code
       RepoNotFound / RevisionNotFound / EntryNotFound on 404s.
Model: repos keyed by (type, "owner/name"); each branch is a list of `Commit`s (40-hex sha, parent, message, full
file map path -> bytes); a new repo starts with an "initial commit" holding `.gitattributes`, as on the real Hub.
Files of >= `lfs_threshold` bytes (10 MiB) or with a suffix in `LFS_SUFFIXES` (.safetensors, .bin, ...) go through
LFS; objects are stored per repo by sha256 oid, and a commit naming an object never uploaded is rejected whole
(422), leaving the branch unchanged. Auth: writes and whoami need `Authorization: Bearer <token>` (else 401); a
wrong token gets 401 "Invalid credentials in Authorization header" on any route; public repos read without a
token; private ones are 404 without it. Not implemented: Xet (clients MUST disable it), multipart LFS, create_pr
and refs/pr, tags, list_repo_refs/list_repo_commits, copies, Range, redirects, .gitignore, gated repos, git itself.

Test hooks: `server.requests` logs every (method, path-without-query); `server.faults` takes `Fault`s, each
answering its next `times` matching requests with `status`, or closing the connection unanswered if `drop=True`
(`times` counts down in place); `delay` seconds of silence first (a client timeout); `after=True` handles the
request normally and then drops the connection before the response (the commit landed, the client never hears);
`server.files(repo_id, revision)` and `server.commits(repo_id, revision)`.

Recipe (verified with huggingface_hub 2.4.0 and transformers 5.24): huggingface_hub copies HF_ENDPOINT,
HF_HUB_OFFLINE (tests/conftest.py sets it to 1), HF_HUB_DISABLE_XET and the cache paths into
`huggingface_hub.constants` at import, so setting env vars inside a test changes nothing. Pass `endpoint=server.url`
to HfApi / hf_hub_download / snapshot_download, and call `patch_clients(monkeypatch, server, tmp_path)` AFTER
importing transformers (if used). It sets the env vars (for subprocesses) and monkeypatches `constants.ENDPOINT`,
`HUGGINGFACE_CO_URL_TEMPLATE` (used by hf_hub_download without endpoint=), `HF_HUB_OFFLINE=False`,
`HF_HUB_DISABLE_XET=True` (`is_xet_available()` reads the constant; without it uploads fail with 404 on
.../xet-write-token), all cache/token paths, `huggingface_hub.hf_api.api.endpoint` (the HfApi behind the
module-level functions) and `transformers.utils.hub._hf_api` (a cached HfApi, reset to None). Each of these was
needed for transformers' push_to_hub + from_pretrained.

    with HubServer() as server:                        # or start()/stop() in a module-scoped fixture
        patch_clients(monkeypatch, server, tmp_path)
        HfApi(endpoint=server.url).create_repo("test-user/repo")
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

if TYPE_CHECKING:
    from typing_extensions import Self

LFS_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".onnx",
    ".msgpack",
    ".npy",
    ".npz",
    ".pkl",
    ".pickle",
    ".parquet",
    ".arrow",
    ".tflite",
    ".keras",
    ".model",
    ".zip",
    ".gz",
    ".tar",
)
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()
PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_TYPE_OF_PREFIX = {v: k for k, v in PREFIXES.items()}
_TYPE_OF_API = {"models": "model", "datasets": "dataset", "spaces": "space"}
_API = re.compile(
    r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)"
    r"(?:/(revision|tree|preupload|commit|branch)/([^/]+)(/.*)?)?$"
)
_RESOLVE = re.compile(r"^/(datasets/|spaces/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_LFS = re.compile(r"^/(datasets/|spaces/)?([^/]+/[^/]+)\.git/info/lfs/objects/(batch|verify|[0-9a-f]{64})$")
_LFS_JSON = {"Content-Type": "application/vnd.git-lfs+json"}

Response = tuple[int, dict[str, str], bytes]


@dataclass(frozen=True)
class Commit:
    sha: str
    parent: str | None
    message: str
    files: dict[str, bytes]
    lfs: frozenset[str] = frozenset()  # the paths stored as LFS objects
    description: str = ""
    date: float = field(default_factory=time.time)


@dataclass
class Repo:
    type: str
    id: str
    private: bool
    branches: dict[str, list[Commit]]  # oldest first
    lfs_objects: dict[str, bytes] = field(default_factory=dict)  # sha256 oid -> content
    pending: dict[str, tuple[int, str]] = field(default_factory=dict)  # oid -> (size, upload signature)
    created: float = field(default_factory=time.time)


@dataclass
class Fault:
    """Answer the next `times` requests with this method (None: any) whose path contains `path_contains`
    with HTTP `status`, or close the connection without any response when `drop` is set. `delay` waits that
    many seconds first (longer than the client's timeout: a hung server). With `after`, the request is
    handled normally and the connection is then closed without the response (with `drop`) or answered
    with `status`: the server changed state but the client cannot know."""

    method: str | None = None
    path_contains: str = ""
    status: int = 500
    times: int = 1
    drop: bool = False
    delay: float = 0.0
    after: bool = False


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    oid = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n".encode()


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))


def _json(status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(obj).encode()


class HubServer:
    """Fake Hub; `token` is the only accepted bearer token, `user` its owner (whoami, repos without a namespace)."""

    def __init__(self, token: str = "hf_test_token", user: str = "test-user", lfs_threshold: int = 10 << 20) -> None:
        self.token, self.user, self.lfs_threshold = token, user, lfs_threshold
        self.repos: dict[tuple[str, str], Repo] = {}
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> Self:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("HubServer is not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # -- test helpers -------------------------------------------------------------------------------------------
    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        with self._lock:
            return dict(self._resolve(self._repo(repo_type, repo_id, True), revision).files)

    def commits(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[Commit]:
        with self._lock:
            repo = self._repo(repo_type, repo_id, True)
            return list(reversed(self._history(repo, self._resolve(repo, revision))))

    # -- state --------------------------------------------------------------------------------------------------
    def _create(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        first = self._commit(None, "initial commit", {".gitattributes": GITATTRIBUTES}, frozenset())
        repo = self.repos[(repo_type, repo_id)] = Repo(repo_type, repo_id, private, {"main": [first]})
        return repo

    def _commit(
        self, parent: Commit | None, message: str, files: dict[str, bytes], lfs: set[str] | frozenset[str], description: str = ""
    ) -> Commit:
        sha = hashlib.sha1(f"{parent.sha if parent else ''}|{message}|{next(self._counter)}".encode())
        for path, data in sorted(files.items()):
            sha.update(hashlib.sha1(path.encode() + b"\0" + data).digest())
        return Commit(sha.hexdigest(), parent.sha if parent else None, message, files, frozenset(lfs), description)

    def _repo(self, repo_type: str, repo_id: str, authed: bool) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authed):
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _resolve(self, repo: Repo, revision: str) -> Commit:
        if revision in repo.branches:
            return repo.branches[revision][-1]
        for commit in itertools.chain.from_iterable(repo.branches.values()):
            if len(revision) >= 7 and commit.sha.startswith(revision):
                return commit
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _history(self, repo: Repo, commit: Commit) -> list[Commit]:
        for history in repo.branches.values():
            for i, c in enumerate(history):
                if c.sha == commit.sha:
                    return history[: i + 1]
        return [commit]

    def _is_lfs(self, path: str, size: int) -> bool:
        return size >= self.lfs_threshold or path.lower().endswith(LFS_SUFFIXES)

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.url}/{PREFIXES[repo_type]}{repo_id}"

    def _authed(self, headers: Any, required: bool = False) -> bool:
        """True with the right token, False without one; a wrong token is refused on every route."""
        value = headers.get("Authorization")
        if value is not None and value != f"Bearer {self.token}":
            raise HubError(401, "Invalid credentials in Authorization header")
        if value is None and required:
            raise HubError(401, "Invalid username or password.")
        return value is not None

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.method in (None, method) and fault.path_contains in path:
                    fault.times -= 1
                    return fault
        return None

    # -- routes -------------------------------------------------------------------------------------------------
    def _route(self, method: str, path: str, query: dict[str, list[str]], body: bytes, headers: Any) -> Response:
        if m := _LFS.match(path):
            return self._lfs(method, _TYPE_OF_PREFIX[m[1] or ""], m[2], m[3], query, body, headers)
        authed = self._authed(headers, required=method in ("POST", "PUT", "DELETE") and path != "/api/validate-yaml")
        if path == "/api/repos/create" and method == "POST":
            return self._create_repo(json.loads(body))
        if path == "/api/validate-yaml" and method == "POST":
            return _json(200, {"errors": [], "warnings": []})
        if path == "/api/whoami-v2" and method == "GET":
            self._authed(headers, required=True)
            token = {"displayName": "test", "role": "write"}
            return _json(
                200,
                {
                    "type": "user",
                    "name": self.user,
                    "fullname": self.user,
                    "orgs": [],
                    "auth": {"type": "access_token", "accessToken": token},
                },
            )
        if path == "/api/agent-harnesses" and method == "GET":
            return _json(200, {"standardEnvVars": [], "harnesses": {}})
        if m := _API.match(path):
            repo = self._repo(_TYPE_OF_API[m[1]], m[2], authed)
            kind, rev, rest = m[3], unquote(m[4] or "main"), unquote(m[5] or "").strip("/")
            if method == "GET" and kind in (None, "revision"):
                return self._info(repo, self._resolve(repo, rev), "blobs" in query)
            if method == "GET" and kind == "tree":
                recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
                return self._tree(self._resolve(repo, rev), rest, recursive)
            if method == "POST" and kind == "preupload":
                return self._preupload(self._resolve(repo, rev), json.loads(body))
            if method == "POST" and kind == "commit":
                if query.get("create_pr"):
                    raise HubError(501, "create_pr is not supported by the fake Hub")
                return self._apply_commit(repo, rev, body)
            if method == "POST" and kind == "branch":
                return self._create_branch(repo, rev, json.loads(body or b"{}"))
        if (m := _RESOLVE.match(path)) and method in ("GET", "HEAD"):
            repo = self._repo(_TYPE_OF_PREFIX[m[1] or ""], m[2], authed)
            return self._download(self._resolve(repo, unquote(m[3])), unquote(m[4]))
        raise HubError(404, f"{method} {path} is not implemented by the fake Hub")

    def _create_repo(self, data: dict[str, Any]) -> Response:
        repo_type, repo_id = data.get("type") or "model", f"{data.get('organization') or self.user}/{data['name']}"
        url = self._repo_url(repo_type, repo_id)
        if (repo_type, repo_id) in self.repos:
            raise HubError(409, f"You already created this {repo_type} repo", url=url)
        self._create(repo_type, repo_id, data.get("visibility") == "private" or bool(data.get("private")))
        return _json(200, {"url": url, "name": repo_id})

    def _info(self, repo: Repo, commit: Commit, blobs: bool) -> Response:
        siblings: list[dict[str, Any]] = []
        for entry in (self._entry(commit, path) for path in sorted(commit.files)):
            sibling: dict[str, Any] = {"rfilename": entry["path"]}
            if blobs:
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if lfs := entry.get("lfs"):
                    sibling["lfs"] = {"sha256": lfs["oid"], "size": lfs["size"], "pointerSize": lfs["pointerSize"]}
            siblings.append(sibling)
        return _json(
            200,
            {
                "id": repo.id,
                "author": repo.id.split("/")[0],
                "sha": commit.sha,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "lastModified": _iso(commit.date),
                "createdAt": _iso(repo.created),
                "tags": [],
                "downloads": 0,
                "likes": 0,
                "siblings": siblings,
            },
        )

    def _entry(self, commit: Commit, path: str) -> dict[str, Any]:
        data = commit.files[path]
        if path not in commit.lfs:
            return {"type": "file", "path": path, "size": len(data), "oid": git_sha1(data)}
        pointer = lfs_pointer(data)
        return {
            "type": "file",
            "path": path,
            "size": len(data),
            "oid": git_sha1(pointer),
            "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": len(pointer)},
        }

    def _tree(self, commit: Commit, prefix: str, recursive: bool) -> Response:
        base = f"{prefix}/" if prefix else ""
        entries: dict[str, dict[str, Any]] = {}
        for path in (p for p in commit.files if p.startswith(base)):
            parts = path[len(base) :].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, min(depth, len(parts) - 1) + 1):  # the directories on the way
                folder = base + "/".join(parts[:i])
                oid = hashlib.sha1(f"{commit.sha}:{folder}".encode()).hexdigest()
                entries[folder] = {"type": "directory", "path": folder, "oid": oid}
            if depth >= len(parts):
                entries[path] = self._entry(commit, path)
        if prefix and not entries:
            raise HubError(404, f"{prefix} does not exist at {commit.sha}", "EntryNotFound")
        return _json(200, [entries[k] for k in sorted(entries)])

    def _preupload(self, commit: Commit, data: dict[str, Any]) -> Response:
        out = []
        for f in data["files"]:
            remote = self._entry(commit, f["path"]) if f["path"] in commit.files else None
            oid = remote and (remote["lfs"]["oid"] if "lfs" in remote else remote["oid"])
            mode = "lfs" if self._is_lfs(f["path"], int(f["size"])) else "regular"
            out.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return _json(200, {"files": out})

    def _apply_commit(self, repo: Repo, branch: str, body: bytes) -> Response:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first NDJSON line must be the commit header")
        header = lines[0]["value"]
        if branch not in repo.branches:
            raise HubError(404, f"Branch {branch} not found", "RevisionNotFound")
        head = repo.branches[branch][-1]
        if header.get("parentCommit") not in (None, head.sha):
            raise HubError(412, f"parentCommit {header['parentCommit']} is not the head of {branch}")
        files, lfs = dict(head.files), set(head.lfs)
        for item in lines[1:]:  # build the new tree aside: any error leaves the branch untouched
            key, value = item["key"], item["value"]
            path = value["path"]
            if key == "file":
                files[path] = base64.b64decode(value["content"])
                lfs.discard(path)
            elif key == "lfsFile":
                if value["oid"] not in repo.lfs_objects:
                    raise HubError(422, f"LFS object {value['oid']} for {path} was never uploaded")
                files[path] = repo.lfs_objects[value["oid"]]
                lfs.add(path)
            elif key in ("deletedFile", "deletedFolder"):
                folder = path.rstrip("/") + "/"
                doomed = [p for p in files if p == path or (key == "deletedFolder" and p.startswith(folder))]
                if not doomed:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                for p in doomed:
                    del files[p]
                    lfs.discard(p)
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        commit = self._commit(head, header.get("summary", ""), files, lfs, header.get("description", ""))
        repo.branches[branch].append(commit)
        commit_url = f"{self._repo_url(repo.type, repo.id)}/commit/{commit.sha}"
        return _json(200, {"commitOid": commit.sha, "commitUrl": commit_url, "pullRequestUrl": None, "success": True})

    def _create_branch(self, repo: Repo, branch: str, data: dict[str, Any]) -> Response:
        if branch in repo.branches:
            raise HubError(409, f"Reference {branch} already exists")
        start = self._resolve(repo, data.get("startingPoint") or "main")
        repo.branches[branch] = list(self._history(repo, start))
        return _json(200, {})

    def _download(self, commit: Commit, path: str) -> Response:
        if path not in commit.files:
            raise HubError(404, f"Entry {path} not found", "EntryNotFound", headers={"X-Repo-Commit": commit.sha})
        entry, data = self._entry(commit, path), commit.files[path]
        headers = {"Content-Type": "application/octet-stream", "X-Repo-Commit": commit.sha, "ETag": f'"{entry["oid"]}"'}
        if "lfs" in entry:
            headers.update({"X-Linked-Etag": f'"{entry["lfs"]["oid"]}"', "X-Linked-Size": str(len(data))})
        return 200, headers, data

    def _lfs(
        self, method: str, repo_type: str, repo_id: str, action: str, query: dict[str, list[str]], body: bytes, headers: Any
    ) -> Response:
        if method == "PUT" and len(action) == 64:  # "presigned" upload: the signature stands in for the token
            repo = self._repo(repo_type, repo_id, True)
            size, sig = repo.pending.get(action, (-1, ""))
            if not sig or query.get("sig") != [sig]:
                raise HubError(403, "Invalid or expired upload signature")
            if len(body) != size or hashlib.sha256(body).hexdigest() != action:
                raise HubError(400, "Uploaded content does not match its oid and size")
            repo.lfs_objects[action] = body  # the signature stays valid, so a retried PUT succeeds again
            return 200, {"ETag": f'"{action}"'}, b""
        self._authed(headers, required=True)
        repo, data = self._repo(repo_type, repo_id, True), json.loads(body)
        if method == "POST" and action == "verify":
            stored = repo.lfs_objects.get(data["oid"])
            if stored is None or len(stored) != data["size"]:
                raise HubError(404, f"LFS object {data['oid']} not found")
            return _json(200, {}, _LFS_JSON)
        if method != "POST" or action != "batch":
            raise HubError(405, f"{method} is not allowed on LFS {action}")
        base = f"{self._repo_url(repo.type, repo.id)}.git/info/lfs/objects"
        objects: list[dict[str, Any]] = []
        for obj in data["objects"]:
            oid, size = obj["oid"], int(obj["size"])
            if not re.fullmatch(r"[0-9a-f]{64}", oid):
                objects.append({"oid": oid, "size": size, "error": {"code": 422, "message": "Invalid oid"}})
            elif oid in repo.lfs_objects:  # already stored: no actions, the client skips the upload
                objects.append({"oid": oid, "size": size})
            else:
                sig = repo.pending.setdefault(oid, (size, secrets.token_hex(8)))[1]
                actions = {"upload": {"href": f"{base}/{oid}?sig={sig}"}, "verify": {"href": f"{base}/verify"}}
                objects.append({"oid": oid, "size": size, "authenticated": True, "actions": actions})
        return _json(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}, _LFS_JSON)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the httpx2 client expects; every response has Content-Length
    server_version = "FakeHub/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        hub: HubServer = self.server.hub  # type: ignore[attr-defined]
        method, url = self.command, urlsplit(self.path)
        body = self._read_body()
        with hub._lock:
            hub.requests.append((method, url.path))
        fault = hub._take_fault(method, url.path)
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        if fault is not None and fault.drop and not fault.after:
            self.close_connection = True  # the client sees "server disconnected without sending a response"
            return
        try:
            if fault is not None and not fault.after:
                raise HubError(fault.status, f"Injected fault: HTTP {fault.status}")
            with hub._lock:  # the state is small and in memory: handle one request at a time
                status, headers, payload = hub._route(method, url.path, parse_qs(url.query), body, self.headers)
            if fault is not None and fault.drop:  # handled, but the response is lost
                self.close_connection = True
                return
            if fault is not None:
                raise HubError(fault.status, f"Injected fault after handling: HTTP {fault.status}")
        except HubError as e:
            error_headers = {"X-Error-Message": e.message, **e.extra.pop("headers", {})}
            if e.code:
                error_headers["X-Error-Code"] = e.code
            status, headers, payload = _json(e.status, {"error": e.message, **e.extra}, error_headers)
        except Exception as e:  # noqa: BLE001 - a malformed request or a bug here: answer, don't hang the client
            status, headers, payload = _json(500, {"error": f"fake Hub error: {e!r}"})
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(payload))}.items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle


def patch_clients(monkeypatch: Any, server: HubServer, home: str | Path, token: str | None = None) -> None:
    """Point huggingface_hub, and transformers if already imported, at `server` for one test (see the module
    docstring); `home` (a tmp dir) replaces HF_HOME and every cache, so the user's cache is never touched."""
    from huggingface_hub import constants, hf_api

    home = Path(home)
    env = {
        "HF_ENDPOINT": server.url,
        "HF_TOKEN": token or server.token,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {
        "ENDPOINT": server.url,
        "HUGGINGFACE_CO_URL_TEMPLATE": server.url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
    }.items():
        monkeypatch.setattr(constants, key, value)
    monkeypatch.setattr(hf_api.api, "endpoint", server.url)
    if (transformers_hub := sys.modules.get("transformers.utils.hub")) is not None:
        monkeypatch.setattr(transformers_hub, "_hf_api", None)
