"""SSH signatures (OpenSSH's SSHSIG format) in pure Python, and signed git commit objects.

Why this exists: gitopsd writes its status commits with pygit2, which cannot sign, and they must
pass ``git verify-commit`` with ``gpg.ssh.allowedSignersFile``. Git stores an SSH signature as the
armored SSHSIG blob in the commit's ``gpgsig`` header; this module builds that blob exactly as
``ssh-keygen -Y sign`` does (Ed25519 is deterministic, so the output is byte-identical) and inserts it
the way git's ``add_header_signature`` does. Spec: OpenSSH ``PROTOCOL.sshsig``.

Neighbours: ``adapters.keys`` owns the key; the git status writer calls :func:`sign_commit_buffer`
and writes the result as a commit object (or hands the armor to
``pygit2.Repository.create_commit_with_signature``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from gitopsd.adapters import keys

__all__ = ["HASH_ALGORITHMS", "sign", "sign_commit_buffer", "verify"]

_MAGIC = b"SSHSIG"
_VERSION = 1
_BEGIN = "-----BEGIN SSH SIGNATURE-----"
_END = "-----END SSH SIGNATURE-----"
_WRAP = 70  # ssh-keygen wraps the base64 body at 70 columns
HASH_ALGORITHMS = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
_GPGSIG = b"gpgsig"


def sign(key: keys.SigningKey, data: bytes, namespace: str = "git", hash_alg: str = "sha512") -> str:
    """The armored SSH signature of ``data``, as ``ssh-keygen -Y sign -n namespace`` writes it."""
    if hash_alg not in HASH_ALGORITHMS:
        raise ValueError(f"sshsig: hash {hash_alg!r} is not one of {', '.join(HASH_ALGORITHMS)}")
    if not namespace:
        raise ValueError("sshsig: the namespace must not be empty (git uses 'git')")
    signature = key.sign_raw(_signed_data(data, namespace, hash_alg))
    blob = b"".join(
        [
            _MAGIC,
            _VERSION.to_bytes(4, "big"),
            keys.ssh_string(key.public_key().wire()),
            keys.ssh_string(namespace.encode("utf-8")),
            keys.ssh_string(b""),  # reserved
            keys.ssh_string(hash_alg.encode("ascii")),
            keys.ssh_string(keys.ssh_string(keys.KEY_TYPE.encode()) + keys.ssh_string(signature)),
        ]
    )
    return _armor(blob)


def verify(armored: str, data: bytes, namespace: str) -> keys.PublicKey | None:
    """The key that made this Ed25519 SSH signature of ``data`` in ``namespace``, or None.

    Only the signature is checked here; whether the returned key is trusted is the caller's question.
    Anything malformed, another namespace, another key type or a bad signature gives None.
    """
    blob = _unarmor(armored)
    if blob is None:
        return None
    try:
        return _verify_blob(blob, data, namespace)
    except ValueError:
        return None


def sign_commit_buffer(key: keys.SigningKey, commit_bytes: bytes) -> bytes:
    """The commit object text with a ``gpgsig`` header holding the SSH signature of ``commit_bytes``.

    Like git's ``add_header_signature``: the header goes at the end of the header block (after the
    committer line, or after ``encoding`` when present), and every signature line after the first is
    continued with a single leading space.
    """
    header_end = commit_bytes.find(b"\n\n")
    header = commit_bytes if header_end < 0 else commit_bytes[: header_end + 1]
    if not header.startswith(b"tree ") or b"\ncommitter " not in b"\n" + header:
        raise ValueError("sshsig: not a commit object buffer (expected tree ... committer headers)")
    if any(line.startswith(_GPGSIG + b" ") for line in header.split(b"\n")):
        raise ValueError("sshsig: the commit buffer is already signed (it has a gpgsig header)")
    armored = sign(key, commit_bytes, namespace="git").encode("ascii")
    inserted = _GPGSIG + b" " + armored.rstrip(b"\n").replace(b"\n", b"\n ") + b"\n"
    position = len(commit_bytes) if header_end < 0 else header_end + 1
    return commit_bytes[:position] + inserted + commit_bytes[position:]


def _signed_data(data: bytes, namespace: str, hash_alg: str) -> bytes:
    digest = HASH_ALGORITHMS[hash_alg](data).digest()
    return b"".join(
        [
            _MAGIC,
            keys.ssh_string(namespace.encode("utf-8")),
            keys.ssh_string(b""),  # reserved
            keys.ssh_string(hash_alg.encode("ascii")),
            keys.ssh_string(digest),
        ]
    )


def _verify_blob(blob: bytes, data: bytes, namespace: str) -> keys.PublicKey | None:
    reader = _Reader(blob)
    if reader.take(len(_MAGIC)) != _MAGIC or int.from_bytes(reader.take(4), "big") != _VERSION:
        return None
    public_wire = reader.string()
    signed_namespace = reader.string()
    reader.string()  # reserved
    hash_alg = reader.string().decode("ascii", "replace")
    signature_wire = reader.string()
    if signed_namespace != namespace.encode("utf-8") or hash_alg not in HASH_ALGORITHMS:
        return None
    public = _ed25519_from_wire(public_wire)
    signature = _Reader(signature_wire)
    if signature.string() != keys.KEY_TYPE.encode() or public is None:
        return None
    raw_signature = signature.string()
    if public.verify_raw(_signed_data(data, namespace, hash_alg), raw_signature):
        return public
    return None


def _ed25519_from_wire(wire: bytes) -> keys.PublicKey | None:
    reader = _Reader(wire)
    if reader.string() != keys.KEY_TYPE.encode():
        return None
    raw = reader.string()
    return keys.PublicKey(raw=raw) if len(raw) == 32 else None


def _armor(blob: bytes) -> str:
    body = base64.b64encode(blob).decode("ascii")
    lines = [body[start : start + _WRAP] for start in range(0, len(body), _WRAP)]
    return "\n".join([_BEGIN, *lines, _END]) + "\n"


def _unarmor(armored: str) -> bytes | None:
    text = armored.strip()
    if not text.startswith(_BEGIN) or not text.endswith(_END):
        return None
    body = "".join(text[len(_BEGIN) : -len(_END)].split())
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None


class _Reader:
    """Reads SSH wire fields; running past the end raises ValueError."""

    __slots__ = ("_data", "_offset")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def take(self, count: int) -> bytes:
        end = self._offset + count
        if end > len(self._data):
            raise ValueError("sshsig: truncated field")
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk

    def string(self) -> bytes:
        return self.take(int.from_bytes(self.take(4), "big"))
