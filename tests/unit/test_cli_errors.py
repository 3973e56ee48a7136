"""Every failure a user can cause ends as one line on stderr with a documented exit code --
never a traceback (issue 15, item 9)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from attest.cli import main

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def garbage(tmp_path: Path) -> str:
    path = tmp_path / "garbage.pem"
    path.write_text("garbage\n")
    return str(path)


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("attest: "), err
    return err


@pytest.mark.parametrize(
    ("argv", "code", "says"),
    [
        (["verify", "not-a-url", "--tofu"], 2, "not an http(s) URL"),
        (["verify", "ftp://node/", "--tofu"], 2, "not an http(s) URL"),
        (["verify", "http://127.0.0.1:99999", "--tofu"], 2, "not an http(s) URL"),
        (["verify", "http://node:port", "--tofu"], 2, "not an http(s) URL"),
        (["verify", "http://u:pw0rd@127.0.0.1:9", "--tofu"], 2, "with a user or password"),
        # Flags that contradict each other, or need one that is missing: a usage error, not a
        # verdict about the node (these were ignored, or read as could-not-appraise, exit 12).
        (["verify", "http://127.0.0.1:9", "--guest-id", "g"], 2, "--guest-id: goes with --host"),
        (["verify", "http://127.0.0.1:9", "--no-guest-vtpm"], 2, "--no-guest-vtpm: goes with"),
        (["verify", "http://127.0.0.1:9", "--snp", "off"], 2, "--snp: goes with --host"),
        (
            ["verify", "http://127.0.0.1:9", "--host-root", "{g}", "--snp-release", "1"],
            2,
            "--host-root: goes with --host HOST_URL: a host and its guest (as do --snp-release)",
        ),
        (["verify", "http://127.0.0.1:9", "--root", "{g}"], 2, "give --root and --snapshot"),
        (
            ["verify", "http://127.0.0.1:9", "--trust-dir", "/tmp", "--snapshot", "{g}"],
            2,
            "give --trust-dir or --root with --snapshot, not both",
        ),
        (
            ["verify", "http://127.0.0.1:8", "--host", "http://127.0.0.1:9", "--snp", "off"]
            + ["--snp-release", "1.0.0"],
            2,
            "--snp-release appraises the SNP report: not with --snp off",
        ),
        (["verify", "https://token@127.0.0.1:9", "--tofu"], 2, "with a user or password"),
        (["verify", "http://127.0.0.1:9", "--tofu", "--ear-key", "{g}"], 2, "--ear-key: {g}"),
        (["verify", "http://127.0.0.1:9", "--ek-ca", "{g}"], 3, "{g}"),
        (
            [
                "verify",
                "http://127.0.0.1:9",
                "--tofu",
                "--client-cert",
                "{g}",
                "--client-key",
                "{g}",
            ],
            2,
            "--client-cert: {g}",
        ),
        (["verify", "http://127.0.0.1:9", "--tofu", "--policy", "{g}"], 2, "--policy: {g}"),
        (
            ["verify", "http://127.0.0.1:9", "--tofu", "--root", "{g}", "--snapshot", "{g}"],
            3,
            "malformed input: {g}: not JSON",
        ),
        (["verify", "http://127.0.0.1:9", "--tofu", "--ear-key", "/nonexistent/k.pem"], 6, ""),
        (
            ["verify", "http://127.0.0.1:9", "--tofu", "--client-cert", "/no/c.pem"]
            + ["--client-key", "{g}"],
            2,
            "--client-cert: /no/c.pem: no such file",
        ),
    ],
)
def test_bad_input_is_one_line_and_a_documented_exit_code(
    argv: list[str],
    code: int,
    says: str,
    garbage: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = [a.replace("{g}", garbage) for a in argv] + ["--state", str(tmp_path / "state")]
    assert main(args) == code
    assert says.replace("{g}", garbage) in one_line(capsys)


def test_a_password_in_a_node_url_is_refused_without_being_echoed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for cmd in (["verify"], ["registry", "push"]):
        argv = [*cmd, "http://admin:pw0rd@127.0.0.1:9"]
        (tmp_path / "x").write_text("{}")
        argv += ["--state", str(tmp_path / "s")] if cmd == ["verify"] else [str(tmp_path / "x")]
        assert main(argv) == 2
        out = capsys.readouterr()
        assert "pw0rd" not in out.out + out.err and "with a user or password" in out.err


def test_unexpected_errors_are_one_line_with_their_own_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import attest.cli.eventlog as eventlog

    def boom(args: object) -> int:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(eventlog, "cmd_show", boom)
    assert main(["eventlog", "show", "x"]) == 70
    assert "unexpected error (ZeroDivisionError): a bug" in one_line(capsys)


@pytest.mark.parametrize("command", ["show", "replay", "facts"])
def test_an_oversized_event_log_is_refused_by_its_size(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sparse 200 MB file of zeros is not read whole (and, as zero padding, 'parsed' as a
    one-event log): over the input bound it is exit 6, at once; /dev/zero likewise."""
    huge = tmp_path / "huge.bin"
    with huge.open("wb") as f:
        f.truncate(200 << 20)
    for path in (huge, Path("/dev/zero")):
        assert main(["eventlog", command, str(path)]) == 6
        assert f"attest: cannot access {path}: file larger than" in one_line(capsys)


