"""What makes the largest-micro-batch search fast, checked against what it replaces: a traced model kept
between micro-batches logs what a fresh one logs, the micro-batch line gives the log a trace gives,
and the search settles on the size a search over traced steps settles on."""

from __future__ import annotations

import pytest

from velora_core.bench import step_prediction
from velora_core.bench.fit_estimate import largest_micro_batch, search_micro_batch
from velora_core.bench.fit_prediction import StepTracer, fake_steps
from velora_core.bench.step_prediction import StepPredictor
from velora_core.contract.fit_request import FitRequest, fit_run
from velora_core.contract.method_settings import NAMED_METHODS
from velora_core.memory.batch_line import BatchLine
from velora_core.memory.tracker import AllocationLog

#: Every named method and the 8-bit optimizer technique, in bf16 (QLoRA's 4-bit weights included).
METHODS = [*sorted(NAMED_METHODS), "full+8bit"]


def _spec(method: str, micro_batch: int = 2, model: str = "tiny", seq_len: int = 32):
    request = FitRequest(
        model=model, methods=[method], micro_batch=micro_batch, seq_len=seq_len, dtype="bf16"
    )
    return fit_run(request.runs()[0])


def _log(sizes, events=((0, 1, 0), (1, 1, 0), (1, -1, 1), (0, -1, 2))) -> AllocationLog:
    return AllocationLog(list(sizes), ["temporary"] * len(sizes), list(events), 0, [None] * len(sizes))


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_a_kept_model_steps_as_a_fresh_one(method):
    """A steady step at 3 after steps at 2 and 5 logs what a fresh model's second step at 3 logs."""
    tracer = StepTracer(_spec(method), layers=3, timeline_points=2)
    for micro_batch in (2, 5):
        tracer.steady(micro_batch)
    kept = tracer.steady(3).log
    fresh = fake_steps(_spec(method, micro_batch=3), timeline_points=2, layers=3).steady.log
    assert kept == fresh


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_the_line_through_two_sizes_gives_a_third_sizes_log(method):
    """Every allocation of every method's step is a line in the micro-batch: the logs traced at 2 and 4
    give, byte for byte, the logs traced at 3 and 7. At 1 some copies are views instead (a dimension
    of 1): the line is not read there."""
    tracer = StepTracer(_spec(method), layers=3, timeline_points=2)
    traced = {m: tracer.steady(m).log for m in (2, 4, 3, 7)}
    line = BatchLine(2, traced[2], 4, traced[4])
    assert line.holds
    for micro_batch in (3, 7):
        assert line.log_at(micro_batch) == traced[micro_batch], micro_batch
    assert line.log_at(1) is None


def test_the_line_refuses_logs_that_are_not_one_step_on_lines():
    assert BatchLine(2, _log([10, 200]), 4, _log([10, 400])).log_at(3) == _log([10, 300])
    # Not a whole number of bytes per sequence; a size that shrinks; another sequence of events.
    assert not BatchLine(2, _log([10, 100]), 4, _log([10, 301])).holds
    assert not BatchLine(2, _log([10, 100]), 4, _log([10, 50])).holds
    other = _log([10, 300], events=((0, 1, 0), (1, 1, 0), (0, -1, 1), (1, -1, 2)))
    assert not BatchLine(2, _log([10, 100]), 4, other).holds
    assert BatchLine(2, _log([10, 100]), 4, other).log_at(3) is None
    with pytest.raises(ValueError):
        BatchLine(3, _log([10, 100]), 2, _log([10, 300]))
    with pytest.raises(ValueError):  # a micro-batch of one is not on the line
        BatchLine(1, _log([10, 100]), 3, _log([10, 300]))


def _budget_between(predictor: StepPredictor, micro_batch: int) -> int:
    """A budget that the traced step at ``micro_batch`` fits and the one above it does not."""
    low = predictor.reserved_at(micro_batch, traced=True).reserved_bytes
    high = predictor.reserved_at(micro_batch + 1, traced=True).reserved_bytes
    assert high > low
    return (low + high) // 2


@pytest.mark.parametrize("method", ["lora", "full"])
def test_the_search_settles_where_a_traced_search_does(method):
    """On the line (a few sizes traced) and on traced steps only, the same answer, and the line's
    answer is traced before it is given."""
    spec = _spec(method, micro_batch=2, model="llama-60m", seq_len=64)
    budget = _budget_between(StepPredictor(spec), 9)
    fast = StepPredictor(spec)
    fast.at(spec.micro_batch)
    answer, notes = search_micro_batch(fast, spec.micro_batch, budget)
    assert (answer, notes) == (9, [])
    assert fast.line_confirmed and 9 not in fast.from_line  # traced, and logged as the line said
    traced_sizes = {m for (_, m) in fast._steps}
    assert len(traced_sizes) <= 3  # 2, 4 and the answer: every other size came off the line

    slow = StepPredictor(spec)
    exact, _ = largest_micro_batch(
        lambda m: slow.reserved_at(m, traced=True), slow.reserved_at(2, traced=True), 2, budget
    )
    assert exact == answer


def test_a_line_that_misses_the_answer_is_searched_again_on_traced_steps(monkeypatch):
    """Where the line's logs are wrong (here: every activation a quarter larger), the traced answer
    disagrees with its verdict and the search runs again on traced steps, saying so."""
    spec = _spec("lora", micro_batch=2, model="llama-60m", seq_len=64)
    budget = _budget_between(StepPredictor(spec), 9)
    log_at = BatchLine.log_at

    def inflated(self, micro_batch):
        log = log_at(self, micro_batch)
        return (
            None
            if log is None
            else AllocationLog(
                [s * 5 // 4 for s in log.sizes], log.categories, log.events, log.entry_events, log.tags
            )
        )

    monkeypatch.setattr(BatchLine, "log_at", inflated)
    predictor = StepPredictor(spec)
    predictor.at(spec.micro_batch)
    answer, notes = search_micro_batch(predictor, spec.micro_batch, budget)
    assert answer == 9
    assert notes == ["the micro-batch line missed the answer: every size searched was traced"]


def test_predict_step_is_one_predictor_at_the_spec_micro_batch():
    spec = _spec("lora", micro_batch=3, model="llama-60m", seq_len=64)
    assert step_prediction.predict_step(spec) == StepPredictor(spec).at(3)
