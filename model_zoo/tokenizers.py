"""Tokenizers of the supported families, on SentencePiece only (no transformers, no remote code).

`load_tokenizer(model_dir)` picks the family from the files in the directory (`ice_text.model` →
ChatGLM-6B, `tokenizer.model` → Llama-2, or ChatGLM2/3 when tokenizer_config.json names
`ChatGLMTokenizer`) or from a model file path. Every tokenizer offers:

    encode(text, add_special_tokens=True) -> list[int]
    decode(ids, skip_special_tokens=True) -> str
    batch_encode(texts, add_special_tokens=True) -> Batch   (LEFT padded: input_ids, attention_mask)
    build_chat_prompt(query, history=()) -> str             (history: [(query, response), …])
    encode_chat(query, history=()) -> list[int]
    eos_ids: tuple[int, ...]; pad_id: int; bos_id: int | None; vocab_size: int

Facts: ../shared/reference/model_architectures.md §1.8–1.9 (ChatGLM-6B: whitespace and newline
pre-processing, appended [gMASK] <sop>, chat rounds), §2 (ChatGLM2/3: special tokens after the
pieces, prepended [gMASK] sop, "[Round n]" / role-token chat formats), §3.4 and §6 (Llama-2: BOS 1
prepended).
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


def render_chat_template(template: str, messages: Sequence[dict], add_generation_prompt: bool = True,
                         **variables) -> str:
    """Render a Hugging Face jinja chat template as transformers renders it.

    The environment is the one transformers documents for `apply_chat_template`: a sandboxed,
    immutable jinja2 environment with `trim_blocks` and `lstrip_blocks`, the loop-controls
    extension, the `tojson` filter that keeps non-ASCII text and the globals `raise_exception`
    and `strftime_now`. `variables` are the special tokens (`bos_token`, `eos_token`, …) the
    template may name.

    Raises:
        ConfigError: the template does not parse, or it raises (naming its message).
    """
    import json as _json
    from datetime import datetime

    jinja2 = require("jinja2", purpose="chat templates")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return _json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template).render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                                **variables)
    except jinja2.exceptions.TemplateError as exc:
        raise ConfigError(f"chat template: {exc}", "fix tokenizer_config.json's chat_template or the messages") from None


def chat_messages(query: str, history: Sequence[tuple[str, str]] = (), system: str | None = None) -> list[dict]:
    """[(query, response), …] + query (+ a system prompt) as the role/content messages of chat templates."""
    msgs = [{"role": "system", "content": system}] if system else []
    for q, a in history:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return msgs + [{"role": "user", "content": query}]


def _token_text(value) -> str | None:
    """A special token of tokenizer_config.json: a string or an AddedToken dict ({"content": …})."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class BPETokenizer:
    """Byte-level BPE (GPT-2 style: Qwen2/2.5/3, SmolLM2, Llama-3) from `tokenizer.json`, through
    the `tokenizers` library, with the chat template of `tokenizer_config.json`.

    Args:
        tokenizer_json: path of `tokenizer.json` (vocabulary, merges, pre-tokenizer, added tokens).
        tokenizer_config: the parsed `tokenizer_config.json` (chat_template, bos/eos/pad tokens).
        eos_ids: stop ids (config.json / generation_config.json `eos_token_id`); default: the
            tokenizer_config's `eos_token`.
        pad_id: left-padding id; default: `pad_token`, else the first stop id.
    """

    family = "byte-level BPE"

    def __init__(self, tokenizer_json, tokenizer_config: dict | None = None, eos_ids: Sequence[int] | None = None,
                 pad_id: int | None = None):
        tokenizers = require("tokenizers", purpose="byte-level BPE tokenizers (tokenizer.json)")
        self.model_file = Path(tokenizer_json)
        if not self.model_file.is_file():
            raise CheckpointError(f"{self.model_file}: tokenizer.json not found")
        try:
            self.tok = tokenizers.Tokenizer.from_file(str(self.model_file))
        except Exception as exc:  # noqa: BLE001 - the library raises Exception subclasses of its own
            raise CheckpointError(f"{self.model_file}: not a tokenizers tokenizer.json ({str(exc)[:200]})",
                                  "use the tokenizer.json that came with the checkpoint") from None
        self.config = dict(tokenizer_config or {})
        self.chat_template = self.config.get("chat_template")
        if isinstance(self.chat_template, list):  # [{"name": "default", "template": …}, …]
            named = {t.get("name"): t.get("template") for t in self.chat_template if isinstance(t, dict)}
            self.chat_template = named.get("default")
        self.special = {k: _token_text(self.config.get(k)) for k in
                        ("bos_token", "eos_token", "pad_token", "unk_token")}
        bos = self.special["bos_token"]
        self.bos_id = self.tok.token_to_id(bos) if bos else None
        if eos_ids:
            self.eos_ids = tuple(int(e) for e in eos_ids)
        else:
            eos = self.special["eos_token"]
            eid = self.tok.token_to_id(eos) if eos else None
            self.eos_ids = (eid,) if eid is not None else ()
        pad = self.special["pad_token"]
        pid = self.tok.token_to_id(pad) if pad else None
        self.pad_id = int(pad_id) if pad_id is not None else (pid if pid is not None else
                                                                (self.eos_ids[0] if self.eos_ids else 0))

    @classmethod
    def from_dir(cls, model_dir: Path) -> "BPETokenizer":
        tc = _read_json(model_dir / "tokenizer_config.json")
        gc = _read_json(model_dir / "generation_config.json")
        cfg = _read_json(model_dir / "config.json")
        eos = gc.get("eos_token_id", cfg.get("eos_token_id"))
        eos = [eos] if isinstance(eos, int) else eos
        pad = cfg.get("pad_token_id", gc.get("pad_token_id"))
        return cls(model_dir / "tokenizer.json", tc, eos_ids=eos, pad_id=pad if isinstance(pad, int) else None)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def batch_encode(self, texts: Sequence[str], add_special_tokens: bool = True) -> Batch:
        """Encode and LEFT-pad (with `pad_id`)."""
        return left_pad([self.encode(t, add_special_tokens) for t in texts], self.pad_id)

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text of role/content messages, rendered from the checkpoint's chat template."""
        if not self.chat_template:
            raise ConfigError(f"{self.model_file.parent / 'tokenizer_config.json'}: no chat_template",
                              "this checkpoint is not a chat model; drop --chat")
        return render_chat_template(self.chat_template, messages, add_generation_prompt,
                                    **{k: v for k, v in self.special.items() if v is not None})

    def build_chat_prompt(self, query: str, history: Sequence[tuple[str, str]] = (),
                          system: str | None = None) -> str:
        """The chat template applied to history + query, ending with the assistant's turn opened."""
        return self.apply_chat_template(chat_messages(query, history, system))

    def encode_chat(self, query: str, history: Sequence[tuple[str, str]] = ()) -> list[int]:
        """Token ids of a chat turn; special tokens come from the template text (no BOS added),
        as transformers' `apply_chat_template(tokenize=True)` encodes."""
        return self.encode(self.build_chat_prompt(query, history), add_special_tokens=False)

    def __repr__(self) -> str:
        return f"BPETokenizer({self.model_file.name}, vocab={self.vocab_size})"


