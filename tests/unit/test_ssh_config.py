"""`jobkit hosts add NAME ssh://ALIAS`: hosts the way SSH users already have them (an alias of
~/.ssh/config, keys and host keys from ~/.ssh), and a pinned host key that changed refused."""

from __future__ import annotations

import json
from pathlib import Path

import asyncssh
import pytest

from jobkit import cli
from jobkit.store import Store

pytestmark = pytest.mark.unit


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's home with ~/.ssh: a key, a host key in known_hosts, a config."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("USER", "alice")
    monkeypatch.setenv("LOGNAME", "alice")
    monkeypatch.setenv("JOBKIT_HOME", str(tmp_path / "jobkit"))
    ssh = tmp_path / ".ssh"
    ssh.mkdir(mode=0o700)
    return tmp_path


def keypair(path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    path.write_bytes(key.export_private_key())
    path.with_suffix(".pub").write_bytes(key.export_public_key())


def host_key() -> str:
    return " ".join(asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().split()[:2])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def stored(home: Path, name: str) -> dict[str, object]:
    s = Store(home / "jobkit" / "store.db")
    h = s.host(name)
    s.close()
    return {"address": h.address, "port": h.port, "user": h.user, "key": str(h.private_key),
            "host_key": h.known_host_key}


def test_an_alias_of_the_ssh_config_gives_address_user_port_key_and_known_hosts(
        home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keypair(home / ".ssh" / "build_key")
    hk = host_key()
    (home / ".ssh" / "hosts_of_work").write_text(f"[10.1.2.3]:2222 {hk}\n")
    (home / ".ssh" / "config").write_text(
        "Host other\n  HostName 10.9.9.9\n\n"
        "Host build*\n  HostName 10.1.2.3\n  User builder\n  Port 2222\n  IdentityFile ~/.ssh/build_key\n"
        "  UserKnownHostsFile ~/.ssh/hosts_of_work\n\n"
        "Host *\n  User nobody-else\n")
    rc, out, err = run(capsys, "hosts", "add", "b1", "ssh://build1")
    assert rc == 0, err
    assert stored(home, "b1") == {"address": "10.1.2.3", "port": 2222, "user": "builder",
                                  "key": str(home / ".ssh" / "build_key"), "host_key": hk}
    assert "builder@10.1.2.3:2222" in out
    assert "for build1" in out
    assert "hosts_of_work" in out


def test_what_the_address_gives_wins_over_the_config(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keypair(home / ".ssh" / "id_ed25519")
    hk = host_key()
    (home / ".ssh" / "known_hosts").write_text(f"[10.1.2.3]:2200 {hk}\n")
    (home / ".ssh" / "config").write_text("Host b\n  HostName 10.1.2.3\n  User builder\n  Port 2222\n")
    rc, _, err = run(capsys, "hosts", "add", "b", "ssh://carol@b:2200")
    assert rc == 0, err
    got = stored(home, "b")
    assert (got["user"], got["port"], got["key"]) == ("carol", 2200, str(home / ".ssh" / "id_ed25519"))


def test_without_a_config_ssh_defaults_are_used(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keypair(home / ".ssh" / "id_rsa")  # no id_ed25519, no id_ecdsa: the next default
    hk = host_key()
    (home / ".ssh" / "known_hosts").write_text(f"example.org {hk}\n")
    rc, _, err = run(capsys, "hosts", "add", "ex", "ssh://example.org")
    assert rc == 0, err
    assert stored(home, "ex") == {"address": "example.org", "port": 22, "user": "alice",
                                  "key": str(home / ".ssh" / "id_rsa"), "host_key": hk}


def test_host_key_alias_is_what_known_hosts_is_searched_for(home: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    keypair(home / ".ssh" / "id_ed25519")
    hk = host_key()
    (home / ".ssh" / "known_hosts").write_text(f"10.1.2.3 {host_key()}\nthe-box {hk}\n")
    (home / ".ssh" / "config").write_text("Host box\n  HostName 10.1.2.3\n  HostKeyAlias the-box\n")
    rc, _, err = run(capsys, "hosts", "add", "box", "ssh://box")
    assert rc == 0, err
    assert stored(home, "box")["host_key"] == hk


def test_a_changed_host_key_is_refused_unless_replaced_on_purpose(home: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    keypair(home / ".ssh" / "id_ed25519")
    first, second = host_key(), host_key()
    kh = home / ".ssh" / "known_hosts"
    kh.write_text(f"example.org {first}\n")
    assert run(capsys, "hosts", "add", "ex", "ssh://example.org")[0] == 0
    rc, out, _ = run(capsys, "hosts", "add", "ex", "ssh://example.org")  # the same key again: fine
    assert rc == 0
    assert "host ex updated" in out
    kh.write_text(f"example.org {second}\n")  # reinstalled, or another machine
    rc, out, err = run(capsys, "hosts", "add", "ex", "ssh://example.org")
    assert (rc, out) == (2, "")
    assert err.count("\n") == 1
    fp_first = asyncssh.import_public_key(first).get_fingerprint()
    fp_second = asyncssh.import_public_key(second).get_fingerprint()
    assert "the host key of ex changed" in err
    assert fp_first in err
    assert fp_second in err
    assert "--replace-host-key" in err
    assert stored(home, "ex")["host_key"] == first  # nothing written
    rc, _, err = run(capsys, "hosts", "add", "ex", "ssh://example.org", "--replace-host-key")
    assert rc == 0, err
    assert stored(home, "ex")["host_key"] == second


@pytest.mark.parametrize(("config", "files", "says"), [
    ("Host j\n  ProxyJump bastion\n", ["id_ed25519", "known_hosts"], "through ProxyJump, which jobkit does not follow"),
    ("Host j\n  ProxyCommand nc %h %p\n", ["id_ed25519", "known_hosts"], "through ProxyCommand"),
    ("Host j\n  Port notaport\n", ["id_ed25519", "known_hosts"], "SSH config"),
    ("Match bogus\n", ["id_ed25519", "known_hosts"], "Invalid match condition"),
    ("", ["known_hosts"], "no private key for j: none of"),
    ("", ["id_ed25519"], "no known_hosts file"),
    ("", ["id_ed25519", "known_hosts-other"], "no host key for j in"),
    ("Host j\n  IdentityFile ~/.ssh/nothing-here\n", ["id_ed25519", "known_hosts"], "nothing-here"),
])
def test_what_cannot_be_used_is_one_line_and_exit_2(home: Path, capsys: pytest.CaptureFixture[str], config: str,
                                                    files: list[str], says: str) -> None:
    (home / ".ssh" / "config").write_text(config)
    if "id_ed25519" in files:
        keypair(home / ".ssh" / "id_ed25519")
    if "known_hosts" in files:
        (home / ".ssh" / "known_hosts").write_text(f"j {host_key()}\n")
    if "known_hosts-other" in files:
        (home / ".ssh" / "known_hosts").write_text(f"k {host_key()}\n")
    rc, out, err = run(capsys, "hosts", "add", "j", "ssh://j")
    assert (rc, out) == (2, ""), err
    assert err.startswith("jobkit: error: "), err
    assert err.count("\n") == 1, err
    assert says in err


def test_a_passphrase_protected_default_key_says_why_it_cannot_be_used(home: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    (home / ".ssh" / "id_ed25519").write_bytes(key.export_private_key("pkcs8-pem", passphrase="secret"))
    (home / ".ssh" / "known_hosts").write_text(f"j {host_key()}\n")
    rc, _, err = run(capsys, "hosts", "add", "j", "ssh://j")
    assert rc == 2
    assert "no usable private key for j" in err
    assert "passphrase" in err


def test_an_explicit_config_that_does_not_exist_is_refused(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "hosts", "add", "j", "ssh://j", "--ssh-config", str(home / "nope"))
    assert rc == 2
    assert "SSH config" in err
    assert "does not exist" in err


def test_hosts_ls_shows_what_was_resolved(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keypair(home / ".ssh" / "id_ed25519")
    (home / ".ssh" / "known_hosts").write_text(f"[10.0.0.7]:2022 {host_key()}\n")
    (home / ".ssh" / "config").write_text("Host w\n  HostName 10.0.0.7\n  Port 2022\n")
    assert run(capsys, "hosts", "add", "w", "ssh://w")[0] == 0
    rc, out, _ = run(capsys, "hosts", "ls", "--json")
    assert rc == 0
    assert json.loads(out)[0] == {"name": "w", "address": "10.0.0.7", "port": 2022, "user": "alice",
                                  "base_dir": None, "scheduler": "tmux", "partition": None}
