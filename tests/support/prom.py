"""Reading ``/metrics`` in tests: the samples by name (through prometheus-client's own parser,
so a malformed exposition fails the test), and ``promtool check metrics`` (Debian's
``prometheus`` package) on it."""

from __future__ import annotations

import subprocess

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[str, float]:
    """Every sample of an exposition: ``name`` or ``name{a="x",b="y"}`` (labels sorted) ->
    value."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def promtool_problems(text: str) -> str:
    """What ``promtool check metrics`` says of an exposition: "" when it is clean (exit 0 and
    nothing printed); otherwise its exit status and output."""
    run = subprocess.run(
        ["promtool", "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    said = (run.stdout + run.stderr).decode(errors="replace").strip()
    return "" if run.returncode == 0 and not said else f"exit {run.returncode}: {said}"