class ChatGLM2Tokenizer(SPTokenizer):
    """ChatGLM2-6B / ChatGLM3-6B tokenizer on their `tokenizer.model` (reference §2).

    SentencePiece BPE (identity normalizer, dummy prefix, byte fallback); no text pre-processing.
    The special tokens are not pieces: as the original `SPTokenizer`, they are numbered after the
    n pieces — [MASK] n, [gMASK] n+1, [sMASK] n+2, sop n+3, eop n+4, and for ChatGLM3 <|system|>
    n+5, <|user|> n+6, <|assistant|> n+7, <|observation|> n+8 (n = 64789 in the real file).
    `encode` PREPENDS [gMASK] sop. Padding uses the unk id (0), as the original.

    ChatGLM3's role tokens written in a text are encoded as their ids (as "<s>" is for Llama), and
    the text after each role token as the original `build_single_message` encodes a message: its
    first line (the metadata + "\\n") and the rest separately, so `encode(build_chat_prompt(…))`
    gives the ids of the original's `build_chat_input`.

    Args:
        model_file: `tokenizer.model`.
        version: 2 (ChatGLM2-6B) or 3 (ChatGLM3-6B: role tokens, stops on <|user|> / <|observation|>).
    """

    family = "ChatGLM2/3"

    def __init__(self, model_file, version: int = 2):
        super().__init__(model_file)
        from ascend_adapt.model_zoo.chatglm2.adapter import ROLE_TOKENS, SPECIAL_TOKENS

        if version not in (2, 3):
            raise ConfigError(f"ChatGLM tokenizer version {version!r} is not 2 or 3")
        self.version = version
        n = self.sp.get_piece_size()
        names = SPECIAL_TOKENS + (ROLE_TOKENS if version == 3 else ())
        self.special = {name: n + i for i, name in enumerate(names)}
        self.mask_id, self.gmask_id = self.special["[MASK]"], self.special["[gMASK]"]
        self.bos_id, self.eop_id = self.special["sop"], self.special["eop"]
        self.pad_id = self.sp.unk_id()
        eos = self.sp.eos_id()
        self.eos_ids = (eos,) + ((self.special["<|user|>"], self.special["<|observation|>"]) if version == 3 else ())
        self._roles = re.compile("(" + "|".join(re.escape(r) for r in ROLE_TOKENS) + ")") if version == 3 else None

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size() + len(self.special)

    @staticmethod
    def is_glm2_dir(model_dir: Path) -> bool:
        """A directory with ChatGLM2/3's files: tokenizer.model + a ChatGLMTokenizer config."""
        tc = _read_json(model_dir / "tokenizer_config.json")
        return (model_dir / "tokenizer.model").is_file() and tc.get("tokenizer_class") == "ChatGLMTokenizer"

    @classmethod
    def from_dir(cls, model_dir: Path) -> "ChatGLM2Tokenizer":
        """The version from config.json's `_name_or_path` / `rope_ratio`, else tokenizer_config's
        `name_or_path` (`model_zoo.chatglm2.adapter.glm_version`)."""
        from ascend_adapt.model_zoo.chatglm2.adapter import glm_version

        tc = _read_json(model_dir / "tokenizer_config.json")
        cfg = _read_json(model_dir / "config.json")
        return cls(model_dir / "tokenizer.model", version=glm_version({**tc, **cfg}))

    def command(self, name: str) -> int:
        """Id of a special token by name ("[gMASK]", "sop", "<|user|>", …)."""
        if name not in self.special:
            raise ConfigError(f"ChatGLM{self.version} has no special token {name!r}",
                              f"known: {', '.join(self.special)}")
        return self.special[name]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids: list[int] = []
        parts = self._roles.split(text) if self._roles is not None else [text]
        after_role = False
        for part in parts:
            if part in self.special and self._roles is not None and self._roles.fullmatch(part):
                ids.append(self.special[part])
                after_role = True
                continue
            if after_role and "\n" in part:  # build_single_message: encode(f"{metadata}\n") + encode(message)
                cut = part.index("\n") + 1
                ids += self.sp.encode(part[:cut]) + self.sp.encode(part[cut:])
            elif part:
                ids += self.sp.encode(part)
            after_role = False
        if add_special_tokens:
            ids = [self.gmask_id, self.bos_id] + ids
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        n = self.sp.get_piece_size()
        names = {v: k for k, v in self.special.items()}
        out, run = [], []
        for i in (int(t) for t in ids):
            if 0 <= i < n and not (skip_special_tokens and i in (self.pad_id, self.sp.bos_id(), self.sp.eos_id())):
                run.append(i)
            elif not skip_special_tokens and i in names:
                out.append(self.sp.decode(run) + names[i])
                run = []
        return "".join(out) + self.sp.decode(run)

    def build_chat_prompt(self, query: str, history: Sequence[tuple[str, str]] = (),
                          system: str | None = None) -> str:
        """ChatGLM2 (§2): `[Round i]\\n\\n问：{q}\\n\\n答：{r}\\n\\n` per past turn (1-based), then
        `[Round N+1]\\n\\n问：{query}\\n\\n答：`. ChatGLM3: `<|system|>\\n{system}` (optional), then
        `<|user|>\\n{q}<|assistant|>\\n{r}` per past turn, then `<|user|>\\n{query}<|assistant|>`."""
        if self.version == 2:
            if system:
                raise ConfigError("ChatGLM2 has no system role", "put the instruction into the query")
            prompt = "".join(f"[Round {i + 1}]\n\n问：{q}\n\n答：{r}\n\n" for i, (q, r) in enumerate(history))
            return prompt + f"[Round {len(history) + 1}]\n\n问：{query}\n\n答："
        prompt = f"<|system|>\n{system}" if system else ""
        prompt += "".join(f"<|user|>\n{q}<|assistant|>\n{r}" for q, r in history)
        return prompt + f"<|user|>\n{query}<|assistant|>"



