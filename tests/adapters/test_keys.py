"""keys: Ed25519 keys from ssh-keygen and openssl files, fingerprints, pack signatures, keygen.

Real tools only: keys are made by ssh-keygen and openssl, fingerprints compared with ssh-keygen -lf,
and signatures checked by openssl pkeyutl.
"""

from __future__ import annotations

import base64
import pathlib
import shutil
import stat
import subprocess
from collections import abc

import pytest
from cryptography.hazmat.primitives import serialization

from gitopsd.adapters import keys
from tests import gitutil

DATA = b'{"checksum":"sha256:abc","version":"1.2.3"}'


def run(*args: str | pathlib.Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(a) for a in args], input=stdin, capture_output=True, check=True)


def ssh_keygen_key(directory: pathlib.Path, name: str = "id_ed25519") -> pathlib.Path:
    return gitutil.ssh_key(directory, name, comment="test@example")


def openssl_key(directory: pathlib.Path, name: str = "pkcs8.pem") -> pathlib.Path:
    return gitutil.pkcs8_key(directory, name)


def secret_bytes(path: pathlib.Path) -> list[bytes]:
    """Pieces of the private key file that must never appear in output: its base64 lines."""
    return [line for line in path.read_bytes().splitlines() if line and not line.startswith(b"-----")]


def test_tools_are_installed() -> None:
    assert shutil.which("ssh-keygen"), "ssh-keygen (openssh-client) is required"
    assert shutil.which("openssl"), "openssl is required"


def test_sign_and_verify_round_trip(tmp_path: pathlib.Path) -> None:
    key = keys.load_private_key(ssh_keygen_key(tmp_path))
    signature = key.sign(DATA)
    assert len(base64.b64decode(signature, validate=True)) == 64
    assert signature.endswith("==")  # standard base64 with padding
    assert key.public_key().verify(DATA, signature)


def test_tampered_data_or_signature_fails_verification(tmp_path: pathlib.Path) -> None:
    key = keys.load_private_key(ssh_keygen_key(tmp_path))
    signature = base64.b64decode(key.sign(DATA))
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    public = key.public_key()
    assert not public.verify(DATA[:-1] + b"!", key.sign(DATA))
    assert not public.verify(DATA, base64.b64encode(flipped).decode())
    assert not public.verify(DATA, "not base64 !!")
    assert not public.verify(DATA, base64.b64encode(b"short").decode())


def test_ssh_keygen_key_fingerprint_and_openssh_line_match_ssh_keygen(tmp_path: pathlib.Path) -> None:
    path = ssh_keygen_key(tmp_path)
    public = keys.load_private_key(path).public_key()
    listed = run("ssh-keygen", "-lf", path).stdout.decode().split()
    assert public.key_id() == listed[1]
    assert listed[-1] == "(ED25519)"
    expected_line = pathlib.Path(f"{path}.pub").read_text().split()
    assert public.openssh() == " ".join(expected_line[:2])


def test_pkcs8_and_openssh_forms_of_one_key_sign_identically(tmp_path: pathlib.Path) -> None:
    ssh_path = ssh_keygen_key(tmp_path)
    # ssh-keygen -m PKCS8 still writes OpenSSH format for Ed25519 (OpenSSH 9.2); re-encode the same
    # key as PKCS#8 PEM to load one secret through both parsers.
    private = serialization.load_ssh_private_key(ssh_path.read_bytes(), password=None)
    pkcs8_path = tmp_path / "same.pem"
    pkcs8_path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    assert pkcs8_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    from_ssh, from_pem = keys.load_private_key(ssh_path), keys.load_private_key(pkcs8_path)
    assert from_ssh.sign(DATA) == from_pem.sign(DATA)
    assert from_ssh.public_key() == from_pem.public_key()


def test_openssl_pkcs8_key_signature_verifies_with_openssl(tmp_path: pathlib.Path) -> None:
    key_path = openssl_key(tmp_path)
    run("openssl", "pkey", "-in", key_path, "-pubout", "-out", tmp_path / "pub.pem")
    (tmp_path / "data").write_bytes(DATA)
    key = keys.load_private_key(key_path)
    (tmp_path / "sig").write_bytes(base64.b64decode(key.sign(DATA)))
    verified = run(
        "openssl", "pkeyutl", "-verify", "-pubin", "-inkey", tmp_path / "pub.pem", "-rawin",
        "-in", tmp_path / "data", "-sigfile", tmp_path / "sig",
    )  # fmt: skip
    assert b"Signature Verified Successfully" in verified.stdout
    (trusted,) = keys.load_public_keys(tmp_path / "pub.pem")
    assert trusted == key.public_key()


