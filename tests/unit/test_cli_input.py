"""Bad input to `jobkit hosts add`, `reconcile`, `conformance` and `lab`: one line `jobkit: error: ...`
on stderr and exit 2, never a traceback, and nothing started before the input was checked."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import subprocess
from pathlib import Path

import asyncssh
import pytest

from jobkit import cli
from jobkit.errors import StoreError
from jobkit.store import Store

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run; assert exit 2 with exactly one line `jobkit: error: ...` on stderr; return that line."""
    rc, _, err = run(capsys, *argv)
    assert rc == 2, err
    assert err.startswith("jobkit: error: "), err
    assert err.count("\n") == 1, err
    return err


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("JOBKIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("JOBKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "home"


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """A usable key, its .pub, a passphrase-protected key, garbage, and a host key line."""
    d = tmp_path / "keys"
    d.mkdir()
    key = asyncssh.generate_private_key("ssh-ed25519")
    (d / "id").write_bytes(key.export_private_key())
    (d / "id.pub").write_bytes(key.export_public_key())
    # as people make them (OpenSSH format; asyncssh here could not write one without bcrypt)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", str(d / "locked")],
                   check=True, timeout=30, stdin=subprocess.DEVNULL)
    (d / "garbage").write_bytes(os.urandom(300))
    host = asyncssh.generate_private_key("ssh-ed25519")
    (d / "host.pub").write_bytes(host.export_public_key())
    return {n: d / n for n in ("id", "id.pub", "locked", "garbage", "host.pub")}


def host_key(keys: dict[str, Path]) -> str:
    return " ".join(keys["host.pub"].read_text().split()[:2])


def add(capsys: pytest.CaptureFixture[str], keys: dict[str, Path], url: str, *extra: str) -> str:
    return usage_error(capsys, "hosts", "add", "h", url, "--key", str(keys["id"]), *extra)


