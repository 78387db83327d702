"""A tiny, randomly initialised BLIP-2 image-text-matching model built offline.

It has the real architecture and the real transformers classes, so every code
path (loading, batching, the ITM head, caching) runs exactly as with
``Salesforce/blip2-itm-vit-g``; its scores are meaningless. Tests and the
offline demo use it because no model hub can be reached here.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    BertTokenizer,
    Blip2Config,
    Blip2ForImageTextRetrieval,
    Blip2Processor,
)
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = [
    "a", "an", "the", "of", "or", "and", "with", "photo", "picture", "image", "eye", "eyes",
    "open", "closed", "shut", "pupil", "eyelid", "lid", "visible", "cat", "dog", "person", "face",
    "blink", "blinking", "wide", "looking",
]


def make_processor(folder: str | Path, image_size: int) -> Blip2Processor:
    """A BLIP-2 processor with a small WordPiece vocabulary written into ``folder``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = _SPECIAL + _WORDS + letters + ["##" + c for c in letters]
    (out / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tokenizer = BertTokenizer.from_pretrained(str(out))
    image_processor = BlipImageProcessorPil(size={"height": image_size, "width": image_size}, do_convert_rgb=True)
    return Blip2Processor(image_processor, tokenizer, num_query_tokens=None)


def full_size_random_blip2(folder: str | Path, seed: int = 0) -> tuple[Blip2ForImageTextRetrieval, Blip2Processor]:
    """The architecture of ``Salesforce/blip2-itm-vit-g`` (default ``Blip2Config``) with random
    weights: the same compute as the real checkpoint, for throughput benchmarks and numeric checks (bf16 and
    int8 against fp32). The query tokens are randomised (they start at zero), so scores differ between images."""
    processor = make_processor(folder, 224)
    # The vision tower's default init range (1e-10) would make every image look alike: a ViT's usual 0.02.
    config = Blip2Config(vision_config={"initializer_range": 0.02}, qformer_config={"use_qformer_text_input": True})
    torch.manual_seed(seed)
    model = Blip2ForImageTextRetrieval(config).eval()
    with torch.no_grad():
        model.query_tokens.normal_(0.0, 1.0)
    return model, processor


def build_tiny_blip2(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny BLIP-2 ITM checkpoint + processor to ``out_dir`` and return it."""
    out = Path(out_dir)
    processor = make_processor(out, 32)
    tokenizer = processor.tokenizer

    config = Blip2Config(
        vision_config={
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "image_size": 32, "patch_size": 8,
            "initializer_range": 0.5,
        },
        qformer_config={
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "encoder_hidden_size": 32,
            "vocab_size": len(tokenizer), "use_qformer_text_input": True,
            "max_position_embeddings": 64, "initializer_range": 0.5,
        },
        num_query_tokens=4,
        image_text_hidden_size=16,
    )
    torch.manual_seed(seed)
    model = Blip2ForImageTextRetrieval(config)
    # A fresh model scores every image alike (zero query tokens, 1e-10 init):
    # randomise so that scores spread and ranking has something to rank.
    with torch.no_grad():
        model.query_tokens.normal_(0.0, 1.0)
        model.itm_head.weight.normal_(0.0, 1.0)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