def test_fingerprint_of_pkcs8_key_matches_ssh_keygen_on_its_public_line(tmp_path: pathlib.Path) -> None:
    public = keys.load_private_key(openssl_key(tmp_path)).public_key()
    (tmp_path / "k.pub").write_text(public.openssh() + " openssl-key\n")
    assert run("ssh-keygen", "-lf", tmp_path / "k.pub").stdout.decode().split()[1] == public.key_id()


def test_repr_and_str_show_no_key_material(tmp_path: pathlib.Path) -> None:
    path = ssh_keygen_key(tmp_path)
    key = keys.load_private_key(path)
    raw = key.private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    shown = repr(key) + str(key) + repr([key]) + f"{key!r}"
    assert shown.startswith(f"SigningKey({key.public_key().key_id()})")
    for secret in [raw.hex(), base64.b64encode(raw).decode(), *(s.decode() for s in secret_bytes(path))]:
        assert secret not in shown


def test_folder_with_one_key_among_other_secret_files_loads_it(tmp_path: pathlib.Path) -> None:
    # Shaped like a mounted Kubernetes Secret: hidden ..data dir, visible symlinks into it.
    versioned = tmp_path / "..2024_01_01"
    versioned.mkdir()
    ssh_keygen_key(versioned, "ssh-privatekey")
    (versioned / "known_hosts").write_text("github.com ssh-ed25519 AAAA\n")
    (tmp_path / "..data").symlink_to(versioned.name)
    for name in ["ssh-privatekey", "ssh-privatekey.pub", "known_hosts"]:
        (tmp_path / name).symlink_to(f"..data/{name}")
    key = keys.load_private_key(tmp_path)
    assert key.public_key() == keys.load_private_key(versioned / "ssh-privatekey").public_key()


def test_folder_with_several_keys_prefers_the_one_known_name(tmp_path: pathlib.Path) -> None:
    ssh_keygen_key(tmp_path, "signing.key")
    openssl_key(tmp_path, "backup.pem")
    chosen = keys.load_private_key(tmp_path)
    assert chosen.public_key() == keys.load_private_key(tmp_path / "signing.key").public_key()


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (["signing.key", "tls.key"], "several private keys (signing.key, tls.key); pass the file itself"),
        (["a.pem", "b.pem"], "several private keys (a.pem, b.pem)"),
        ([], "no private key file found"),
    ],
    ids=["two-known-names", "two-unknown-names", "empty"],
)
def test_ambiguous_or_empty_folder_is_an_error_naming_it(
    tmp_path: pathlib.Path, files: list[str], message: str
) -> None:
    for name in files:
        openssl_key(tmp_path, name)
    with pytest.raises(keys.KeyLoadError) as caught:
        keys.load_private_key(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path}: ")
    assert message in str(caught.value)
    assert caught.value.reason == "KeyInvalid"


def _rsa_key(directory: pathlib.Path) -> pathlib.Path:
    path = directory / "rsa"
    run("ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", path)
    return path


def _encrypted_openssh(directory: pathlib.Path) -> pathlib.Path:
    path = directory / "locked"
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "hunter22", "-f", path)
    return path


def _encrypted_pkcs8(directory: pathlib.Path) -> pathlib.Path:
    path = openssl_key(directory, "plain.pem")
    run("openssl", "pkcs8", "-topk8", "-in", path, "-out", directory / "locked.pem", "-passout", "pass:hunter22")
    return directory / "locked.pem"


def _garbage(directory: pathlib.Path) -> pathlib.Path:
    path = directory / "garbage.key"
    path.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAnotreallyakey\n-----END OPENSSH PRIVATE KEY-----\n")
    return path


