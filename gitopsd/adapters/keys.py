"""Ed25519 keys: load the signing key, load trusted public keys, sign and verify pack signatures.

Why this exists: gitopsd signs every ClusterPack spec (base64 Ed25519 over ``core.gojson`` bytes) and
its status commits (``adapters.sshsig``) with one Ed25519 key, and verifies packs against a set of
trusted public keys (several, for rotation). Keys come from files users already have: ``ssh-keygen``
output, PKCS#8 PEM from openssl, or a mounted Kubernetes Secret folder. Errors name the file and the
fix and never contain key material.

Neighbours: ``adapters.sshsig`` builds git-compatible SSH signatures from a :class:`SigningKey`;
the reconcile pass reaches this module through the Signer port.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
import pathlib
import re
import tempfile
from collections import abc

from cryptography import exceptions as crypto_exceptions
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from gitopsd import errors

__all__ = [
    "KEY_TYPE",
    "KNOWN_KEY_NAMES",
    "GeneratedKey",
    "KeyLoadError",
    "PublicKey",
    "SigningKey",
    "generate",
    "load_private_key",
    "load_public_keys",
    "verify_any",
]

KEY_TYPE = "ssh-ed25519"
# File names a private key usually has inside a mounted Secret or key folder, most specific first.
KNOWN_KEY_NAMES = ("signing.key", "ssh-privatekey", "tls.key", "key", "id_ed25519")
_PRIVATE_MARKER = b"PRIVATE KEY-----"


class KeyLoadError(errors.ConfigError):
    """A key file is missing, unreadable, of the wrong type or malformed (stalled: needs a human)."""

    reason = errors.UsageReason.KEY_INVALID


@dataclasses.dataclass(frozen=True, slots=True)
class PublicKey:
    """An Ed25519 public key, identified by its 32 raw bytes; ``comment`` is where it came from."""

    raw: bytes
    comment: str = dataclasses.field(default="", compare=False)

    def wire(self) -> bytes:
        """The SSH wire encoding (RFC 8709): string "ssh-ed25519", string key."""
        return ssh_string(KEY_TYPE.encode()) + ssh_string(self.raw)

    def openssh(self) -> str:
        """The ``authorized_keys`` form without comment: ``ssh-ed25519 AAAA...``."""
        return f"{KEY_TYPE} {base64.b64encode(self.wire()).decode('ascii')}"

    def key_id(self) -> str:
        """The OpenSSH fingerprint ``SHA256:...``, as ``ssh-keygen -lf`` prints it."""
        digest = hashlib.sha256(self.wire()).digest()
        return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")

    def verify_raw(self, data: bytes, signature: bytes) -> bool:
        """True when ``signature`` (64 raw bytes) is this key's Ed25519 signature of ``data``."""
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except (crypto_exceptions.InvalidSignature, ValueError):
            return False
        return True

    def verify(self, data: bytes, signature_b64: str) -> bool:
        """True when ``signature_b64`` (standard base64) is this key's signature of ``data``."""
        try:
            signature = base64.b64decode(signature_b64, validate=True)
        except (binascii.Error, ValueError):
            return False
        return self.verify_raw(data, signature)