def test_an_ear_key_that_never_ends_is_refused_by_its_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["verify", "http://127.0.0.1:9", "--tofu", "--ear-key", "/dev/zero"]
    assert main([*argv, "--state", str(tmp_path / "state")]) == 6
    assert "attest: cannot access /dev/zero: file larger than 16384 bytes" in one_line(capsys)


@pytest.mark.parametrize(
    "argv",
    [
        ["ek", "verify", "{g}"],
        ["manifest", "verify", "--root", "{g}"],
        ["upgrade", "stage", "{g}", "--snapshot", "{g}", "--tcti", "device:/nonexistent"],
    ],
    ids=["ek", "manifest", "upgrade-stage"],
)
@pytest.mark.parametrize(
    "now", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-14:00", "yesterday"]
)
def test_a_now_out_of_range_in_utc_is_a_usage_error(
    argv: list[str], now: str, garbage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Year 1 at +01:00 parses, but is before datetime.min in UTC: every comparison raised
    OverflowError (exit 70); upgrade stage's --now took no check at all."""
    assert main([a.replace("{g}", garbage) for a in argv] + ["--now", now]) == 2
    assert "configuration error: --now: " in one_line(capsys)


def test_fleet_refuses_a_non_boolean_or_unknown_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = f"sqlite:///{tmp_path / 'f.db'}"
    monkeypatch.setenv("ATTEST_FLEET_TOFU", "enabled")
    assert main(["fleet", "add", "http://127.0.0.1:9", "--db", db]) == 2
    assert "ATTEST_FLEET_TOFU" in one_line(capsys)
    monkeypatch.delenv("ATTEST_FLEET_TOFU")
    monkeypatch.setenv("ATTEST_FLEET_TOFUU", "1")
    assert main(["fleet", "ls", "--db", db]) == 2
    assert "ATTEST_FLEET_TOFUU" in one_line(capsys)


def _attest(args: list[str], stdout: int | object) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "attest", *args], stdout=stdout, stderr=subprocess.PIPE, env=env
    )


def test_a_reader_that_went_away_stops_attest_quietly(tmp_path: Path) -> None:
    """``attest ... | head``: the reader closes the pipe; attest stops without an error line,
    with the status of a tool stopped by SIGPIPE (141), as ``cat`` would."""
    proc = _attest(
        ["manifest", "keygen", "--type", "ed25519", "--out", str(tmp_path / "k")], subprocess.PIPE
    )
    assert proc.stdout is not None
    proc.stdout.close()  # before attest writes anything: its first write finds no reader
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141 and err == b"", err


def test_a_full_stdout_is_still_an_error_line(tmp_path: Path) -> None:
    with open("/dev/full", "wb") as full:
        proc = _attest(
            ["manifest", "keygen", "--type", "ed25519", "--out", str(tmp_path / "k")], full
        )
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 6
    assert err.decode() == "attest: cannot access: No space left on device\n"


