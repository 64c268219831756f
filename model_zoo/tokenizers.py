"""Tokenizers of the supported families, on SentencePiece only (no transformers, no remote code).

`load_tokenizer(model_dir)` picks the family from the files in the directory (`ice_text.model` →
ChatGLM-6B, `tokenizer.model` → Llama-2) or from a model file path. Every tokenizer offers:

    encode(text, add_special_tokens=True) -> list[int]
    decode(ids, skip_special_tokens=True) -> str
    batch_encode(texts, add_special_tokens=True) -> Batch   (LEFT padded: input_ids, attention_mask)
    build_chat_prompt(query, history=()) -> str             (history: [(query, response), …])
    encode_chat(query, history=()) -> list[int]
    eos_ids: tuple[int, ...]; pad_id: int; bos_id: int | None; vocab_size: int

Facts: ../shared/reference/model_architectures.md §1.8–1.9 (ChatGLM-6B: whitespace and newline
pre-processing, appended [gMASK] <sop>, chat rounds), §3.4 and §6 (Llama-2: BOS 1 prepended).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ascend_adapt._optional import require
from ascend_adapt.errors import CheckpointError, ConfigError


@dataclass
class Batch:
    """Left-padded token ids.

    Attributes:
        input_ids: [B, S] int64, padded on the left with `pad_id`.
        attention_mask: [B, S] int64, 1 = real token, 0 = padding.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return self.attention_mask.sum(1)


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> Batch:
    """Left-pad token lists to one length."""
    if not seqs:
        raise ConfigError("batch_encode got no texts")
    S = max(len(s) for s in seqs)
    ids = np.full((len(seqs), S), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), S), dtype=np.int64)
    for b, s in enumerate(seqs):
        if len(s):
            ids[b, S - len(s):] = s
            mask[b, S - len(s):] = 1
    return Batch(ids, mask)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except ValueError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None


class SPTokenizer:
    """Common SentencePiece plumbing."""

    family = ""

    def __init__(self, model_file):
        spm = require("sentencepiece", purpose="tokenizers")
        self.model_file = Path(model_file)
        if not self.model_file.is_file():
            raise CheckpointError(f"{self.model_file}: tokenizer model not found")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.model_file))
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"{self.model_file}: not a SentencePiece model ({exc})",
                                  "use the tokenizer file that came with the checkpoint") from None

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def piece_id(self, piece: str) -> int:
        """Id of a piece by name; raises when the model does not have it."""
        i = self.sp.piece_to_id(piece)
        if i == self.sp.unk_id() and piece != self.sp.id_to_piece(self.sp.unk_id()):
            raise CheckpointError(f"{self.model_file}: piece '{piece}' is not in the vocabulary",
                                  f"this is not a {self.family} tokenizer")
        return i

    def batch_encode(self, texts: Sequence[str], add_special_tokens: bool = True) -> Batch:
        """Encode and LEFT-pad (with `pad_id`)."""
        return left_pad([self.encode(t, add_special_tokens) for t in texts], self.pad_id)

    def encode_chat(self, query: str, history: Sequence[tuple[str, str]] = ()) -> list[int]:
        """Token ids of a chat turn (the prompt of `build_chat_prompt`, with special tokens)."""
        return self.encode(self.build_chat_prompt(query, history))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_file.name}, vocab={self.vocab_size})"


