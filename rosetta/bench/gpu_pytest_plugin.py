"""pytest plugin of the GPU run's parity steps (``-p rosetta.bench.gpu_pytest_plugin``).

- Each test's outcome is appended to the JSON-lines file named by $ROSETTA_GPU_RUN_RESULTS as soon
  as the test ends (flushed), so a run killed at its timeout keeps every result it had.
- Hypothesis keeps the profile the suite chose (parity_tests/conftest.py, $ROSETTA_PROFILE, default
  ci: derandomized, bounded) but without its shrink phase: on a kernel that is wrong, each failing
  test reports its first failing example at once instead of spending minutes making it smaller.

One line per test (and per file that fails to import): {"nodeid", "outcome": passed|failed|skipped|error,
"when", "duration_s", "message"}.
"""

from __future__ import annotations

import json
import os

RESULTS_ENV = "ROSETTA_GPU_RUN_RESULTS"


def pytest_configure(config):
    try:
        from hypothesis import Phase, settings

        parent = settings.get_profile(os.environ.get("ROSETTA_PROFILE", "ci"))
    except Exception:  # noqa: BLE001 - no hypothesis, or the suite registered no such profile
        return
    settings.register_profile("gpu-run", parent=parent, phases=[Phase.explicit, Phase.reuse, Phase.generate])
    settings.load_profile("gpu-run")


def _message(report) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return f"{crash.message}"[:1000]
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:  # a skip: (file, line, reason)
        return str(report.longrepr[2])[:300]
    return str(report.longrepr)[-1000:] if report.longrepr else ""


def pytest_runtest_logreport(report):
    path = os.environ.get(RESULTS_ENV)
    if not path:
        return
    if report.when == "call" or report.outcome != "passed":  # a call's outcome; a setup skip or error
        outcome = report.outcome
        if report.failed and report.when != "call":
            outcome = "error"
        record = {"nodeid": report.nodeid, "outcome": outcome, "when": report.when,
                  "duration_s": round(report.duration, 3)}
        if not report.passed:
            record["message"] = _message(report)
        with open(path, "a") as stream:
            stream.write(json.dumps(record) + "\n")
            stream.flush()


def pytest_collectreport(report):
    """A file that fails to import is an error line too (the run goes on: --continue-on-collection-errors)."""
    path = os.environ.get(RESULTS_ENV)
    if path and report.failed:
        record = {"nodeid": report.nodeid, "outcome": "error", "when": "collect", "duration_s": 0.0,
                  "message": _message(report)}
        with open(path, "a") as stream:
            stream.write(json.dumps(record) + "\n")
