"""Real Git for tests: bare remotes on disk, user clones that commit and push with the git CLI, keys,
and the builders of what they hold (PackBuilds, raw packs, small config repos).

Every git command runs with an isolated configuration (no global or system config, a fixed identity),
so tests behave the same on any machine. Missing tools fail loudly: nothing is skipped. The builders
are the one place tests write a PackBuild or a key from: a test names only what it cares about.
"""

from __future__ import annotations

import base64
import http.server
import logging
import os
import pathlib
import shutil
import subprocess
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping

import pytest
import structlog

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples-repo"
PRINCIPAL = "gitopsd@localhost"


# Ways a bare mirror gets broken (disk full, a killed process, a bad copy), by name: each takes the mirror's path.
MIRROR_CORRUPTIONS: dict[str, Callable[[pathlib.Path], object]] = {
    "garbage-head": lambda m: (m / "HEAD").write_text("garbage\n"),
    "garbage-config": lambda m: (m / "config").write_bytes(b"\x00\xff[[[not config"),
    "packs-deleted": lambda m: [p.unlink() for p in (m / "objects/pack").iterdir()],
    "pack-truncated": lambda m: [p.write_bytes(p.read_bytes()[:64]) for p in (m / "objects/pack").glob("*.pack")],
    "objects-deleted": lambda m: shutil.rmtree(m / "objects"),
}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"the tests need {name!r} on the PATH (.ci/run installs it)")
    return path


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="Test User",
        GIT_AUTHOR_EMAIL="user@example.com",
        GIT_COMMITTER_NAME="Test User",
        GIT_COMMITTER_EMAIL="user@example.com",
        GIT_TERMINAL_PROMPT="0",
    )
    env.update(extra or {})
    return env


def git(*args: str | os.PathLike[str], cwd: pathlib.Path | None = None, env: Mapping[str, str] | None = None,
        check: bool = True, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([tool("git"), *map(str, args)], cwd=cwd, env=git_env(env), input=stdin,
                          capture_output=True, check=False)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode("utf-8", "replace"),
                                         proc.stderr.decode("utf-8", "replace"))
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(map(str, args))} failed ({proc.returncode}):\n{result.stderr}{result.stdout}")
    return result


def write_files(root: pathlib.Path, files: Mapping[str, str | bytes]) -> None:
    for path, content in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content if isinstance(content, bytes) else content.encode())


# --- the files of a config repo ------------------------------------------------------------------
SETTINGS = "namespace: seam-system\n"


def packbuild(name: str, version: str = "1.0.0", *, category: str = "raw", source: str = "rawSource: {path: manifests}",
              targets: str = "[dev]", namespace: str | None = None, priority: int | None = None) -> str:
    """The text of a ``packbuild.yaml``; ``basePackName`` is ``name``."""
    text = (f"name: {name}\nversion: {version}\nbasePackName: {name}\ncategory: {category}\n{source}\n"
            f"targetClusters: {targets}\n")
    if namespace is not None:
        text += f"namespace: {namespace}\n"
    if priority is not None:
        text += f"priority: {priority}\n"
    return text


def configmap(name: str, data: str = "{key: value}") -> str:
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {data}\n"


def raw_pack(name: str, version: str = "1.0.0", *, path: str = "manifests", targets: str = "[dev]",
             namespace: str | None = None, priority: int | None = None, data: str = "{key: value}",
             manifests: Mapping[str, str] | None = None) -> dict[str, str]:
    """The files of raw pack ``name`` (``packs/<name>/...``): its PackBuild and ``manifests`` under
    ``path`` (by default one ConfigMap named after the pack, holding ``data``)."""
    files = {f"packs/{name}/packbuild.yaml": packbuild(name, version, source=f"rawSource: {{path: {path}}}",
                                                       targets=targets, namespace=namespace, priority=priority)}
    for file, text in (manifests if manifests is not None else {"cm.yaml": configmap(name, data)}).items():
        files[f"packs/{name}/{path}/{file}"] = text
    return files


def config_repo(*packs: str, clusters: Mapping[str, str] | None = None) -> dict[str, str]:
    """``gitopsd.yaml``, the clusters (name -> labels, default one ``dev`` without labels) and a raw
    pack (``raw_pack``'s defaults) for each name in ``packs``."""
    files = {"gitopsd.yaml": SETTINGS}
    for cluster, labels in (clusters if clusters is not None else {"dev": ""}).items():
        files[f"clusters/{cluster}.yaml"] = f"name: {cluster}\n" + (f"labels: {labels}\n" if labels else "")
    for name in packs:
        files.update(raw_pack(name))
    return files