def test_a_file_name_that_is_not_utf8_is_echoed_as_its_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a locale whose stdout is strict, printing the surrogate-escaped name was a
    UnicodeEncodeError (exit 70); it is written back as the bytes it came as, as ls does."""
    name = os.fsencode(tmp_path) + b"/log\xff.bin"
    with open(name, "wb") as f:
        f.write(bytes(64))  # zeros: a one-event SHA-1 log (zero padding ends it)
    monkeypatch.setenv("PYTHONIOENCODING", "utf-8:strict")
    proc = _attest(["eventlog", "show", os.fsdecode(name)], subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (0, b"")
    assert out.startswith(b"# " + name + b": sha1 log")


def test_ear_key_public_halves_are_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Neither keygen's .pub.json nor a PEM public key passes for the EAR signing key."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ec

    assert main(["manifest", "keygen", "--type", "ecdsa-p256", "--out", str(tmp_path / "k")]) == 0
    capsys.readouterr()
    pem = tmp_path / "pub.pem"
    pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem.write_bytes(pub.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo))
    for key in (tmp_path / "k.pub.json", pem):
        argv = ["verify", "http://127.0.0.1:9", "--tofu", "--ear-key", str(key)]
        assert main([*argv, "--state", str(tmp_path / "state")]) == 2
        assert f"--ear-key: {key} is not an unencrypted PEM private key" in one_line(capsys)


# --- the fleet: every --db consumer, the serve options (issue 15, item 9) -------------------

SERVE = ["fleet", "serve", "--insecure-no-auth", "--tofu", "--listen", "127.0.0.1:0"]


@pytest.fixture
def fleet_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory (where a misread --db would create its file) with a policy that
    lets serve start without a registry."""
    (tmp_path / "foo:").mkdir()  # so that a --db read as a path "foo://bar" could be created
    (tmp_path / "dev.toml").write_text("allow_unidentified_release = true\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ATTEST_FLEET_DB", raising=False)
    return tmp_path


