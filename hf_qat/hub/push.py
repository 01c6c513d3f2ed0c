"""Push a saved QAT folder to the Hugging Face Hub in one commit (framework-neutral).

A push is one commit holding exactly the files of the folder's layout
(:data:`hf_qat.core.layout.TRANSFORMERS_LAYOUT` or :data:`~hf_qat.core.layout.KERAS_LAYOUT`): for
PyTorch the safetensors checkpoint with quantizer parameters, ``config.json`` with
``quantization_config``, ``compression_state.json``, ``nncf_config.json``, ``model.onnx`` (INT8), the
tokenizer or processor files, ``qat_results.json`` when there are results, and the ``README.md`` model
card. Pickled files (``training_args.bin``, optimizer states) and Trainer checkpoints are never pushed.

Faults: every request of a push has a timeout (:data:`DEFAULT_TIMEOUT`; huggingface_hub's own default
is none, so a hung server would hang the push forever). huggingface_hub retries single requests (LFS
uploads, preupload) with exponential backoff; on top of that a push that fails for a transient reason
(HTTP 408/429/5xx, a timeout, a dropped connection) is attempted again as a whole, up to
:data:`DEFAULT_ATTEMPTS` times with :data:`BACKOFF_SECONDS` between attempts: files already stored on
the hub are not sent again. The hub applies a commit only once every file it names is uploaded, so
the repo holds the whole push or none of it; the final :class:`~hf_qat.HubError` says which, from the
repo's head before and after.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..core.layout import TRANSFORMERS_LAYOUT, FolderLayout
from ..errors import HubError

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_ATTEMPTS",
    "BACKOFF_SECONDS",
    "check_push_access",
    "is_transient",
    "push_qat_folder",
]

logger = logging.getLogger(__name__)

#: Seconds a push waits for the hub on one request (connect, send, first byte) before giving up on it
#: (environment variable ``HF_QAT_HUB_TIMEOUT``).
DEFAULT_TIMEOUT = float(os.environ.get("HF_QAT_HUB_TIMEOUT", "60"))
#: Attempts of a whole push when it fails for a transient reason.
DEFAULT_ATTEMPTS = 3
#: Seconds waited before the second, third ... attempt (the last value repeats).
BACKOFF_SECONDS = (4.0, 16.0)
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_sleep = time.sleep  # tests replace it to record the waits
_UNKNOWN = "<unknown>"


def push_qat_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload QAT model (hf_qat)",
    endpoint: str | None = None,
    timeout: float | None = None,
    attempts: int | None = None,
    layout: FolderLayout = TRANSFORMERS_LAYOUT,
) -> Any:
    """Upload the QAT files of ``folder`` (``layout.pushed``) to ``repo_id`` in one commit.

    Args:
        timeout: seconds per request before it counts as failed (default :data:`DEFAULT_TIMEOUT`).
        attempts: whole-push attempts on transient failures (default :data:`DEFAULT_ATTEMPTS`).
        layout: the folder's file layout: which files it must hold and which are uploaded (default: a
            transformers QAT folder; Keras folders pass :data:`~hf_qat.core.layout.KERAS_LAYOUT`).

    Returns:
        The ``CommitInfo`` of the commit (of the existing head when the hub already holds these files).

    Raises:
        `FileNotFoundError`: the folder lacks the files every QAT repo needs.
        [`HubError`]: no usable token or no write access (before anything is uploaded), or the push failed
            after its attempts; the message says whether the repo changed.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    missing = layout.missing(folder)
    if missing:
        raise FileNotFoundError(f"{folder} is not a saved {layout.framework} QAT model: missing {missing}")
    attempts = DEFAULT_ATTEMPTS if attempts is None else max(1, int(attempts))
    api = HfApi(token=token, endpoint=endpoint)
    with bounded_timeouts(DEFAULT_TIMEOUT if timeout is None else timeout):
        check_push_access(api, repo_id)
        try:
            head_before: str | None = _head(api, repo_id, revision)
        except Exception:  # noqa: BLE001 - unknown: the final message says it could not be compared
            head_before = _UNKNOWN
        waits: list[float] = []
        for attempt in range(1, attempts + 1):
            try:
                api.create_repo(repo_id, private=private, exist_ok=True)
                if revision is not None and revision != "main":
                    api.create_branch(repo_id, branch=revision, exist_ok=True)
                return api.upload_folder(
                    repo_id=repo_id,
                    folder_path=str(folder),
                    allow_patterns=list(layout.pushed),
                    commit_message=commit_message,
                    revision=revision,
                )
            except Exception as e:  # noqa: BLE001 - HTTP errors after the client's retries, timeouts, dropped connections
                error = e
                if attempt == attempts or not is_transient(e):
                    break
                wait = BACKOFF_SECONDS[min(attempt - 1, len(BACKOFF_SECONDS) - 1)]
                logger.warning(
                    "hf_qat: push to %s failed (%s: %s); attempt %d of %d in %.0f s",
                    repo_id,
                    type(e).__name__,
                    e,
                    attempt + 1,
                    attempts,
                    wait,
                )
                waits.append(wait)
                _sleep(wait)
        outcome = _describe_outcome(api, repo_id, revision, head_before)
    root = _root_cause(error)
    cause = f"{type(error).__name__}: {error}" + (f" (caused by {type(root).__name__}: {root})" if root is not error else "")
    tries = f"after {attempt} attempt(s)" + (f" (waited {', '.join(f'{w:.0f}' for w in waits)} s between them)" if waits else "")
    raise HubError(
        f"Pushing {folder} to {repo_id} failed {tries}: {cause}. {outcome} "
        "The local files are untouched. Run the push again: files the hub already stores are not uploaded twice."
    ) from error