@dataclasses.dataclass(frozen=True, slots=True, repr=False, eq=False)
class SigningKey:
    """An Ed25519 private key. Its repr shows only the public fingerprint."""

    private: ed25519.Ed25519PrivateKey

    def __repr__(self) -> str:
        return f"SigningKey({self.public_key().key_id()})"

    def sign_raw(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``."""
        return self.private.sign(data)

    def sign(self, data: bytes) -> str:
        """The Ed25519 signature of ``data`` in standard base64 with padding."""
        return base64.b64encode(self.sign_raw(data)).decode("ascii")

    def public_key(self) -> PublicKey:
        raw = self.private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return PublicKey(raw=raw)


@dataclasses.dataclass(frozen=True, slots=True)
class GeneratedKey:
    """What :func:`generate` wrote, and the line to add to an ``allowed_signers`` file."""

    private_path: pathlib.Path
    public_path: pathlib.Path
    public_key: PublicKey
    allowed_signers: str


def ssh_string(value: bytes) -> bytes:
    """An SSH wire ``string``: uint32 big-endian length, then the bytes."""
    return len(value).to_bytes(4, "big") + value


# ---------------------------------------------------------------- private keys


def load_private_key(path: str | os.PathLike[str]) -> SigningKey:
    """Load an unencrypted Ed25519 private key (OpenSSH or PKCS#8 PEM) from a file or key folder."""
    target = pathlib.Path(path)
    if target.is_dir():
        target = _pick_key_file(target)
    data = _read(target, what="signing key")
    return SigningKey(private=_parse_private(target, data))


def _parse_private(path: pathlib.Path, data: bytes) -> ed25519.Ed25519PrivateKey:
    loader: abc.Callable[..., object]
    if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
        loader, kind = serialization.load_ssh_private_key, "OpenSSH"
    elif b"-----BEGIN PRIVATE KEY-----" in data:
        loader, kind = serialization.load_pem_private_key, "PKCS#8"
    elif b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data:
        raise KeyLoadError(f"{path}: the key is encrypted; write it unencrypted (openssl pkey -in {path} -out NEW)")
    else:
        raise KeyLoadError(
            f"{path}: not an Ed25519 private key; expected OpenSSH or PKCS#8 PEM "
            "(create one with: gitopsd keygen, or ssh-keygen -t ed25519 -N '')"
        )
    try:
        key = loader(data, password=None)
    except TypeError as err:  # cryptography's way of saying "needs a password"
        raise KeyLoadError(
            f"{path}: the {kind} key is encrypted; remove the passphrase (ssh-keygen -p -N '' -f {path})"
        ) from err
    except (ValueError, crypto_exceptions.UnsupportedAlgorithm) as err:
        raise KeyLoadError(f"{path}: the {kind} key is malformed or unsupported; regenerate it") from err
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyLoadError(
            f"{path}: the key is {type(key).__name__.removesuffix('PrivateKey')}, not Ed25519; "
            "create an Ed25519 key (ssh-keygen -t ed25519 -N '')"
        )
    return key


def _pick_key_file(directory: pathlib.Path) -> pathlib.Path:
    """The one private key in a key folder (a mounted Secret: hidden ``..data`` entries are skipped)."""
    candidates = [file for file in _visible_files(directory) if _looks_private(file)]
    if len(candidates) > 1:
        named = [file for file in candidates if file.name in KNOWN_KEY_NAMES]
        candidates = named if len(named) == 1 else candidates
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise KeyLoadError(
            f"{directory}: no private key file found; put one Ed25519 key there "
            f"(named one of {', '.join(KNOWN_KEY_NAMES)}) or pass the file itself"
        )
    names = ", ".join(sorted(file.name for file in candidates))
    raise KeyLoadError(f"{directory}: several private keys ({names}); pass the file itself, not the folder")


def _looks_private(path: pathlib.Path) -> bool:
    try:
        with path.open("rb") as handle:
            return _PRIVATE_MARKER in handle.read(4096)
    except OSError:
        return False


# ---------------------------------------------------------------- public keys

_TOKEN = re.compile(r'(?:[^\s"]|"[^"]*")+')


def load_public_keys(path: str | os.PathLike[str]) -> tuple[PublicKey, ...]:
    """Load trusted Ed25519 public keys from a file or every visible file of a folder.

    A file may hold OpenSSH public key lines, ``allowed_signers`` lines or PEM ``PUBLIC KEY`` blocks.
    Duplicates are dropped; order is kept.
    """
    target = pathlib.Path(path)
    files = sorted(_visible_files(target)) if target.is_dir() else [target]
    found: dict[bytes, PublicKey] = {}
    for file in files:
        for key in _parse_public_file(file, _read(file, what="trusted keys file")):
            found.setdefault(key.raw, key)
    if not found:
        raise KeyLoadError(
            f"{target}: no Ed25519 public key found; add a line 'ssh-ed25519 AAAA...' or a PEM PUBLIC KEY"
        )
    return tuple(found.values())


def verify_any(keys: tuple[PublicKey, ...], data: bytes, signature_b64: str) -> PublicKey | None:
    """The first of ``keys`` whose signature ``signature_b64`` is over ``data``, else None."""
    return next((key for key in keys if key.verify(data, signature_b64)), None)


def _parse_public_file(path: pathlib.Path, data: bytes) -> list[PublicKey]:
    if _PRIVATE_MARKER in data:
        raise KeyLoadError(f"{path}: this is a private key; trusted keys must be public keys only (e.g. its .pub)")
    if b"-----BEGIN PUBLIC KEY-----" in data:
        return _parse_pem_public(path, data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise KeyLoadError(f"{path}: not a text file of public keys; expected OpenSSH or PEM keys") from err
    keys = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            keys.append(_parse_public_line(f"{path}:{number}", line))
    return keys


def _parse_pem_public(path: pathlib.Path, data: bytes) -> list[PublicKey]:
    blocks = re.findall(rb"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----", data, flags=re.DOTALL)
    keys = []
    for block in blocks:
        try:
            key = serialization.load_pem_public_key(block)
        except (ValueError, crypto_exceptions.UnsupportedAlgorithm) as err:
            raise KeyLoadError(f"{path}: a PEM PUBLIC KEY block is malformed; export it again") from err
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise KeyLoadError(f"{path}: a PEM public key is not Ed25519; only Ed25519 keys can be trusted")
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        keys.append(PublicKey(raw=raw, comment=str(path)))
    return keys


def _parse_public_line(where: str, line: str) -> PublicKey:
    """One ``[principals] [options] keytype base64 [comment]`` line (authorized_keys / allowed_signers)."""
    tokens = _TOKEN.findall(line)
    index = next((i for i in range(len(tokens) - 1) if _is_key(tokens[i], tokens[i + 1])), None)
    if index is None:
        raise KeyLoadError(f"{where}: no 'ssh-ed25519 AAAA...' key on this line; fix or remove the line")
    if tokens[index] != KEY_TYPE:
        raise KeyLoadError(f"{where}: key type {tokens[index]} is not supported; only ssh-ed25519 keys can be trusted")
    if any(token.startswith("cert-authority") for token in tokens[:index]):
        raise KeyLoadError(f"{where}: cert-authority keys are not supported; list the signing key itself")
    raw = _parse_wire_blob(where, tokens[index + 1])
    principal = tokens[0] if index >= 1 else ""
    comment = " ".join(tokens[index + 2 :]) or principal
    return PublicKey(raw=raw, comment=comment)


_KEY_TYPES = re.compile(
    r"(?:ssh-(?:ed25519|rsa|dss)|ecdsa-sha2-nistp\d+|sk-[a-z0-9-]+@openssh\.com)(?:-cert-v01@openssh\.com)?"
)


def _is_key(token: str, following: str) -> bool:
    """True for a key type followed by its base64 blob (every SSH key blob starts with AAAA)."""
    return bool(_KEY_TYPES.fullmatch(token)) and following.startswith("AAAA")


def _parse_wire_blob(where: str, blob: str) -> bytes:
    try:
        wire = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError) as err:
        raise KeyLoadError(f"{where}: the key's base64 is damaged; copy the whole key line again") from err
    expected_prefix = ssh_string(KEY_TYPE.encode())
    if not wire.startswith(expected_prefix) or wire[len(expected_prefix) : len(expected_prefix) + 4] != b"\0\0\0\x20":
        raise KeyLoadError(f"{where}: the key blob is not an ssh-ed25519 key; copy the whole key line again")
    raw = wire[len(expected_prefix) + 4 :]
    if len(raw) != 32:
        raise KeyLoadError(f"{where}: the key blob has the wrong length; copy the whole key line again")
    return raw


# ---------------------------------------------------------------- key generation


def generate(
    directory: str | os.PathLike[str],
    name: str = "gitopsd",
    *,
    principal: str = "gitopsd@localhost",
    force: bool = False,
) -> GeneratedKey:
    """Create ``signing.key`` (OpenSSH, mode 0600) and ``signing.key.pub`` in ``directory``.

    ``name`` is the comment of the public key line. Existing keys are kept unless ``force``.
    """
    folder = pathlib.Path(directory)
    private_path, public_path = folder / "signing.key", folder / "signing.key.pub"
    existing = [p for p in (private_path, public_path) if p.exists()]
    if existing and not force:
        raise KeyLoadError(f"{existing[0]}: a key already exists; keep it, or pass force to replace it")
    if any(char.isspace() for char in principal) or not principal:
        raise KeyLoadError(f"principal {principal!r} must be one word without spaces, e.g. gitopsd@localhost")
    private = ed25519.Ed25519PrivateKey.generate()
    signing = SigningKey(private=private)
    public = signing.public_key()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    if force:
        _write_atomic(private_path, pem, mode=0o600)
    else:
        _write_new(private_path, pem, mode=0o600)  # two first runs at once: one key wins, none is replaced
    comment = f" {name}" if name else ""
    _write_atomic(public_path, f"{public.openssh()}{comment}\n".encode("ascii"), mode=0o644)
    allowed = f'{principal} namespaces="git" {public.openssh()}'
    return GeneratedKey(
        private_path=private_path,
        public_path=public_path,
        public_key=dataclasses.replace(public, comment=name),
        allowed_signers=allowed,
    )


def _write_atomic(path: pathlib.Path, data: bytes, *, mode: int, replace: bool = True) -> None:
    """Write ``path`` whole or not at all (a temporary file, synced, then renamed or linked in).
    With ``replace`` off an existing ``path`` is never touched: ``FileExistsError``."""
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        if replace:
            os.replace(temp_name, path)
        else:
            os.link(temp_name, path)  # fails when path exists, whoever made it and however recently
        _sync_dir(path.parent)
    finally:
        pathlib.Path(temp_name).unlink(missing_ok=True)


def _write_new(path: pathlib.Path, data: bytes, *, mode: int) -> None:
    try:
        _write_atomic(path, data, mode=mode, replace=False)
    except FileExistsError:
        raise KeyLoadError(f"{path}: a key already exists; keep it, or pass force to replace it") from None


def _sync_dir(folder: pathlib.Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------- files


def _visible_files(directory: pathlib.Path) -> list[pathlib.Path]:
    try:
        entries = list(directory.iterdir())
    except OSError as err:
        raise KeyLoadError(f"{directory}: cannot list the folder ({err.strerror}); check the mount") from err
    return [entry for entry in entries if not entry.name.startswith(".") and entry.is_file()]


def _read(path: pathlib.Path, *, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as err:
        raise KeyLoadError(f"{path}: {what} not found; check the path (create a key with: gitopsd keygen)") from err
    except OSError as err:
        raise KeyLoadError(f"{path}: cannot read the {what} ({err.strerror}); check permissions") from err
