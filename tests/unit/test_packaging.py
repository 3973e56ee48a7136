"""What a node provider installs besides the Python package (attest.node.packaging,
``attest node install``): the example configuration is attestd's, the units agree with its
defaults, the units verify and keep their documented exposure, sysusers/tmpfiles make the
users and directories the units expect, and install/uninstall put and take exactly these
files (issue 16, items 2 and 3)."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from attest.cli import main
from attest.node.config import Settings, load_settings
from attest.node.install import install, packaged, uninstall, unit_text

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "src" / "attest" / "node" / "packaging"
CI = os.environ.get("CI") == "true"


def run_cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if CI:
            pytest.fail(f"{tool} missing (./run installs the systemd package)")
        pytest.skip(f"{tool} not installed (Debian package systemd)")
    return path


def _exec_start(unit: str) -> list[str]:
    text = packaged(unit).decode().replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if ln.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def _option(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == name]


# --- the example configuration -----------------------------------------------------------


def test_example_config_is_read_by_the_real_loader_as_the_defaults() -> None:
    """Every key of the example is one attestd accepts (the loader refuses unknown keys) and
    says the default: the example cannot drift from config.py."""
    loaded = load_settings(PACKAGING / "attestd.toml.example", environ={})
    assert loaded == Settings()


def test_example_config_names_every_setting() -> None:
    text = (PACKAGING / "attestd.toml.example").read_text()
    section = ""
    named: set[str] = set()
    for line in text.splitlines():
        if m := re.fullmatch(r"\[(\w+)\]\s*(#.*)?", line):
            section = m.group(1)
        elif m := re.match(r"(\w+)\s*=", line):
            named.add(f"{section}.{m.group(1)}" if section else m.group(1))
    want = {"node_id"}
    for f in dataclasses.fields(Settings):
        if dataclasses.is_dataclass(f.default_factory):  # type: ignore[misc]
            want |= {f"{f.name}.{g.name}" for g in dataclasses.fields(f.default_factory)}
    assert named == want


def test_broker_unit_agrees_with_attestds_defaults() -> None:
    """attestd (its defaults: the example) and attestd-tpm (its unit's command line) must name
    the same socket, PCR, trust and spool directories and NV index."""
    s = Settings()
    argv = _exec_start("attestd-tpm.service")
    assert _option(argv, "--socket") == [s.tpm.broker_socket]
    assert _option(argv, "--runtime-pcr") == [str(s.tpm.runtime_pcr)]
    assert _option(argv, "--trust-dir") == [s.registry.trust_dir]
    assert _option(argv, "--spool-dir") == [s.upgrade.spool_dir]
    assert _option(argv, "--slots-dir") == [s.upgrade.slots_dir]
    assert int(_option(argv, "--nv-index")[0], 0) == s.upgrade.nv_index


def test_attestds_operator_socket_is_in_its_own_runtime_directory() -> None:
    unit = packaged("attestd.service").decode()
    assert "RuntimeDirectory=attestd\n" in unit
    assert Path(Settings().api.operator_socket).parent == Path("/run/attestd")
    broker = packaged("attestd-tpm.service").decode()
    assert "RuntimeDirectory=attest\n" in broker  # attestd-tpm's: attestd may not write it


@pytest.mark.parametrize("unit", ["attestd.service", "attestd-tpm.service"])
def test_units_are_notify_with_a_watchdog(unit: str) -> None:
    text = packaged(unit).decode()
    assert re.search(r"^Type=notify$", text, re.M)
    assert re.search(r"^WatchdogSec=\d+s$", text, re.M)


def _unit_deps(unit: str) -> dict[str, set[str]]:
    """The [Unit] section's dependency settings of a shipped unit, each as a set of units."""
    out: dict[str, set[str]] = {}
    for m in re.finditer(r"^(After|Before|Wants|Requires|BindsTo|PartOf)=(.*)$", _unit(unit), re.M):
        out.setdefault(m.group(1), set()).update(m.group(2).split())
    return out


def _unit(unit: str) -> str:
    return packaged(unit).decode().split("\n[Service]", 1)[0]


def test_attestd_starts_beside_its_broker_and_survives_its_restart() -> None:
    """attestd pulls attestd-tpm in but is not ordered after it (the two start-ups overlap;
    attestd serves not-ready until the broker answers), and no dependency makes systemd's
    restart of a failed broker restart attestd too (Requires=, BindsTo=, PartOf= would)."""
    api, broker = _unit_deps("attestd.service"), _unit_deps("attestd-tpm.service")
    assert "attestd-tpm.service" in api.get("Wants", set())
    for key in ("After", "Requires", "BindsTo", "PartOf"):
        assert "attestd-tpm.service" not in api.get(key, set()), key
    assert "attestd.service" not in broker.get("Before", set())
    assert "dev-tpmrm0.device" in broker.get("After", set())  # the broker opens it at start


# --- the units under systemd's own tools --------------------------------------------------


def _units_with_bindir(tmp_path: Path) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("attestd", "attestd-tpm"):
        (bindir / name).write_text("#!/bin/sh\n")
        (bindir / name).chmod(0o755)
    out = tmp_path / "units"
    out.mkdir()
    for unit in ("attestd.service", "attestd-tpm.service"):
        (out / unit).write_bytes(unit_text(unit, bindir))
    return out


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = _need("systemd-analyze")
    units = _units_with_bindir(tmp_path)
    done = subprocess.run(
        [tool, "verify", "attestd.service", "attestd-tpm.service"],
        cwd=units,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


@pytest.mark.parametrize(("unit", "documented"), [("attestd-tpm", 1.4), ("attestd", 1.1)])
def test_exposure_is_at_most_the_documented_figure(
    tmp_path: Path, unit: str, documented: float
) -> None:
    """docs/daemon-hardening.md's `systemd-analyze security --offline=yes` figures."""
    tool = _need("systemd-analyze")
    units = _units_with_bindir(tmp_path)
    done = subprocess.run(
        [tool, "security", "--offline=yes", f"{unit}.service"],
        cwd=units,
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", done.stdout)
    assert m is not None, done.stdout + done.stderr
    assert float(m.group(1)) <= documented
    doc = (REPO / "docs" / "daemon-hardening.md").read_text()
    assert f"Overall exposure level for {unit}.service: {documented}" in doc


def test_sysusers_and_tmpfiles_make_what_the_units_expect(tmp_path: Path) -> None:
    sysusers, tmpfiles = _need("systemd-sysusers"), _need("systemd-tmpfiles")
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles sets owners: root only (CI runs as root)")
    root = tmp_path / "root"
    install(root, bindir=_fake_bindir(tmp_path))
    (root / "etc").mkdir(exist_ok=True)
    done = subprocess.run(
        [sysusers, f"--root={root}", "attest.conf"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    passwd = {ln.split(":")[0]: ln.split(":") for ln in (root / "etc/passwd").read_text().split()}
    groups = {ln.split(":")[0]: ln.split(":") for ln in (root / "etc/group").read_text().split()}
    attest_gid = groups["attest"][2]
    assert passwd["attest"][3] == attest_gid and passwd["attest-tpm"][3] == attest_gid
    assert "attest-tpm" in groups["tss"][3].split(",")  # /dev/tpmrm0 is root:tss 0660
    assert "attest" not in groups["tss"][3].split(",")  # attestd: no TPM
    done = subprocess.run(
        [tmpfiles, f"--root={root}", "--create", "attest.conf"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    tpm_uid = int(passwd["attest-tpm"][2])
    for name, mode in (("slots", 0o700), ("trust", 0o750), ("spool", 0o2770)):
        st = (root / "var/lib/attest" / name).stat()
        assert stat.S_IMODE(st.st_mode) == mode, name
        assert (st.st_uid, st.st_gid) == (tpm_uid, int(attest_gid)), name
    # and the units run as these users
    for unit, user in (("attestd.service", "attest"), ("attestd-tpm.service", "attest-tpm")):
        text = packaged(unit).decode()
        assert f"\nUser={user}\n" in text and "\nGroup=attest\n" in text


# --- attest node install / uninstall ------------------------------------------------------


def _fake_bindir(tmp_path: Path) -> Path:
    bindir = tmp_path / "venv-bin"
    bindir.mkdir(exist_ok=True)
    for name in ("attestd", "attestd-tpm"):
        (bindir / name).write_text("#!/bin/sh\n")
        (bindir / name).chmod(0o755)
    return bindir


PLACES = [
    "usr/lib/systemd/system/attestd-tpm.service",
    "usr/lib/systemd/system/attestd.service",
    "usr/lib/sysusers.d/attest.conf",
    "usr/lib/tmpfiles.d/attest.conf",
    "usr/lib/udev/rules.d/60-attest.rules",
    "etc/attest/attestd.toml",
]


def test_node_install_puts_each_file_in_its_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bindir, root = _fake_bindir(tmp_path), tmp_path / "root"
    rc, out, err = run_cli(
        capsys, ["node", "install", "--prefix", str(root), "--bindir", str(bindir)]
    )
    assert rc == 0, err
    assert out.splitlines()[: len(PLACES)] == [
        f"installed: {root / p}" + (f" (ExecStart {bindir})" if p.endswith(".service") else "")
        for p in PLACES
    ]
    unit = (root / PLACES[0]).read_text()
    assert f"ExecStart={bindir}/attestd-tpm \\\n" in unit and "/usr/bin/" not in unit
    assert f"ExecStart={bindir}/attestd\n" in (root / PLACES[1]).read_text()
    assert load_settings(root / "etc/attest/attestd.toml", environ={}) == Settings()
    for p in PLACES:
        assert stat.S_IMODE((root / p).stat().st_mode) == 0o644


def test_node_install_again_keeps_the_operators_config(tmp_path: Path) -> None:
    bindir, root = _fake_bindir(tmp_path), tmp_path / "root"
    install(root, bindir=bindir)
    conf = root / "etc/attest/attestd.toml"
    conf.write_text('[api]\nhost = "0.0.0.0"\n')
    (root / PLACES[2]).write_text("# changed\n")
    steps = {str(s.path.relative_to(root)): s.action.value for s in install(root, bindir=bindir)}
    assert steps == {
        PLACES[0]: "unchanged",
        PLACES[1]: "unchanged",
        PLACES[2]: "replaced",
        PLACES[3]: "unchanged",
        PLACES[4]: "unchanged",
        PLACES[5]: "kept",
    }
    assert conf.read_text() == '[api]\nhost = "0.0.0.0"\n'


def test_node_install_dry_run_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bindir, root = _fake_bindir(tmp_path), tmp_path / "root"
    rc, out, _ = run_cli(
        capsys, ["node", "install", "--prefix", str(root), "--bindir", str(bindir), "--dry-run"]
    )
    assert rc == 0 and not root.exists()
    assert out.splitlines()[0] == f"would be installed: {root / PLACES[0]} (ExecStart {bindir})"


def test_node_install_refuses_a_bindir_without_the_daemons(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run_cli(
        capsys, ["node", "install", "--prefix", str(tmp_path / "root"), "--bindir", str(tmp_path)]
    )
    assert rc == 2 and out == "" and not (tmp_path / "root").exists()
    assert err.strip() == (
        f"attest: configuration error: bindir: {tmp_path}/attestd-tpm is not an executable: "
        "name the directory of attestd and attestd-tpm (the bin/ of the environment attest "
        "is installed in)"
    )


def test_node_uninstall_removes_all_but_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bindir, root = _fake_bindir(tmp_path), tmp_path / "root"
    install(root, bindir=bindir)
    steps = [(s.action.value, str(s.path.relative_to(root))) for s in uninstall(root)]
    assert steps == [("removed", p) for p in PLACES[:5]] + [("kept", PLACES[5])]
    assert [p for p in PLACES if (root / p).exists()] == [PLACES[5]]
    rc, out, _ = run_cli(capsys, ["node", "uninstall", "--prefix", str(root)])
    assert rc == 0 and out.splitlines()[0] == f"absent: {root / PLACES[0]}"


# --- docs/install.md says what the code does ----------------------------------------------


def _install_md_commands() -> list[list[str]]:
    """Every ``attest ...`` command line in docs/install.md's code blocks."""
    text = (REPO / "docs" / "install.md").read_text()
    blocks = re.findall(r"```(?:sh|toml)?\n(.*?)```", text, re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            if re.match(r"(\S*/)?attest\s", line):
                commands.append(shlex.split(line)[1:])
    return commands


def test_install_md_commands_parse_with_the_real_cli() -> None:
    from attest.cli import build_parser

    commands = _install_md_commands()
    groups = {c[0] for c in commands}
    assert {"node", "manifest", "verify", "fleet", "upgrade", "ek"} <= groups
    for argv in commands:
        try:
            build_parser(argv).parse_args(argv)
        except SystemExit:
            pytest.fail(f"docs/install.md: attest {' '.join(argv)} does not parse")


def test_install_md_names_the_real_sockets_and_places() -> None:
    text = (REPO / "docs" / "install.md").read_text()
    argv = _exec_start("attestd-tpm.service")
    s = Settings()
    for path in (
        s.api.operator_socket,
        s.tpm.broker_socket,
        _option(argv, "--operator-socket")[0],
        "/usr/lib/systemd/system/attestd.service",
        "/usr/lib/sysusers.d/attest.conf",
        "/usr/lib/tmpfiles.d/attest.conf",
        "/usr/lib/udev/rules.d/60-attest.rules",
        "/etc/attest/attestd.toml",
        f"0x{s.upgrade.nv_index:08x}",
    ):
        assert path in text, path