def is_transient(error: BaseException) -> bool:
    """Whether a failed hub request may succeed if simply repeated: a timeout, a dropped connection or HTTP
    408/429/5xx, also when wrapped (huggingface_hub re-raises failed LFS uploads as ``RuntimeError``)."""
    try:
        import httpx2

        network: tuple[type[BaseException], ...] = (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError)
    except ImportError:  # pragma: no cover - huggingface_hub < 2 uses httpx/requests
        network = ()
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        status = getattr(getattr(current, "response", None), "status_code", None)
        if status is not None:
            return status in _TRANSIENT_STATUS
        if isinstance(current, (*network, ConnectionError, TimeoutError)):
            return True
        current = current.__cause__ or current.__context__
    return False


def _root_cause(error: BaseException) -> BaseException:
    seen = {id(error)}
    while (nxt := error.__cause__ or error.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        error = nxt
    return error


@contextlib.contextmanager
def bounded_timeouts(seconds: float) -> Iterator[None]:
    """Give every request huggingface_hub makes in this block a timeout of ``seconds``.

    huggingface_hub 2.x's default HTTP client has no timeout at all. The client factory (public
    ``set_client_factory``) is wrapped, so a custom factory (proxies, certificates) is kept, and a client
    re-created after a connection error gets the timeout too. Restored on exit.
    """
    try:
        import httpx2
        from huggingface_hub.utils import _http, set_client_factory
    except ImportError:  # pragma: no cover - huggingface_hub 1.x (httpx with its own default timeouts)
        yield
        return
    previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", None) or _http.default_client_factory

    def factory() -> Any:
        client = previous()
        client.timeout = httpx2.Timeout(seconds)
        return client

    set_client_factory(factory)
    try:
        yield
    finally:
        set_client_factory(previous)


def _head(api: Any, repo_id: str, revision: str | None) -> str | None:
    """The commit ``revision`` points at, or ``None`` if the repo (or branch) does not exist yet."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        return api.repo_info(repo_id, revision=revision).sha
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return None


def _describe_outcome(api: Any, repo_id: str, revision: str | None, before: str | None) -> str:
    branch = revision or "main"
    try:
        after = _head(api, repo_id, revision)
    except Exception as e:  # noqa: BLE001 - the hub is unreachable: say so, the push error is what matters
        return (
            f"Whether {repo_id}@{branch} changed could not be checked ({type(e).__name__}); a push is a single "
            "commit, so it holds either all of this push or none of it."
        )
    if before == _UNKNOWN:
        return (
            f"{repo_id}@{branch} is now at {after[:12] if after else 'no commit'}; its head before the push could not "
            "be read, so whether it changed is unknown. A push is a single commit: the repo holds all of it or none."
        )
    if after == before:
        where = f"its head is still {before[:12]}" if before else "it holds no commit of this push"
        return f"{repo_id}@{branch} is unchanged ({where}); uploaded large files may remain stored but unreferenced."
    return (
        f"{repo_id}@{branch} moved from {before[:12] if before else 'nothing'} to {after[:12] if after else 'nothing'} "
        "during the push: the commit may have landed whole; check the repo before pushing again."
    )


def check_push_access(api: Any, repo_id: str) -> str:
    """Fail before any upload when the token is missing, refused, or not allowed to write ``repo_id``'s
    namespace. Returns the user name."""
    try:
        me = api.whoami()
    except Exception as e:
        if is_transient(e):
            raise HubError(
                f"Cannot push to {repo_id}: the hub did not answer the token check ({type(e).__name__}: {e}). "
                "Nothing was uploaded; try again later."
            ) from e
        raise HubError(
            f"Cannot push to {repo_id}: no usable Hugging Face token ({type(e).__name__}: {e}). Run `hf auth login`, "
            "set HF_TOKEN, or pass token=..."
        ) from e
    namespace = repo_id.split("/")[0] if "/" in repo_id else me.get("name")
    allowed = {me.get("name")} | {o.get("name") for o in me.get("orgs", []) if isinstance(o, dict)}
    if namespace not in allowed:
        raise HubError(
            f"Cannot push to {repo_id}: the token belongs to {me.get('name')!r}, who can write to "
            f"{sorted(n for n in allowed if n)}, not to {namespace!r}. Nothing was uploaded."
        )
    return str(me.get("name"))
