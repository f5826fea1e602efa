"""Built-in model shapes and dataset names (no torch, so specs validate anywhere): the one shapes
module every preset and the workload registry read.

LLaMA shapes are the configurations GaLore and VeLoRA use for C4 pre-training (GaLore Table 5),
LLaMA-7B/13B, and a tiny CPU model. Vocabulary 32,000 as LLaMA's tokenizer (the byte-level
tokenizer of the offline datasets uses the first 259 ids and leaves the rest unused). The ViT and
RoBERTa shapes serve the encoder workloads (VeLoRA's Tables 1 and 2).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelPreset:
    """A LLaMA-family shape."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_hidden_layers: int
    vocab_size: int = 32000
    max_position_embeddings: int = 2048
    num_key_value_heads: int | None = None
    description: str = ""
    family: str = "llama"
    tie_word_embeddings: bool = False

    def input_features(self) -> dict[str, int]:
        """Input width of each standard LLaMA projection, by module-name suffix."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": h,
            "k_proj": h,
            "v_proj": h,
            "o_proj": h,
            "gate_proj": h,
            "up_proj": h,
            "down_proj": i,
        }

    def linear_layers(self) -> dict[str, int]:
        """Every ``nn.Linear`` of the model as transformers' LLaMA names it, with its input width."""
        features = self.input_features()
        layers = {}
        for index in range(self.num_hidden_layers):
            for suffix, width in features.items():
                block = "mlp" if suffix in ("gate_proj", "up_proj", "down_proj") else "self_attn"
                layers[f"model.layers.{index}.{block}.{suffix}"] = width
        layers["lm_head"] = self.hidden_size
        return layers