class LlamaTokenizer(SPTokenizer):
    """Llama-2 SentencePiece BPE tokenizer (BOS 1 prepended, EOS 2).

    The literal strings "<s>" and "</s>" in a text are mapped to BOS / EOS ids (as transformers
    does), so chat prompts can be written as text.

    Args:
        model_file: `tokenizer.model`.
        add_bos: prepend BOS when `add_special_tokens` (tokenizer_config `add_bos_token`).
        add_eos: append EOS when `add_special_tokens` (`add_eos_token`).
        pad_id: id used for left padding (Llama-2 has none; default 0, as its generation_config).
    """

    family = "Llama-2"
    _SPECIAL = re.compile(r"(<s>|</s>)")

    def __init__(self, model_file, add_bos: bool = True, add_eos: bool = False, pad_id: int | None = None,
                 eos_ids: Sequence[int] | None = None):
        super().__init__(model_file)
        self.add_bos, self.add_eos = add_bos, add_eos
        self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
        eos = self.sp.eos_id()
        self.eos_ids = tuple(int(e) for e in eos_ids) if eos_ids else ((eos,) if eos >= 0 else ())
        sp_pad = self.sp.pad_id()
        self.pad_id = int(pad_id) if pad_id is not None else (sp_pad if sp_pad >= 0 else 0)

    @classmethod
    def from_dir(cls, model_dir: Path) -> "LlamaTokenizer":
        tc = _read_json(model_dir / "tokenizer_config.json")
        gc = _read_json(model_dir / "generation_config.json")
        cfg = _read_json(model_dir / "config.json")
        pad = cfg.get("pad_token_id")
        if pad is None:
            pad = gc.get("pad_token_id")
        eos = cfg.get("eos_token_id", gc.get("eos_token_id"))
        eos = [eos] if isinstance(eos, int) else eos
        return cls(model_dir / "tokenizer.model", add_bos=tc.get("add_bos_token", True),
                   add_eos=tc.get("add_eos_token", False), pad_id=pad, eos_ids=eos)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids: list[int] = []
        for part in self._SPECIAL.split(text):
            if part == "<s>" and self.bos_id is not None:
                ids.append(self.bos_id)
            elif part == "</s>" and self.eos_ids:
                ids.append(self.eos_ids[0])
            elif part:
                ids.extend(self.sp.encode(part))
        if add_special_tokens:
            if self.add_bos and self.bos_id is not None:
                ids = [self.bos_id] + ids
            if self.add_eos and self.eos_ids:
                ids = ids + [self.eos_ids[0]]
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            drop = {self.bos_id, self.pad_id, *self.eos_ids}
            ids = [i for i in ids if i not in drop]
        return self.sp.decode(ids)

    def build_chat_prompt(self, query: str, history: Sequence[tuple[str, str]] = (),
                          system: str | None = None) -> str:
        """Llama-2-chat format (§3.4): `[INST] <<SYS>>…<</SYS>> q [/INST] a </s><s>[INST] q2 [/INST]`.

        The leading `<s>` is left to `encode` (BOS); later turns carry `</s><s>` in the text.
        """
        turns = list(history) + [(query, None)]
        out = []
        for i, (q, a) in enumerate(turns):
            if i == 0 and system:
                q = f"<<SYS>>\n{system}\n<</SYS>>\n\n{q}"
            s = ("" if i == 0 else "<s>") + f"[INST] {q.strip()} [/INST]"
            if a is not None:
                s += f" {a.strip()} </s>"
            out.append(s)
        return "".join(out)