# --- hosts add: the address ---------------------------------------------------------------------
@pytest.mark.parametrize(("url", "says"), [
    ("ssh://u@h:abc", "port 'abc'"),
    ("ssh://u@h:99999", "port '99999'"),
    ("ssh://u@h:0", "port 0"),
    ("ssh://u@h:", "empty port"),
    ("ssh://@h:22", "empty user before '@'"),
    ("ssh://u@:22", "names no host"),
    ("http://u@h", "ssh://[user@]host[:port]"),
    ("u@h", "ssh://[user@]host[:port]"),
    ("ssh://u:secret@h", "no password"),
    ("ssh://u@h/some/path", "path or query"),
    ("ssh://u@[::1", "ssh://[user@]host[:port]"),
])
def test_hosts_add_rejects_a_bad_address(url: str, says: str, home: Path, keys: dict[str, Path],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    err = add(capsys, keys, url, "--known-host-key", host_key(keys))
    assert says in err


# --- hosts add: the client key ------------------------------------------------------------------
@pytest.mark.parametrize(("which", "says"), [
    ("id.pub", "is a public key: --key needs the private key (the private key is probably"),
    ("garbage", "is not a private key"),
    ("locked", "passphrase-protected keys are not supported: use an unencrypted key"),
    ("missing", "does not exist"),
    ("dir", "is a directory"),
])
def test_hosts_add_loads_the_key_and_says_what_is_wrong_with_it(which: str, says: str, home: Path,
                                                                keys: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = {"missing": tmp_path / "nope", "dir": tmp_path}.get(which) or keys[which]
    err = usage_error(capsys, "hosts", "add", "h", "ssh://u@h", "--key", str(path),
                      "--known-host-key", host_key(keys))
    assert says in err
    assert not (home / "store.db").exists(), "nothing is stored from bad input"


def test_hosts_add_rejects_a_host_key_that_is_not_one(home: Path, keys: dict[str, Path],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert "is not an OpenSSH public key" in add(capsys, keys, "ssh://u@h", "--known-host-key", "garbage")


# --- hosts add: known_hosts ---------------------------------------------------------------------
def hashed(host: str) -> str:
    salt = os.urandom(20)
    digest = hmac.new(salt, host.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


@pytest.mark.parametrize(("content", "says"), [
    (None, "does not exist"),
    ("DIR", "is a directory"),
    (b"\x7fELF\x02\x01\x01\x00\x00\x00binary", "not a known_hosts file (binary data)"),
    (b"\xff\xfe latin-1 \xe9\n", "not a known_hosts file (not UTF-8 text)"),
    ("other.example {key}\n", "no host key for [h.example]:2222"),
    ("h.example {key}\n", "no host key for [h.example]:2222"),  # port 22 only
    ("# nothing\n\n", "no host key for [h.example]:2222"),
    ("@revoked [h.example]:2222 {key}\n", "no host key for [h.example]:2222"),
    ("{key} comment\n", "holds a bare public key, not known_hosts lines"),
])
def test_hosts_add_checks_the_known_hosts_file(content: str | bytes | None, says: str, home: Path,
                                               keys: dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    kh = tmp_path / "known_hosts"
    if content == "DIR":
        kh.mkdir()
    elif isinstance(content, bytes):
        kh.write_bytes(content)
    elif content is not None:
        kh.write_text(content.format(key=host_key(keys)))
    err = add(capsys, keys, "ssh://u@h.example:2222", "--known-hosts", str(kh))
    assert says in err


@pytest.mark.parametrize("line", ["[h.example]:2222 {key}", "{hashed} {key}", "other,[h.example]:2222 {key} c",
                                  "[h.*]:2222 {key}"])
def test_hosts_add_takes_the_key_of_that_host_and_port(line: str, home: Path, keys: dict[str, Path],
                                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = " ".join(asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().split()[:2])
    kh = tmp_path / "known_hosts"
    kh.write_text(f"h.example {other}\n[x]:2222 {other}\n"
                  + line.format(key=host_key(keys), hashed=hashed("[h.example]:2222")) + "\n")
    rc, _out, err = run(capsys, "hosts", "add", "h", "ssh://u@h.example:2222", "--key", str(keys["id"]),
                       "--known-hosts", str(kh))
    assert rc == 0, err
    store = Store(home / "store.db")
    try:
        spec = store.host("h")
    finally:
        store.close()
    assert spec.known_host_key == host_key(keys)
    assert (spec.address, spec.port, spec.user) == ("h.example", 2222, "u")
    assert spec.private_key == keys["id"].resolve()


def test_hosts_add_takes_one_way_of_pinning_the_host_key(home: Path, keys: dict[str, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    err = add(capsys, keys, "ssh://u@h", "--known-host-key", host_key(keys), "--known-hosts", str(tmp_path))
    assert "not allowed with argument" in err


# --- the store ----------------------------------------------------------------------------------
def test_jobkit_home_that_is_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f").write_text("")
    monkeypatch.setenv("JOBKIT_HOME", str(tmp_path / "f"))
    assert "is not a directory" in usage_error(capsys, "hosts", "ls")


def test_a_store_that_is_a_directory(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (home / "store.db").mkdir(parents=True)
    assert "is a directory" in usage_error(capsys, "hosts", "ls")


def test_a_store_error_is_a_usage_error(home: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    def unusable(path: Path) -> None:
        raise StoreError(f"cannot use the store {path}: file is not a database")

    monkeypatch.setattr("jobkit.runtime_cli.Store", unusable)
    assert "file is not a database" in usage_error(capsys, "hosts", "ls")


# --- reconcile ------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "-1", "0", "inf", "-inf", "abc", ""])
def test_reconcile_timeout_must_be_a_positive_finite_number(value: str, home: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(capsys, "reconcile", "--timeout", value)
    assert "argument --timeout" in err
    assert not home.exists(), "rejected before the store is opened"


def test_reconcile_timeout_accepts_seconds() -> None:
    from jobkit.userinput import positive_seconds

    assert positive_seconds("0.5") == 0.5
    assert math.isclose(positive_seconds("1e1"), 10.0)


# --- conformance ----------------------------------------------------------------------------------
def nothing_started(home: Path) -> None:
    sessions = home.parent / "cache" / "lab" / "sessions"
    assert not sessions.exists() or not any(sessions.iterdir()), "a lab session was started"


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_conformance_parallel_must_be_at_least_one(value: str, home: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert "argument --parallel" in usage_error(capsys, "conformance", "--target", "local", "--parallel", value)


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_conformance_report_dir_is_checked_before_anything_starts(where: str, home: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" if where == "file" else tmp_path / "file" / "reports"
    err = usage_error(capsys, "conformance", "--target", "local", "--clause", "W-1", "--report-dir", str(target))
    assert "--report-dir" in err
    nothing_started(home)


def test_conformance_report_dir_read_only(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not writable: mode 0500 for a user; for root (who writes through permission bits, as in CI)
    a read-only filesystem mounted there."""
    import subprocess

    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    mounted = os.geteuid() == 0
    if mounted:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "jobkit-ro", str(ro)], check=True)
    try:
        assert "not writable" in usage_error(capsys, "conformance", "--target", "local", "--report-dir", str(ro))
    finally:
        if mounted:
            subprocess.run(["umount", str(ro)], check=True)
        ro.chmod(0o700)
    nothing_started(home)


@pytest.mark.parametrize(("url", "key", "known", "says"), [
    ("ssh://u@h:abc", "id", "kh", "port 'abc'"),
    ("ssh://u@h:99999", "id", "kh", "port '99999'"),
    ("ssh://u@h:22", None, "kh", "needs --key and --known-hosts"),
    ("ssh://u@h:22", "id.pub", "kh", "is a public key"),
    ("ssh://u@h:22", "locked", "kh", "passphrase-protected keys are not supported"),
    ("ssh://u@h:22", "garbage", "kh", "is not a private key"),
    ("ssh://u@h:22", "id", "missing", "does not exist"),
    ("ssh://u@h:22", "id", "dir", "is a directory"),
    ("ssh://u@h:22", "id", "binary", "binary data"),
    ("ssh://u@other:22", "id", "kh", "no host key for other"),
])
def test_conformance_checks_a_real_host_like_hosts_add(url: str, key: str | None, known: str, says: str,
                                                       home: Path, keys: dict[str, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "kh").write_text(f"h {host_key(keys)}\n")
    (tmp_path / "binary").write_bytes(b"\0\1\2")
    known_path = {"missing": tmp_path / "nope", "dir": tmp_path}.get(known, tmp_path / known)
    argv = ["conformance", "--target", url, "--known-hosts", str(known_path), "--report-dir", str(tmp_path / "r")]
    if key:
        argv += ["--key", str(keys[key])]
    assert says in usage_error(capsys, *argv)
    nothing_started(home)


@pytest.mark.parametrize("what", ["dir", "binary"])
def test_conformance_wrapper_must_be_a_text_file(what: str, home: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "binary").write_bytes(b"\x7fELF\0\0")
    wrapper = tmp_path if what == "dir" else tmp_path / "binary"
    err = usage_error(capsys, "conformance", "--target", "local", "--wrapper", str(wrapper))
    assert "wrapper" in err
    nothing_started(home)


def test_conformance_on_a_container_target_without_docker(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    err = usage_error(capsys, "conformance", "--target", "debian-bookworm", "--report-dir", str(tmp_path / "r"))
    assert "need a Docker engine" in err
    nothing_started(home)


# --- lab ------------------------------------------------------------------------------------------
def test_lab_commands_without_docker(home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    rc, _, err = run(capsys, "lab", "down")
    assert rc == 1
    assert err.startswith("jobkit: error: no Docker engine answers"), err
    assert err.count("\n") == 1, err
    assert "needs a Docker engine" in usage_error(capsys, "lab", "up", "busybox")
    rc, out, err = run(capsys, "lab", "ls")
    assert rc == 0
    assert "local" in out
    assert "no Docker engine answers" in err


def test_lab_up_of_an_unknown_target(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "unknown lab target 'solaris'" in usage_error(capsys, "lab", "up", "solaris")
    nothing_started(home)


# --- the real command ---------------------------------------------------------------------------
def test_the_installed_command_prints_one_line_and_exits_2(home: Path, keys: dict[str, Path],
                                                           tmp_path: Path) -> None:
    env = dict(os.environ, JOBKIT_HOME=str(home))
    for argv in (["hosts", "add", "h", "ssh://u@h:abc", "--key", str(keys["id"]), "--known-host-key", host_key(keys)],
                 ["hosts", "add", "h", "ssh://u@h", "--key", str(keys["locked"]), "--known-hosts", str(tmp_path)],
                 ["reconcile", "--timeout", "nan"],
                 ["conformance", "--parallel", "0"]):
        r = subprocess.run([str(ROOT / ".venv" / "bin" / "jobkit"), *argv], capture_output=True, text=True,
                           env=env, timeout=60, check=False)
        assert r.returncode == 2, (argv, r.stderr)
        assert r.stderr.startswith("jobkit: error: "), (argv, r.stderr)
        assert r.stderr.count("\n") == 1, (argv, r.stderr)
        assert r.stdout == ""