class Clone:
    """A user's clone of a remote: edit files, commit, push with the git CLI."""

    def __init__(self, path: pathlib.Path, env: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.env = dict(env or {})

    def git(self, *args: str | os.PathLike[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        return git(*args, cwd=self.path, env=self.env, check=check)

    def head(self) -> str:
        return self.git("rev-parse", "HEAD").stdout.strip()

    def commit(self, message: str, files: Mapping[str, str | bytes] | None = None, *, remove: tuple[str, ...] = (),
               sign: tuple[str, ...] = ()) -> str:
        write_files(self.path, files or {})
        for path in remove:
            self.git("rm", "-rq", path)
        self.git("add", "-A")
        self.git(*sign, "commit", "-q", "--allow-empty", "-m", message)
        return self.head()

    def push(self, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.git("push", "-q", "origin", "HEAD", *extra, check=check)

    def pull(self) -> None:
        self.git("pull", "-q", "--ff-only", "origin")

    def read(self, path: str) -> str:
        return (self.path / path).read_text()


def clone(remote: pathlib.Path | str, dest: pathlib.Path, *, branch: str | None = None) -> Clone:
    git("clone", "-q", *(["-b", branch] if branch else []), str(remote), dest)
    return Clone(dest)


def make_remote(tmp: pathlib.Path, files: Mapping[str, str | bytes] | None = None, *, examples: bool = False,
                branch: str = "main", name: str = "remote.git") -> tuple[pathlib.Path, Clone]:
    """A bare remote with one commit (examples-repo and/or ``files``) and a user clone of it."""
    work = tmp / f"{name.removesuffix('.git')}-seed"
    git("init", "-q", "-b", branch, work)
    if examples:
        shutil.copytree(EXAMPLES, work, dirs_exist_ok=True)
    write_files(work, files or {})
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "initial config", cwd=work)
    bare = tmp / name
    git("clone", "-q", "--bare", work, bare)
    shutil.rmtree(work)
    return bare, clone(bare, tmp / f"{name.removesuffix('.git')}-user")


def rev(repo: pathlib.Path, what: str) -> str:
    return git("rev-parse", what, cwd=repo).stdout.strip()


def rev_list(repo: pathlib.Path, *args: str) -> list[str]:
    return git("rev-list", *args, cwd=repo).stdout.split()


def is_ancestor(repo: pathlib.Path, ancestor: str, descendant: str) -> bool:
    return git("merge-base", "--is-ancestor", ancestor, descendant, cwd=repo, check=False).returncode == 0


def ssh_key(directory: pathlib.Path, name: str = "id_ed25519", *, comment: str | None = None) -> pathlib.Path:
    """An ed25519 private key in OpenSSH form (and ``<name>.pub``), made by ``ssh-keygen``; the comment is ``name``
    unless given."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    subprocess.run([tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", comment or name, "-f", str(path)],
                   check=True)
    return path


def pkcs8_key(directory: pathlib.Path, name: str = "signing.pem") -> pathlib.Path:
    """An ed25519 private key in PKCS#8 PEM, made by ``openssl genpkey``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    subprocess.run([tool("openssl"), "genpkey", "-algorithm", "ed25519", "-out", str(path)], check=True,
                   capture_output=True)
    return path


def allowed_signers(path: pathlib.Path, *public_keys: pathlib.Path | str, principal: str = PRINCIPAL) -> pathlib.Path:
    """An allowed_signers file for ``.pub`` files (or ``ssh-ed25519 AAAA...`` lines)."""
    lines = []
    for key in public_keys:
        text = key.read_text().split()[:2] if isinstance(key, pathlib.Path) else key.split()[:2]
        lines.append(f'{principal} namespaces="git" {" ".join(text)}')
    path.write_text("\n".join(lines) + "\n")
    return path


def ssh_sign_args(private_key: pathlib.Path) -> tuple[str, ...]:
    """``git`` options that make ``commit`` sign with an SSH key."""
    return ("-c", "gpg.format=ssh", "-c", f"user.signingkey={private_key}", "-c", "commit.gpgsign=true")


def verify_commit(repo: pathlib.Path, commit: str, signers: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return git("-c", f"gpg.ssh.allowedSignersFile={signers}", "verify-commit", commit, cwd=repo, check=False)


def fast_import(bare: pathlib.Path, files: Mapping[str, str], *, branch: str = "main", message: str = "bulk") -> str:
    """One commit of ``files`` on top of ``branch`` (or a root commit), written with git fast-import."""
    parent = git("rev-parse", "-q", "--verify", f"refs/heads/{branch}", cwd=bare, check=False).stdout.strip()
    lines = [f"commit refs/heads/{branch}", "committer Test User <user@example.com> 1700000000 +0000",
             f"data {len(message.encode())}", message]
    if parent:
        lines.append(f"from {parent}")
    body = ("\n".join(lines) + "\n").encode()
    for path, text in sorted(files.items()):
        data = text.encode()
        body += f"M 100644 inline {path}\ndata {len(data)}\n".encode() + data + b"\n"
    git("fast-import", "--quiet", cwd=bare, stdin=body)
    return rev(bare, f"refs/heads/{branch}")


class Gpg:
    """A throw-away GnuPG home with one Ed25519 signing key, for GPG-signed commits."""

    def __init__(self, home: pathlib.Path, uid: str) -> None:
        tool("gpg")
        home.mkdir(parents=True, mode=0o700)
        self.home = home
        self.env = {"GNUPGHOME": str(home)}
        self.run("--quick-generate-key", "--passphrase", "", uid, "ed25519", "sign", "never")
        listing = self.run("--list-secret-keys", "--with-colons").stdout
        self.fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, **self.env)
        return subprocess.run([tool("gpg"), "--batch", "--pinentry-mode", "loopback", *args], env=env,
                              capture_output=True, text=True, check=True)

    def export(self, path: pathlib.Path, *, armor: bool = False) -> pathlib.Path:
        data = subprocess.run([tool("gpg"), "--batch", *(["--armor"] if armor else []), "--export", self.fingerprint],
                              env=dict(os.environ, **self.env), capture_output=True, check=True).stdout
        path.write_bytes(data)
        return path

    def sign_args(self) -> tuple[str, ...]:
        return ("-c", "gpg.format=openpgp", "-c", f"user.signingkey={self.fingerprint}", "-c", "commit.gpgsign=true")

    def stop(self) -> None:
        """Stop the gpg-agent that signing started for this home."""
        subprocess.run([tool("gpgconf"), "--kill", "gpg-agent"], env=dict(os.environ, **self.env), check=False)


@pytest.fixture
def gpg_keys() -> Iterator[Callable[[pathlib.Path, str], Gpg]]:
    """Makes :class:`Gpg` homes and stops their agents when the test ends."""
    made: list[Gpg] = []

    def make(home: pathlib.Path, uid: str) -> Gpg:
        made.append(Gpg(home, uid))
        return made[-1]

    yield make
    for gpg in made:
        gpg.stop()


@pytest.fixture(autouse=False)
def quiet_logs() -> Iterator[None]:
    """Only warnings from structlog while a test runs (the race loops log every push)."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    yield
    structlog.configure(**saved)


class GitHttpServer:
    """Git's smart HTTP protocol on 127.0.0.1: ``git http-backend`` behind Basic authentication.

    Serves every repository under ``root``; pushes are allowed for the authenticated user. Used to
    drive libgit2's network transport (credentials, fetch, push, rejections) for real.
    """

    def __init__(self, root: pathlib.Path, username: str, password: str) -> None:
        self.root = root
        self.expected = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        backend = subprocess.run([tool("git"), "--exec-path"], capture_output=True, text=True, check=True).stdout.strip()
        self.backend = str(pathlib.Path(backend) / "git-http-backend")
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                pass

            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _serve(self) -> None:
                path, _, query = self.path.partition("?")
                body = self._body() if self.command == "POST" else b""
                if self.headers.get("Authorization") != server.expected:
                    server.requests.append((self.command, path, 401))
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                env = git_env({
                    "GIT_PROJECT_ROOT": str(server.root), "GIT_HTTP_EXPORT_ALL": "1", "REQUEST_METHOD": self.command,
                    "PATH_INFO": urllib.parse.unquote(path), "QUERY_STRING": query, "REMOTE_USER": "robot",
                    "REMOTE_ADDR": "127.0.0.1", "GATEWAY_INTERFACE": "CGI/1.1", "SERVER_PROTOCOL": "HTTP/1.1",
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
                    "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                    "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                })
                out = subprocess.run([server.backend], input=body, env=env, capture_output=True, check=False).stdout
                head, _, payload = out.partition(b"\r\n\r\n")
                status = 200
                headers = []
                for line in head.decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                server.requests.append((self.command, path, status))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> GitHttpServer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()