def _public_only(directory: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(f"{ssh_keygen_key(directory)}.pub")


def _missing(directory: pathlib.Path) -> pathlib.Path:
    return directory / "nope.key"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_rsa_key, "not Ed25519; create an Ed25519 key"),
        (_encrypted_openssh, "is encrypted; remove the passphrase (ssh-keygen -p -N ''"),
        (_encrypted_pkcs8, "is encrypted; write it unencrypted"),
        (_garbage, "malformed or unsupported; regenerate it"),
        (_public_only, "not an Ed25519 private key; expected OpenSSH or PKCS#8 PEM"),
        (_missing, "signing key not found; check the path"),
    ],
    ids=["rsa", "encrypted-openssh", "encrypted-pkcs8", "garbage", "public-key-given", "missing"],
)
def test_bad_private_key_error_is_one_line_naming_the_file_without_key_material(
    tmp_path: pathlib.Path, make: abc.Callable[[pathlib.Path], pathlib.Path], message: str
) -> None:
    path = make(tmp_path)
    with pytest.raises(keys.KeyLoadError) as caught:
        keys.load_private_key(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: ")
    assert message in text
    assert "\n" not in text
    if path.exists():
        for secret in secret_bytes(path):
            assert secret.decode() not in text


def test_trusted_keys_from_openssh_allowed_signers_and_pem_files_in_a_folder(tmp_path: pathlib.Path) -> None:
    first, second, third = (keys.load_private_key(ssh_keygen_key(tmp_path, f"k{i}")) for i in range(3))
    fourth = keys.load_private_key(openssl_key(tmp_path, "k3.pem"))
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "a.pub").write_text(f"# rotation: old and new\n{first.public_key().openssh()} old key\n\n")
    (trusted / "allowed_signers").write_text(
        f'gitopsd@localhost namespaces="git" {second.public_key().openssh()}\n'
        f'ops@example.com,ci@example.com namespaces="git,file" valid-after="20200101" '
        f"{third.public_key().openssh()} ci key\n"
        f"ssh-bot@example.com {first.public_key().openssh()}\n"
    )
    run("openssl", "pkey", "-in", tmp_path / "k3.pem", "-pubout", "-out", trusted / "k3.pub.pem")
    (trusted / ".hidden").write_text("not a key")
    loaded = keys.load_public_keys(trusted)
    assert loaded == (first.public_key(), second.public_key(), third.public_key(), fourth.public_key())
    assert keys.verify_any(loaded, DATA, third.sign(DATA)) == third.public_key()
    assert keys.verify_any(loaded, DATA + b"x", third.sign(DATA)) is None
    stranger = keys.load_private_key(ssh_keygen_key(tmp_path, "stranger"))
    assert keys.verify_any(loaded, DATA, stranger.sign(DATA)) is None


def test_trusted_key_file_written_by_ssh_keygen_loads(tmp_path: pathlib.Path) -> None:
    path = ssh_keygen_key(tmp_path)
    (public,) = keys.load_public_keys(f"{path}.pub")
    assert public == keys.load_private_key(path).public_key()
    assert public.comment == "test@example"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("ssh-ed25519\n", ":1: no 'ssh-ed25519 AAAA...' key on this line"),
        ("# ok\nhello world\n", ":2: no 'ssh-ed25519 AAAA...' key on this line"),
        ("ssh-ed25519 AAAA!!!\n", ":1: the key's base64 is damaged"),
        ("ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ==\n", ":1: the key blob is not an ssh-ed25519 key"),
        ("", "no Ed25519 public key found"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n", "this is a private key; trusted keys must be public"),
    ],
    ids=["type-without-blob", "no-key", "bad-base64", "rsa-blob-labelled-ed25519", "empty", "private-key"],
)
def test_bad_trusted_keys_file_error_names_the_file_and_line(
    tmp_path: pathlib.Path, content: str, message: str
) -> None:
    path = tmp_path / "trusted.pub"
    path.write_text(content)
    with pytest.raises(keys.KeyLoadError) as caught:
        keys.load_public_keys(path)
    assert str(caught.value).startswith(f"{path}")
    assert message in str(caught.value)


def test_rsa_trusted_key_is_refused(tmp_path: pathlib.Path) -> None:
    rsa_pub = pathlib.Path(f"{_rsa_key(tmp_path)}.pub")
    with pytest.raises(keys.KeyLoadError, match=r":1: key type ssh-rsa is not supported"):
        keys.load_public_keys(rsa_pub)


def test_generate_writes_a_key_ssh_keygen_accepts(tmp_path: pathlib.Path) -> None:
    generated = keys.generate(tmp_path / "keys", principal="bot@example.com")
    assert generated.private_path == tmp_path / "keys" / "signing.key"
    assert stat.S_IMODE(generated.private_path.stat().st_mode) == 0o600
    assert generated.private_path.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    derived = run("ssh-keygen", "-y", "-f", generated.private_path).stdout.decode().split()
    assert " ".join(derived[:2]) == generated.public_key.openssh()
    assert generated.public_path.read_text() == f"{generated.public_key.openssh()} gitopsd\n"
    assert generated.allowed_signers == f'bot@example.com namespaces="git" {generated.public_key.openssh()}'
    assert keys.load_private_key(tmp_path / "keys").public_key() == generated.public_key
    assert keys.load_public_keys(generated.public_path) == (generated.public_key,)


def test_generate_refuses_to_overwrite_unless_forced(tmp_path: pathlib.Path) -> None:
    first = keys.generate(tmp_path)
    with pytest.raises(keys.KeyLoadError, match="a key already exists; keep it, or pass force"):
        keys.generate(tmp_path)
    assert keys.load_private_key(tmp_path).public_key() == first.public_key
    second = keys.generate(tmp_path, force=True)
    assert second.public_key != first.public_key
    assert keys.load_private_key(tmp_path).public_key() == second.public_key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signing.key", "signing.key.pub"]
