"""Will it fit? (predict): hub ids with a suggestion for a typo of a preset, a pasted config.json,
the API's full ranges, any card size, and each method's answer as it is computed."""

from __future__ import annotations

import json

from tests.backend.test_fit_api import TINY_CONFIG
from tests.dashboard.test_pages import OpenPage, plotly_specs, texts
from velora_core.contract.fit_request import MAX_FIT_SEQ_LEN


def test_a_typo_of_a_preset_is_caught_with_the_nearest_preset_and_never_sent(open_page: OpenPage) -> None:
    at = open_page("views/fit.py")
    at.radio(key="willfit.source").set_value("hub").run()
    at.text_input(key="willfit.hub_id").set_value("llama-7bb").run()
    assert texts(at.warning) == [
        "'llama-7bb' is not a preset: did you mean llama-7b? (a hub model is owner/name)"
    ]
    assert at.button(key="willfit.submit").disabled
    at.text_input(key="willfit.hub_id").set_value("huggyllama/llama-7b").run()
    assert not at.warning and not at.button(key="willfit.submit").disabled
    assert at.number_input(key="willfit.seq_len").max == MAX_FIT_SEQ_LEN  # the API's range (was 4096)


def test_a_pasted_config_is_predicted_per_method_against_any_card_size(open_page: OpenPage) -> None:
    at = open_page("views/fit.py")
    at.radio(key="willfit.source").set_value("config").run()
    at.text_area(key="willfit.config").set_value(json.dumps(TINY_CONFIG)).run()
    at.number_input(key="willfit.gpu").set_value(10.5)
    at.number_input(key="willfit.seq_len").set_value(16)
    at.number_input(key="willfit.micro_batch").set_value(1)
    at.selectbox(key="willfit.dtype").set_value("fp32")
    at.multiselect(key="willfit.methods").set_value(["lora"])  # one fake step (each costs a subprocess)
    at.button(key="willfit.submit").click().run(timeout=300)
    assert not at.exception and not at.error, texts(at.error)
    table = at.table[0].value
    assert list(table["Method"]) == ["lora"] and list(table["Fits"]) == ["yes"]
    (chart,) = plotly_specs(at)
    assert chart["layout"]["shapes"][0]["y0"] == 10.5  # any size, not a list of cards
    assert at.subheader[0].value == "pasted config.json · 1×16 tokens · fp32"