class ChatGLMTokenizer(SPTokenizer):
    """ChatGLM-6B (v1) tokenizer on `ice_text.model` (§1.8).

    Before SentencePiece: "\\n" → "<n>", "\\t" → "<|tab|>", runs of 2…80 spaces → "<|blank_k|>"
    (longest first); decoding reverses them. `encode` appends [gMASK] <sop>. Special ids are
    looked up by piece name, so tiny test tokenizers work as well as the real file.

    Args:
        model_file: `ice_text.model`.
        num_image_tokens: id offset of the pre-"slim" release (20000); 0 for the current one.
    """

    family = "ChatGLM-6B"
    MAX_BLANK = 80

    def __init__(self, model_file, num_image_tokens: int = 0, remove_space: bool = False):
        super().__init__(model_file)
        self.offset = int(num_image_tokens)
        self.remove_space = remove_space
        o = self.offset
        self.gmask_id = self.piece_id("[gMASK]") + o
        self.mask_id = self.piece_id("[MASK]") + o
        self.bos_id = self.piece_id("<sop>") + o
        self.eop_id = self.piece_id("<eop>") + o
        self.pad_id = self.piece_id("<pad>") + o
        self.eos_ids = (self.eop_id,)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size() + self.offset

    @classmethod
    def from_dir(cls, model_dir: Path) -> "ChatGLMTokenizer":
        tc = _read_json(model_dir / "tokenizer_config.json")
        return cls(model_dir / "ice_text.model", num_image_tokens=tc.get("num_image_tokens", 0),
                   remove_space=tc.get("remove_space", False))

    @classmethod
    def preprocess(cls, text: str) -> str:
        text = text.replace("\n", "<n>").replace("\t", "<|tab|>")
        for k in range(cls.MAX_BLANK, 1, -1):
            text = text.replace(" " * k, f"<|blank_{k}|>")
        return text

    @classmethod
    def postprocess(cls, text: str) -> str:
        text = text.replace("<n>", "\n").replace("<|tab|>", "\t")
        for k in range(2, cls.MAX_BLANK + 1):
            text = text.replace(f"<|blank_{k}|>", " " * k)
        return text

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if self.remove_space:
            text = " ".join(text.strip().split())
        ids = [i + self.offset for i in self.sp.encode(self.preprocess(text))]
        if add_special_tokens:
            ids += [self.gmask_id, self.bos_id]
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        ids = [int(i) - self.offset for i in ids]
        ids = [i for i in ids if i >= 0 and i < self.sp.get_piece_size()]
        if skip_special_tokens:
            ids = [i for i in ids if i != self.pad_id - self.offset]
        return self.postprocess(self.sp.decode(ids))

    def build_chat_prompt(self, query: str, history: Sequence[tuple[str, str]] = ()) -> str:
        """§1.9: the raw query without history; else `[Round i]\\n问：{q}\\n答：{r}\\n` per turn,
        then `[Round N]\\n问：{query}\\n答：`."""
        if not history:
            return query
        prompt = "".join(f"[Round {i}]\n问：{q}\n答：{r}\n" for i, (q, r) in enumerate(history))
        return prompt + f"[Round {len(history)}]\n问：{query}\n答："

    @staticmethod
    def postprocess_response(text: str) -> str:
        """The original `chat()` clean-up: strip, "[[训练时间]]" → "2023年", half-width
        punctuation next to CJK characters → full-width."""
        text = text.strip().replace("[[训练时间]]", "2023年")
        pairs = [(",", "，"), ("!", "！"), (":", "："), (";", "；"), (r"\?", "？")]
        for half, full in pairs:
            text = re.sub(r"([\u4e00-\u9fff])%s" % half, r"\1%s" % full, text)
            text = re.sub(r"%s([\u4e00-\u9fff])" % half, r"%s\1" % full, text)
        return text


# model file name → tokenizer class (data: add a family by adding a row)
_FILES = (("ice_text.model", ChatGLMTokenizer), ("tokenizer.model", LlamaTokenizer))


def load_tokenizer(model_dir):
    """The tokenizer of a model directory (or of a SentencePiece model file).

    Args:
        model_dir: a checkpoint / artifact directory holding `ice_text.model` (ChatGLM-6B) or
            `tokenizer.model` (Llama-2), or the path of such a file (the family is then taken
            from a ChatGLM special piece being present).
    """
    p = Path(model_dir)
    if p.is_file():
        spm = require("sentencepiece", purpose="tokenizers")
        sp = spm.SentencePieceProcessor(model_file=str(p))
        glm = sp.piece_to_id("[gMASK]") != sp.unk_id()
        return ChatGLMTokenizer(p) if glm else LlamaTokenizer(p)
    if not p.is_dir():
        raise CheckpointError(f"{p}: no such directory")
    for fname, cls in _FILES:
        if (p / fname).is_file():
            return cls.from_dir(p)
    raise CheckpointError(
        f"{p}: no tokenizer found (looked for {', '.join(f for f, _ in _FILES)})",
        "copy the tokenizer files of the source checkpoint into this directory",
    )
