"""Tokenizers behind one small protocol: an offline byte-level one and a wrapper of Hugging Face's.

The engine needs only ``encode``/``decode``, the ids of the pad, bos and eos tokens, the vocabulary
size, a ``save`` that lets a fine-tuning run reload what the pre-training run used, a
``fingerprint`` recorded with results, whether the tokenizer itself puts bos before a text
(``adds_bos``: what lm-evaluation-harness encodes with) and the ``transformers`` tokenizer that
encodes exactly the same ids (``hf_tokenizer``), for the harness and for a saved model's users. :class:`ByteTokenizer` serves the built-in presets (their
vocabulary of 320 covers its 259 ids) without any download; :class:`HFTokenizer` wraps
``transformers.AutoTokenizer`` for hub and local models.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from velora_core.contract.hashing import short_digest
from velora_core.contract.spec import ModelSpec, check_hub_id_not_on_disk

#: File that marks a directory as holding a :class:`ByteTokenizer`.
BYTE_TOKENIZER_FILE = "velora_byte_tokenizer.json"


@runtime_checkable
class Tokenizer(Protocol):
    """What the data and evaluation code use of a tokenizer."""

    pad_token_id: int
    bos_token_id: int | None
    eos_token_id: int
    vocab_size: int
    adds_bos: bool

    def hf_tokenizer(self) -> Any: ...

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def save(self, directory: str | Path) -> None: ...

    @property
    def fingerprint(self) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: 0 = pad, 1 = bos, 2 = eos, byte ``b`` = ``b + 3``; 259 ids in all.

    Needs no files and no training, so the offline datasets and the tiny presets work anywhere.
    Like LLaMA's, its ``transformers`` twin (:meth:`hf_tokenizer`) puts bos before every text.
    """

    pad_token_id = 0
    bos_token_id = 1
    eos_token_id = 2
    offset = 3
    vocab_size = 256 + offset
    adds_bos = True

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of ``text`` (one per UTF-8 byte), optionally framed by bos/eos."""
        ids = [b + self.offset for b in text.encode("utf-8")]
        if add_bos:
            ids.insert(0, self.bos_token_id)
        if add_eos:
            ids.append(self.eos_token_id)
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``; special and out-of-range ids are skipped, invalid UTF-8 becomes U+FFFD."""
        data = bytes(i - self.offset for i in ids if self.offset <= i < self.vocab_size)
        return data.decode("utf-8", errors="replace")

    @property
    def fingerprint(self) -> str:
        """A name for this exact encoding (it has no parameters to hash)."""
        return "byte-v1"

    def hf_tokenizer(self) -> Any:
        """The ``transformers`` fast tokenizer with the same ids (see :func:`byte_fast_tokenizer`)."""
        return byte_fast_tokenizer()

    def save(self, directory: str | Path) -> None:
        """Write :data:`BYTE_TOKENIZER_FILE` into ``directory`` (created if missing), and the same
        encoding as a ``tokenizer.json`` that ``AutoTokenizer.from_pretrained`` loads."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.hf_tokenizer().save_pretrained(str(path))
        payload = {
            "type": "byte",
            "version": 1,
            "offset": self.offset,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "vocab_size": self.vocab_size,
        }
        (path / BYTE_TOKENIZER_FILE).write_text(json.dumps(payload, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> ByteTokenizer:
        """Read a tokenizer written by :meth:`save`.

        Raises:
            FileNotFoundError: ``directory`` has no :data:`BYTE_TOKENIZER_FILE`.
            ValueError: the file describes a different encoding than this class implements.
        """
        payload = json.loads((Path(directory) / BYTE_TOKENIZER_FILE).read_text())
        tokenizer = cls()
        expected = {"type": "byte", "version": 1, "offset": cls.offset, "vocab_size": cls.vocab_size}
        found = {key: payload.get(key) for key in expected}
        if found != expected:
            raise ValueError(f"{directory}: byte tokenizer file {found} does not match {expected}")
        return tokenizer


class HFTokenizer:
    """A ``transformers`` tokenizer seen through the :class:`Tokenizer` protocol.

    ``encode`` never lets the tokenizer add its own special tokens; bos/eos are added only on
    request, so packing and prompt masking work the same way for every tokenizer. A tokenizer with
    no pad token pads with eos (LLaMA's has none); padded positions are always masked, so that is safe.
    """

    def __init__(self, path_or_id: str | Path, revision: str | None = None) -> None:
        """Load with ``AutoTokenizer.from_pretrained`` (remote code is never trusted).

        Raises:
            ValueError: the tokenizer has neither an eos nor a pad token.
            OSError: ``path_or_id`` is neither a tokenizer directory nor a reachable hub id.
        """
        from transformers import AutoTokenizer  # imported here: loading transformers takes seconds

        self.hf = AutoTokenizer.from_pretrained(str(path_or_id), revision=revision, trust_remote_code=False)
        self.name = str(path_or_id)
        eos = self.hf.eos_token_id
        pad = self.hf.pad_token_id if self.hf.pad_token_id is not None else eos
        if eos is None or pad is None:
            raise ValueError(f"tokenizer {self.name!r} has no eos token, so documents cannot be separated")
        self.eos_token_id: int = int(eos)
        self.pad_token_id: int = int(pad)
        self.bos_token_id: int | None = None if self.hf.bos_token_id is None else int(self.hf.bos_token_id)
        # len() counts added tokens too, unlike ``hf.vocab_size``: every id encode can return is < this.
        self.vocab_size: int = len(self.hf)
        probe = list(self.hf("a")["input_ids"])
        self.adds_bos: bool = bool(probe) and self.bos_token_id is not None and probe[0] == self.bos_token_id

    def hf_tokenizer(self) -> Any:
        """The wrapped ``transformers`` tokenizer."""
        return self.hf

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of ``text``; bos (if the tokenizer has one) and eos only when asked for."""
        ids = list(self.hf(text, add_special_tokens=False)["input_ids"])
        if add_bos and self.bos_token_id is not None:
            ids.insert(0, self.bos_token_id)
        if add_eos:
            ids.append(self.eos_token_id)
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` with special tokens skipped."""
        return self.hf.decode(list(ids), skip_special_tokens=True)

    @property
    def fingerprint(self) -> str:
        """SHA-256 (16 hex digits) of the serialised tokenizer, or of its vocabulary if it has none."""
        backend = getattr(self.hf, "backend_tokenizer", None)
        payload = backend.to_str() if backend is not None else json.dumps(sorted(self.hf.get_vocab().items()))
        return "hf-" + short_digest(hashlib.sha256(payload.encode()))

    def save(self, directory: str | Path) -> None:
        """``save_pretrained`` into ``directory``."""
        self.hf.save_pretrained(str(directory))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable character for each byte (what ``tokenizers``' ByteLevel maps bytes to)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = [b for b in range(256) if b not in printable]
    return dict(
        zip(printable + extra, map(chr, printable + [256 + i for i in range(len(extra))]), strict=True)
    )


@cache
def _byte_tokenizer_json() -> str:
    from tokenizers import Tokenizer as FastTokenizer
    from tokenizers import decoders, models, pre_tokenizers, processors

    chars = _bytes_to_unicode()
    vocab = {"<|pad|>": 0, "<|bos|>": 1, "<|eos|>": 2} | {
        chars[b]: b + ByteTokenizer.offset for b in range(256)
    }
    fast = FastTokenizer(models.BPE(vocab=vocab, merges=[]))  # no merges: one token per byte
    fast.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    fast.decoder = decoders.ByteLevel()
    fast.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", 1)]
    )
    return fast.to_str()


def byte_fast_tokenizer() -> Any:
    """:class:`ByteTokenizer` as a ``transformers`` fast tokenizer: byte ``b`` is id ``b + 3``, 0/1/2
    are pad/bos/eos, bos goes before every text (``add_special_tokens``, as LLaMA's), and the special
    tokens' spellings in a text are read as bytes (``split_special_tokens``), so every text gets the
    same ids from both."""
    from tokenizers import Tokenizer as FastTokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=FastTokenizer.from_str(_byte_tokenizer_json()),
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        split_special_tokens=True,
        model_max_length=1_000_000_000,
    )


def load_tokenizer_directory(directory: str | Path) -> Tokenizer:
    """The tokenizer saved in ``directory``: a :class:`ByteTokenizer` if its file is there, else HF's.

    Raises:
        OSError: the directory holds neither.
    """
    path = Path(directory)
    if (path / BYTE_TOKENIZER_FILE).is_file():
        return ByteTokenizer.load(path)
    return HFTokenizer(path)


def load_tokenizer(model_spec: ModelSpec, artifact_dir: str | Path | None = None) -> Tokenizer:
    """The tokenizer that goes with ``model_spec``.

    Args:
        model_spec: ``preset`` gives a :class:`ByteTokenizer`; ``hub`` an :class:`HFTokenizer` of
            ``name`` at ``revision``; ``local`` whatever ``name`` (a directory) holds;
            ``artifact`` whatever the earlier run saved in ``artifact_dir``.
        artifact_dir: the directory of the artifact, for ``source='artifact'``.

    Raises:
        ValueError: ``source='artifact'`` without ``artifact_dir``.
    """
    if model_spec.source == "preset":
        return ByteTokenizer()
    if model_spec.source == "artifact":
        if artifact_dir is None:
            raise ValueError(
                "model.source='artifact' needs the artifact directory to load its tokenizer from"
            )
        return load_tokenizer_directory(artifact_dir)
    if model_spec.source == "local":
        if not Path(model_spec.name).is_dir():
            raise ValueError(f"model.name {model_spec.name!r} is not a folder written by save_pretrained")
        return load_tokenizer_directory(model_spec.name)
    check_hub_id_not_on_disk(model_spec.name, "model.name")
    return HFTokenizer(model_spec.name, revision=model_spec.revision)
