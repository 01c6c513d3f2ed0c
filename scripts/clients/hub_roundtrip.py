"""Push QAT folders to a hub and let the deployment clients load them by repo id, as users do.

Runs in hf_qat's environment: starts the project's test hub on 127.0.0.1 (``tests/hub_server.py``, the
huggingface_hub HTTP protocol), pushes each folder with :func:`hf_qat.push_qat_folder`, then runs
``scripts/clients/referee.py`` in the clients' environment with ``--hub-endpoint``: ``OVModelFor<Task>`` and
``ORTModelFor<Task>`` get ``from_pretrained("test-user/<folder name>")`` and nothing else.

    python scripts/clients/hub_roundtrip.py FOLDER [FOLDER ...] --python ENV/bin/python [--json report.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--python", required=True, help="the clients environment's python (scripts/clients/make_env.sh)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--save-outputs", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="hf_qat_hub_home_") as home:
        os.environ.update(HF_HUB_DISABLE_XET="1", HF_HOME=home, HF_HUB_DISABLE_TELEMETRY="1")
        from hub_server import HubServer

        import hf_qat

        with HubServer() as server:
            repos = []
            for folder in args.folders:
                repo = f"{server.user}/{folder.resolve().name}"
                hf_qat.push_qat_folder(folder, repo, token=server.token, endpoint=server.url)
                print(f"pushed {folder} -> {server.url}/{repo} ({len(server.files(repo))} files)")
                repos.append(repo)
            command = [args.python, str(ROOT / "scripts" / "clients" / "referee.py"), *repos, "--hub-endpoint", server.url]
            if args.json:
                command += ["--json", str(args.json)]
            if args.save_outputs:
                command.append("--save-outputs")
            env = {**os.environ, "HF_TOKEN": server.token, "HF_HOME": str(Path(home) / "clients")}
            return subprocess.run(command, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