@dataclass(frozen=True)
class ViTPreset:
    """A ViT shape (transformers' ``ViTConfig``) for image classification."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_hidden_layers: int
    image_size: int
    patch_size: int
    num_channels: int = 3
    description: str = ""
    family: str = "vit"
    #: ViT has no token positions to bound ``seq_len`` (it reads images).
    max_position_embeddings: int | None = None

    def linear_layers(self) -> dict[str, int]:
        """Every ``nn.Linear`` of ``ViTForImageClassification`` by full name, with its input width."""
        h, i = self.hidden_size, self.intermediate_size
        layers = {}
        for n in range(self.num_hidden_layers):
            block = f"vit.layers.{n}"
            for part in ("q_proj", "k_proj", "v_proj", "o_proj"):
                layers[f"{block}.attention.{part}"] = h
            layers[f"{block}.mlp.fc1"] = h
            layers[f"{block}.mlp.fc2"] = i
        layers["classifier"] = h
        return layers


@dataclass(frozen=True)
class RobertaPreset:
    """A RoBERTa shape (``RobertaConfig``) for masked-LM pre-training and sequence classification.

    Vocabulary 320 covers the offline byte-level tokenizer's 259 ids and its mask token (id 259).
    """

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_hidden_layers: int
    vocab_size: int = 320
    max_position_embeddings: int = 512
    #: Dropout of the hidden states and of the attention probabilities (RobertaConfig's 0.1).
    dropout: float = 0.1
    description: str = ""
    family: str = "roberta"

    def linear_layers(self) -> dict[str, int]:
        """Every ``nn.Linear`` of ``RobertaForSequenceClassification`` by full name, with its input width."""
        h, i = self.hidden_size, self.intermediate_size
        layers = {}
        for n in range(self.num_hidden_layers):
            block = f"roberta.encoder.layer.{n}"
            for part in ("query", "key", "value"):
                layers[f"{block}.attention.self.{part}"] = h
            layers[f"{block}.attention.output.dense"] = h
            layers[f"{block}.intermediate.dense"] = h
            layers[f"{block}.output.dense"] = i
        layers["classifier.dense"] = h
        layers["classifier.out_proj"] = h
        return layers


ENCODER_PRESETS: dict[str, ViTPreset | RobertaPreset] = {
    "vit-digits": ViTPreset(
        64,
        128,
        4,
        4,
        image_size=8,
        patch_size=2,
        num_channels=1,
        description="Tiny ViT for scikit-learn's 8x8 digits (16 patches of 2x2, one channel)",
    ),
    "vit-b16": ViTPreset(
        768,
        3072,
        12,
        12,
        image_size=224,
        patch_size=16,
        description="ViT-B/16's shape (google/vit-base-patch16-224-in21k), random weights",
    ),
    "roberta-stdlib": RobertaPreset(
        128,
        512,
        4,
        4,
        max_position_embeddings=512,
        # Minutes of training on a small corpus: dropout only slows learning down.
        dropout=0.0,
        description="Small RoBERTa for the offline stdlib tasks (byte-level vocabulary, no dropout)",
    ),
    "roberta-base": RobertaPreset(
        768,
        3072,
        12,
        12,
        vocab_size=50265,
        max_position_embeddings=512,
        description="RoBERTa-base's shape (random weights)",
    ),
}


MODEL_PRESETS: dict[str, ModelPreset | ViTPreset | RobertaPreset] = {
    "tiny": ModelPreset(
        128,
        352,
        4,
        2,
        vocab_size=320,
        max_position_embeddings=512,
        description="Tiny LLaMA for CPUs and tests (byte-level vocabulary)",
    ),
    "small": ModelPreset(
        256,
        688,
        4,
        4,
        vocab_size=320,
        max_position_embeddings=1024,
        description="Small LLaMA for the offline demo (byte-level vocabulary)",
    ),
    "llama-60m": ModelPreset(
        512, 1376, 8, 8, max_position_embeddings=1024, description="GaLore/VeLoRA C4 60M"
    ),
    "llama-130m": ModelPreset(
        768, 2048, 12, 12, max_position_embeddings=1024, description="GaLore/VeLoRA C4 130M"
    ),
    "llama-350m": ModelPreset(1024, 2736, 16, 24, max_position_embeddings=1024, description="GaLore C4 350M"),
    "llama-1b": ModelPreset(2048, 5461, 24, 32, max_position_embeddings=1024, description="GaLore C4 1B"),
    "llama-7b": ModelPreset(4096, 11008, 32, 32, max_position_embeddings=4096, description="LLaMA-7B shape"),
    "llama-13b": ModelPreset(
        5120, 13824, 40, 40, max_position_embeddings=4096, description="LLaMA-13B shape"
    ),
    # Shapes from the models' config.json (fit and benchmarks/reference_memory.py: published measurements).
    "llama-3.2-3b": ModelPreset(
        3072,
        8192,
        24,
        28,
        vocab_size=128256,
        max_position_embeddings=131072,
        num_key_value_heads=8,
        tie_word_embeddings=True,
        description="meta-llama/Llama-3.2-3B shape (tied embeddings, 8 KV heads)",
    ),
    "llama-2-70b": ModelPreset(
        8192,
        28672,
        64,
        80,
        max_position_embeddings=4096,
        num_key_value_heads=8,
        description="meta-llama/Llama-2-70b-hf shape (80 layers, 8 KV heads)",
    ),
    **ENCODER_PRESETS,  # ViT and RoBERTa shapes of the encoder workloads
}

#: Built-in datasets: name -> (kind, description). ``lm`` = plain text, ``mc`` = multiple choice,
#: ``instruct`` = instruction tuning, ``image`` / ``text-classes`` = labelled images / texts.
DATASETS: dict[str, tuple[str, str]] = {
    "stdlib-corpus": ("lm", "Offline: the running Python's standard-library sources, split by file"),
    "stdlib-mc": ("mc", "Offline: docstring -> which of four function names, from the standard library"),
    "stdlib-next-line": (
        "mc",
        "Offline: which of four lines comes next in held-out standard-library code (scored by likelihood)",
    ),
    "c4": ("lm", "allenai/c4 'en', streamed from the hub"),
    "alpaca": ("instruct", "yahma/alpaca-cleaned with the Alpaca prompt template, from the hub"),
    "mmlu": ("mc", "cais/mmlu 'all', 5-shot by answer-letter log-likelihood, from the hub"),
    "digits": ("image", "Offline: scikit-learn's 8x8 handwritten digits, 10 classes, 20% held out for test"),
    "digits-rotation": (
        "image",
        "Offline pretext: the digits' training images turned by 0/90/180/270 degrees; predict the turn",
    ),
    "stdlib-package": (
        "text-classes",
        "Offline: a standard-library function's source -> its package; test functions from held-out files",
    ),
}