def load_chat_history(path) -> tuple[list[tuple[str, str]], str | None]:
    """A `generate --chat --history FILE`: earlier turns of the conversation, as JSON.

    Two forms are read: a list of [query, response] pairs, or a list of role/content messages
    ({"role": "system" | "user" | "assistant", "content": "…"}; an optional system message first,
    then user / assistant turns alternating, ending with an assistant turn — the new query is
    the --prompt).

    Returns:
        ([(query, response), …], the system prompt or None).

    Raises:
        ConfigError: not readable JSON, or an entry that is neither form (naming the entry).
    """
    p = Path(path)
    hint = ('write a JSON list of [query, response] pairs, or of {"role": "user"|"assistant", "content": …} '
            "messages ending with an assistant turn")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{p}: chat history is not readable JSON ({str(exc)[:200]})", hint) from None
    if not isinstance(data, list):
        raise ConfigError(f"{p}: chat history must be a JSON list, got {type(data).__name__}", hint)
    system = None
    if data and all(isinstance(m, dict) for m in data):
        msgs = list(data)
        for i, m in enumerate(msgs):
            if set(m) - {"role", "content"} or not isinstance(m.get("content"), str) or \
                    m.get("role") not in ("system", "user", "assistant"):
                raise ConfigError(f"{p}: message {i} is not {{'role': system|user|assistant, 'content': text}}",
                                  hint)
        if msgs[0]["role"] == "system":
            system = msgs.pop(0)["content"]
        roles = [m["role"] for m in msgs]
        if roles != ["user", "assistant"] * (len(msgs) // 2):
            raise ConfigError(f"{p}: messages must alternate user / assistant and end with an assistant turn "
                              f"(got {', '.join(roles)[:200]})", hint)
        return [(msgs[i]["content"], msgs[i + 1]["content"]) for i in range(0, len(msgs), 2)], system
    pairs = []
    for i, t in enumerate(data):
        if not (isinstance(t, list) and len(t) == 2 and all(isinstance(x, str) for x in t)):
            raise ConfigError(f"{p}: entry {i} is not a [query, response] pair of strings", hint)
        pairs.append((t[0], t[1]))
    return pairs, system

# model file name → tokenizer class (data: add a family by adding a row)
_FILES = (("ice_text.model", ChatGLMTokenizer), ("tokenizer.model", LlamaTokenizer), ("tokenizer.json", BPETokenizer))


def load_tokenizer(model_dir):
    """The tokenizer of a model directory (or of a SentencePiece model file).

    Args:
        model_dir: a checkpoint / artifact directory holding `ice_text.model` (ChatGLM-6B) or
            `tokenizer.model` (Llama-2; ChatGLM2/3 when tokenizer_config.json names
            ChatGLMTokenizer), or the path of such a file (the family is then taken from a
            ChatGLM special piece being present: a bare ChatGLM2/3 file reads as Llama's, use
            `ChatGLM2Tokenizer(path, version)` for it). A directory with only `tokenizer.json`
            (Qwen2/2.5/3, SmolLM2) gets the byte-level `BPETokenizer`; a llama.cpp `.gguf` file
            the `BPETokenizer` of its vocabulary.
    """
    p = Path(model_dir)
    if p.is_file() and p.suffix.lower() == ".gguf":  # llama.cpp file: its vocabulary → tokenizer.json
        from ascend_adapt.checkpoint.gguf_io import gguf_tokenizer

        return gguf_tokenizer(p)
    if p.is_file():
        spm = require("sentencepiece", purpose="tokenizers")
        sp = spm.SentencePieceProcessor(model_file=str(p))
        glm = sp.piece_to_id("[gMASK]") != sp.unk_id()
        return ChatGLMTokenizer(p) if glm else LlamaTokenizer(p)
    if not p.is_dir():
        raise CheckpointError(f"{p}: no such directory")
    if not (p / "ice_text.model").is_file() and ChatGLM2Tokenizer.is_glm2_dir(p):  # tokenizer.model too
        return ChatGLM2Tokenizer.from_dir(p)
    for fname, cls in _FILES:
        if (p / fname).is_file():
            return cls.from_dir(p)
    raise CheckpointError(
        f"{p}: no tokenizer found (looked for {', '.join(f for f, _ in _FILES)})",
        "copy the tokenizer files of the source checkpoint into this directory",
    )
