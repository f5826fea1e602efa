"""The byte tokenizer, the Hugging Face wrapper and choosing a tokenizer from a model spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from velora_core.contract.spec import DatasetSpec, ModelSpec, RunSpec
from velora_core.models.tokenizers import (
    BYTE_TOKENIZER_FILE,
    ByteTokenizer,
    HFTokenizer,
    Tokenizer,
    load_tokenizer,
)


def test_byte_tokenizer_encodes_utf8_bytes_after_three_specials() -> None:
    tok = ByteTokenizer()
    # 'h' = 0x68, 'é' = 0xC3 0xA9 in UTF-8; each byte b becomes b + 3.
    assert tok.encode("hé") == [0x68 + 3, 0xC3 + 3, 0xA9 + 3]
    assert tok.encode("hé", add_bos=True, add_eos=True) == [1, 0x68 + 3, 0xC3 + 3, 0xA9 + 3, 2]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.vocab_size) == (0, 1, 2, 259)
    assert tok.encode("") == []
    assert isinstance(tok, Tokenizer)


def test_byte_tokenizer_decode_skips_specials_and_replaces_invalid_utf8() -> None:
    tok = ByteTokenizer()
    text = "déjà vu\n\tλ"
    assert tok.decode(tok.encode(text, add_bos=True, add_eos=True)) == text
    assert tok.decode([0, 1, 0x41 + 3, 2, 0]) == "A"
    assert tok.decode([0xC3 + 3]) == "\ufffd"  # a lone lead byte


def test_byte_tokenizer_save_and_load(tmp_path: Path) -> None:
    ByteTokenizer().save(tmp_path / "tok")
    payload = json.loads((tmp_path / "tok" / BYTE_TOKENIZER_FILE).read_text())
    assert payload["vocab_size"] == 259 and payload["type"] == "byte"
    loaded = ByteTokenizer.load(tmp_path / "tok")
    assert loaded.encode("abc") == ByteTokenizer().encode("abc")
    payload["offset"] = 4
    (tmp_path / "tok" / BYTE_TOKENIZER_FILE).write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="does not match"):
        ByteTokenizer.load(tmp_path / "tok")


def test_hf_tokenizer_wraps_auto_tokenizer(hf_tokenizer_dir: Path) -> None:
    tok = HFTokenizer(hf_tokenizer_dir)
    raw = AutoTokenizer.from_pretrained(hf_tokenizer_dir)
    text = "Question: which function?"
    ids = raw(text, add_special_tokens=False)["input_ids"]
    assert tok.encode(text) == ids
    assert tok.encode(text, add_bos=True, add_eos=True) == [raw.bos_token_id, *ids, raw.eos_token_id]
    assert tok.decode(tok.encode(text, add_bos=True, add_eos=True)) == text
    # The fixture has no pad token: padding uses eos.
    assert raw.pad_token_id is None
    assert tok.pad_token_id == tok.eos_token_id == raw.eos_token_id
    assert tok.vocab_size == len(raw)
    assert isinstance(tok, Tokenizer)
    assert tok.fingerprint.startswith("hf-") and tok.fingerprint != ByteTokenizer().fingerprint


def test_hf_tokenizer_save_round_trip(hf_tokenizer_dir: Path, tmp_path: Path) -> None:
    tok = HFTokenizer(hf_tokenizer_dir)
    tok.save(tmp_path / "copy")
    copy = HFTokenizer(tmp_path / "copy")
    assert copy.encode("Answer: A") == tok.encode("Answer: A")
    assert copy.fingerprint == tok.fingerprint


def _artifact_spec() -> ModelSpec:
    pretrain = RunSpec(
        workload="pretrain",
        model=ModelSpec(source="preset", name="tiny"),
        dataset=DatasetSpec(name="stdlib-corpus"),
    )
    return ModelSpec(source="artifact", pretrain=pretrain)


def test_load_tokenizer_by_model_source(hf_tokenizer_dir: Path, tmp_path: Path) -> None:
    assert isinstance(load_tokenizer(ModelSpec(source="preset", name="tiny")), ByteTokenizer)
    # A local folder goes through AutoTokenizer.from_pretrained, as a hub id does.
    local = load_tokenizer(ModelSpec(source="local", name=str(hf_tokenizer_dir)))
    assert isinstance(local, HFTokenizer)
    assert local.fingerprint == HFTokenizer(hf_tokenizer_dir).fingerprint
    ByteTokenizer().save(tmp_path / "byte_model")
    byte_local = load_tokenizer(ModelSpec(source="local", name=str(tmp_path / "byte_model")))
    assert isinstance(byte_local, ByteTokenizer)


def test_load_tokenizer_for_artifact_reads_the_artifact_directory(
    hf_tokenizer_dir: Path, tmp_path: Path
) -> None:
    spec = _artifact_spec()
    ByteTokenizer().save(tmp_path / "artifact")
    assert isinstance(load_tokenizer(spec, tmp_path / "artifact"), ByteTokenizer)
    assert isinstance(load_tokenizer(spec, hf_tokenizer_dir), HFTokenizer)
    with pytest.raises(ValueError, match="artifact directory"):
        load_tokenizer(spec)
    with pytest.raises(OSError):
        load_tokenizer(spec, tmp_path / "empty")


def test_hub_model_id_that_names_a_folder_here_is_refused(tmp_path: Path, monkeypatch) -> None:
    # from_pretrained("shadow") would read ./shadow instead of the hub repository.
    (tmp_path / "shadow").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"model.name 'shadow' is a hub id, but .*shadow' exists"):
        load_tokenizer(ModelSpec(source="hub", name="shadow"))
