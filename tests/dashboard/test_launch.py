"""Launch refuses what the API would refuse before sending (the spec's JSON schema, the server's
limits), shows each field's range and an estimated duration, and names its memory mode for what it does."""

from __future__ import annotations

from typing import Any

from tests.dashboard.conftest import LiveService
from tests.dashboard.test_pages import OpenPage, texts


def test_launch_refuses_out_of_range_fields_in_words_before_sending(
    open_page: OpenPage, live_service: LiveService
) -> None:
    before = live_service.get("/comparisons", limit=1)["count"]
    limits = live_service.get("/presets")["limits"]
    at = open_page()
    steps = at.number_input(key="preset.cpu-smoke.steps")
    assert f"valid: 1 to {limits['max_steps']:,}" in steps.help  # the range is shown
    steps.set_value(-5).run()
    assert "Not sent: base.steps: -5 is less than the minimum of 1" in texts(at.error)
    assert at.button(key="launch.submit").disabled  # was enabled, and the request dropped the field
    at.number_input(key="preset.cpu-smoke.steps").set_value(4)
    too_long = limits["max_seq_len"] + 1
    at.number_input(key="preset.cpu-smoke.seq_len").set_value(too_long).run()
    (error,) = texts(at.error)  # one message for the field, whichever bound it breaks
    assert error.startswith(f"Not sent: base.seq_len: {too_long}") and str(limits["max_seq_len"]) in error
    assert at.button(key="launch.submit").disabled
    assert live_service.get("/comparisons", limit=1)["count"] == before

    at.radio(key="launch.mode").set_value("spec").run()
    at.number_input(key="spec.micro_batch").set_value(0).run()
    assert "Not sent: base.micro_batch: 0 is less than the minimum of 1" in texts(at.error)


def test_launch_estimates_the_duration_from_finished_runs_and_names_its_memory_mode(
    open_page: OpenPage, smoke_comparison: dict[str, Any]
) -> None:
    at = open_page()
    (estimate,) = [c for c in texts(at.caption) if c.startswith("Estimated duration: about ")]
    assert "s per step of the" in estimate and "run(s) this server finished" in estimate
    at.number_input(key="preset.cpu-smoke.micro_batch").set_value(4096)
    at.number_input(key="preset.cpu-smoke.seq_len").set_value(512).run()
    assert any(
        w.startswith("4,096 × 512 = 2,097,152 tokens per step") for w in texts(at.warning)
    )  # was silent
    mode = at.radio(key="launch.mode")
    assert mode.options == ["A preset", "Build a spec", "Measure memory (real memory-only runs)"]
    mode.set_value("fit").run()
    assert any("For a prediction in seconds without running anything" in c for c in texts(at.caption))