def _serve(*more: str) -> list[str]:
    return [*SERVE, "--policy", "dev.toml", "--ear-key", "ear.pem", *more]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["fleet", "ls", "--db", "foo://bar"], "--db: 'foo://bar': unknown database URL scheme"),
        (["fleet", "ls", "--json", "--db", "FOO://bar"], "unknown database URL scheme 'FOO'"),
        (["fleet", "show", "n1", "--db", "mysql://h/db"], "unknown database URL scheme 'mysql'"),
        (["fleet", "add", "http://127.0.0.1:9", "--tofu", "--db", "sqlite://host/x"], "'sqlite'"),
        (_serve("--db", "foo://bar"), "--db: 'foo://bar': unknown database URL scheme"),
        (["fleet", "ls", "--db", "sqlite:///"], "--db: 'sqlite:///' names no file"),
        (["fleet", "ls", "--db", "sqlite:"], "unknown database URL scheme 'sqlite'"),
        (["fleet", "ls", "--db", ""], "--db: empty database URL"),
        (["fleet", "ls", "--db", "file:///tmp/x.db"], "unknown database URL scheme 'file'"),
        (["fleet", "ls", "--interval", "-1"], "--interval: -1.0 is not a finite number over 0"),
        (["fleet", "show", "n1", "--interval", "nan"], "--interval: nan"),
        (_serve("--interval", "-1"), "--interval: -1.0 is not a finite number over 0"),
        (_serve("--interval", "inf"), "--interval: inf"),
        (_serve("--interval", "0"), "--interval: 0.0"),
        (_serve("--timeout", "-1"), "--timeout: -1.0"),
        (_serve("--jitter", "1"), "--jitter: 1.0 is not a fraction in [0, 1)"),
        (_serve("--jitter", "nan"), "--jitter: nan"),
        (_serve("--concurrency", "0"), "--concurrency: 0 is not at least 1"),
        (_serve("--lease-ttl", "3"), "--lease-ttl: 3.0 is not a finite number over 2 × --timeout"),
        (_serve("--registry-refresh", "-1"), "--registry-refresh: -1.0"),
        (_serve("--stale-after", "0"), "--stale-after"),
        (["fleet", "add", "not-a-url", "--tofu"], "url: 'not-a-url' is not a node's URL"),
        (["fleet", "add", "http://n:1/x", "--tofu"], "url: 'http://n:1/x' is not a node's URL"),
        (["fleet", "add", "http://n:1", "--host", "ftp://h", "--tofu"], "--host: 'ftp://h'"),
        (["fleet", "add", "http://[::1", "--tofu"], "url: 'http://[::1' is not a node's URL"),
        (["fleet", "add", "http://n:1", "--id", "\udcff", "--tofu"], "--id: '\\udcff': a node id"),
        (["fleet", "add", "http://n:1", "--id", "a/b", "--tofu"], "--id: 'a/b': a node id must"),
        (["fleet", "show", "\udcff"], "node_id: no node '\\udcff' in the fleet (a node id must"),
        (_serve("--listen", "127.0.0.1:99999"), "--listen: '127.0.0.1:99999': the port is not"),
        (_serve("--worker-id", "\udcff"), "--worker-id: '\\udcff' is not UTF-8 text"),
        (_serve("--selection", "garbage"), "--selection: PCR selection 'garbage' is not BANK"),
        (_serve("--selection", "md5:0"), "--selection: unknown hash algorithm 'md5'"),
        (_serve("--selection", "sha256:0-99999999999999999999"), "--selection: PCR range"),
        (
            _serve("--webhook", "http://127.0.0.1:9/h", "--webhook-secret-file", "dev.toml")
            + ["--webhook-timeout", "nan"],
            "--webhook-timeout: must be a finite number over 0, not nan",
        ),
        (_serve("--interval", "1e-300"), "--interval: 1e-300 s is under the least interval, 0.1"),
        (_serve("--platform", ""), "--platform: an empty platform id names no platform"),
        (_serve("--host-platform", " "), "--host-platform: an empty platform id"),
        (
            _serve("--webhook", "ftp://h/x", "--webhook-secret-file", "dev.toml"),
            "--webhook: the webhook URL: the scheme must be http or https",
        ),
        (
            _serve("--webhook", "notaurl", "--webhook-secret-file", "dev.toml"),
            "--webhook: the webhook URL: the scheme must be http or https",
        ),
        (
            _serve("--webhook", "http://[::1", "--webhook-secret-file", "dev.toml"),
            "--webhook: the webhook URL: not a URL with a valid host and port",
        ),
        (
            _serve("--listen-cert", "dev.toml", "--listen-key", "dev.toml"),
            "--listen-cert: cannot load the listener's certificate dev.toml and key dev.toml: "
            "not a PEM certificate",
        ),
        (
            _serve("--listen-cert", "nope.pem", "--listen-key", "nope.pem"),
            "certificate nope.pem and key nope.pem: No such file or directory",
        ),
    ],
)
def test_fleet_usage_errors_are_one_line_and_exit_2(
    argv: list[str], says: str, fleet_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert says in one_line(capsys)
    assert list((fleet_dir / "foo:").iterdir()) == []  # nothing was created under the typo
    assert not (fleet_dir / "attest-fleet.db").exists()  # nor the default database


def test_a_webhook_url_with_a_password_is_refused_without_echoing_it(
    fleet_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _serve("--webhook", "https://u:hunter2@h/x", "--webhook-secret-file", "dev.toml")
    assert main(argv) == 2
    line = one_line(capsys)
    assert "--webhook: the webhook URL: no user information" in line and "hunter2" not in line


def test_fleet_db_from_the_environment_is_named(
    fleet_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ATTEST_FLEET_DB", "foo://bar")
    assert main(["fleet", "ls"]) == 2
    assert "ATTEST_FLEET_DB: 'foo://bar': unknown database URL scheme" in one_line(capsys)


def test_fleet_db_file_that_cannot_be_used_is_an_io_error_naming_it(
    fleet_dir: Path, garbage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = fleet_dir / "no-such-dir" / "fleet.db"
    assert main(["fleet", "ls", "--db", f"sqlite:///{missing}"]) == 6
    assert f"cannot access {missing}: cannot open the SQLite database" in one_line(capsys)
    assert main(["fleet", "ls", "--db", garbage]) == 6
    assert f"cannot access {garbage}: cannot use the SQLite database (file is not a database)" in (
        one_line(capsys)
    )


@pytest.mark.parametrize(
    ("db", "says"),
    [
        ("postgresql://u@h:99999/x", "--db: '99999' is not a TCP port"),
        ("postgresql://u@h:5432,h2:port/x", "--db: 'port' is not a TCP port"),
        ("postgres://u:s3cret@h/x?foo=1", "--db: not a PostgreSQL URI: invalid URI query"),
        ("postgresql://u:s3cret@[h/x", "--db: not a PostgreSQL URI"),
    ],
)
def test_fleet_malformed_postgres_uri_is_a_usage_error_without_the_password(
    db: str, says: str, fleet_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("psycopg", reason="psycopg (the fleet extra) is not installed")
    assert main(["fleet", "ls", "--db", db]) == 2
    err = one_line(capsys)
    assert says in err and "s3cret" not in err


def test_fleet_unreachable_postgres_is_one_line_and_exit_4(
    fleet_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("psycopg", reason="psycopg (the fleet extra) is not installed")
    from attest.testing.pg import free_port

    db = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    for argv in (["fleet", "ls", "--db", db], ["fleet", "show", "n1", "--db", db]):
        assert main(argv) == 4  # as the fleet's own entry point: not 70
        assert one_line(capsys).startswith("attest: the fleet's database is unreachable: ")


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["audit", "show", "--from", "-5"], "argument --from: -5 is negative"),
        (["audit", "show", "--from", "1e3"], "argument --from: '1e3' is not a whole number"),
        (["upgrade", "status", "--slot-capacity", "0"], "--slot-capacity: a size must be over 0"),
        (["upgrade", "status", "--slot-capacity", "-1"], "--slot-capacity: -1 is negative"),
    ],
)
def test_counts_and_sizes_are_checked_before_a_socket_or_the_tpm(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """They reached the broker or the TPM as they were (a negative offset, a slot of -1
    bytes): a usage error now, from the parser."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


@pytest.mark.parametrize(
    "url", ["http://u:hunter2@127.0.0.1:9", "http://:hunter2@n:1", "http://n:1/?token=hunter2"]
)
@pytest.mark.parametrize("key", ["url", "--host", "--activation-url"])
def test_fleet_add_refuses_a_url_with_a_secret_without_echoing_it(
    url: str, key: str, fleet_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The refusal quoted the URL whole: the password (or a token in its query) was printed."""
    argv = ["fleet", "add", "--tofu", "http://127.0.0.1:9"]
    argv += [url] if key == "url" else [key, url]
    if key == "url":
        argv.remove("http://127.0.0.1:9")
    assert main(argv) == 2
    err = one_line(capsys)
    assert f"{key}: the URL (not shown" in err
    assert "hunter2" not in err


def test_fleet_serve_reads_a_webhook_secret_that_never_ends_bounded(
    fleet_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--webhook-secret-file /dev/zero`` was read without end before anything started."""
    argv = _serve("--webhook", "http://127.0.0.1:9/h", "--webhook-secret-file", os.devnull)
    assert main([*argv[:-1], "/dev/zero"]) == 6
    assert "/dev/zero: file larger than 4096 bytes" in one_line(capsys)
    (fleet_dir / "short").write_bytes(b"  too short \n")  # a short one was exit 70
    assert main([*argv[:-1], "short"]) == 2
    assert "--webhook-secret-file: short: the webhook secret must be at least 16" in one_line(
        capsys
    )
    assert not (fleet_dir / "attest-fleet.db").exists()


def test_a_pcr_range_beyond_the_bank_is_a_usage_error_not_a_list_of_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--pcrs sha256:0-99999999999999999999`` was a traceback (OverflowError), and 0-50000000
    built a list of 50 million indices (seconds and gigabytes) before refusing it."""
    for pcrs in ("sha256:0-99999999999999999999", "sha256:0-50000000", "sha256:7-0"):
        with pytest.raises(SystemExit) as exc:
            main(["demo", "--pcrs", pcrs])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "argument --pcrs" in err and "Traceback" not in err


@pytest.mark.parametrize("action", [["create"], ["record", "--ek-public", os.devnull]])
def test_a_vtpm_guest_id_that_is_not_utf8_is_a_usage_error(
    action: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``attest vtpm create --guest $'\\xff'`` was exit 70 (encoding the broker request)."""
    argv = ["vtpm", *action, "--guest", "\udcff", "--broker-socket", str(tmp_path / "none")]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --guest: '\\udcff' is not UTF-8 text" in err and "Traceback" not in err


def test_fleet_serve_names_an_ear_key_that_is_a_directory(
    fleet_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It read "cannot access 6: Is a directory": the descriptor's number, not the path."""
    (fleet_dir / "keydir").mkdir()
    argv = _serve()
    argv[argv.index("ear.pem")] = "keydir"
    assert main(argv) == 6
    assert one_line(capsys) == "attest: cannot access keydir: Is a directory\n"
