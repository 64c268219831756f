"""Calibration for W8A8: the text set, and per-input-channel activation statistics of every Linear.

The statistic SmoothQuant and the static activation scales need is, for every Linear, the
largest |x| seen on each input channel over the calibration tokens: `amax[j] = max |x[..., j]|`.
It is collected by running the model's fp32 torch golden (`ascend_adapt.backends.torch.session`:
transformers' Llama / Qwen classes, our ChatGLM modules; layer by layer, below) over the calibration set with a
forward pre-hook on each `nn.Linear`, one prompt at a time (batch 1, no padding, so no pad token
enters a statistic).

Calibration sets:

- `"builtin"`: `ascend_adapt/quant/data/calib_builtin.jsonl`, 16 short paragraphs written for
  this project (English prose, code, Q&A, and Chinese, since ChatGLM users are Chinese); no
  third-party text, no license question.
- a file: one prompt per line (`.txt`), or JSON lines with a `"text"` field (`.jsonl`). Empty
  lines are skipped.

Memory: `plan_w8a8` calibrates one decoder layer at a time (`stream_act_stats`, through the
family's `model_zoo/<arch>/torch_model.py: calib_stages`): the embeddings and every prompt's
hidden state (4 bytes × tokens × H) are held, each layer is built in fp32 from the checkpoint
(`CanonicalSource`), run over every prompt with the same hooks as the whole golden, and freed;
the plan is the whole golden's bit for bit. `collect_act_stats` runs a whole golden (a backend
passed in: 4 bytes / parameter, 27 GB for Llama-2-7B). The statistics are 4 bytes per input
channel per Linear (Llama-2-7B ≈ 3 MB). The W8A8 α search (`ascend_adapt.quant.smoothquant.
alpha_errors`) also needs the inputs themselves: kept on at most `max_kept_tokens` tokens (a
uniform stride over the set), 4 bytes × tokens × Σ in_features: 3.05 GB for all of Llama-2-7B's
layers at 1024 tokens, 95 MB for one layer (streamed). The sum is
`ascend_adapt.quant.smoothquant.calib_memory`, checked against the host before any weight is
loaded (`plan_w8a8`).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ascend_adapt.errors import ConfigError

BUILTIN_CALIB = Path(__file__).with_name("data") / "calib_builtin.jsonl"

# the Linears of a decoder layer, canonical suffixes (model_zoo/base.py); "mlp.gate" only in SwiGLU
LAYER_LINEARS = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down")


def load_calib_texts(calib="builtin") -> list[str]:
    """The calibration prompts.

    Args:
        calib: "builtin", or a path: `.jsonl` (one JSON object with "text" per line) or any other
            text file (one prompt per line).

    Raises:
        ConfigError: the file is missing, unreadable, malformed (naming the line) or empty.
    """
    path = BUILTIN_CALIB if str(calib) == "builtin" else Path(calib)
    if not path.is_file():
        raise ConfigError(f"--calib: calibration file '{path}' does not exist",
                          "pass 'builtin' or a text file with one prompt per line (or JSONL with \"text\")")
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--calib: cannot read '{path}' as UTF-8 text ({exc})",
                          "pass a UTF-8 text file with one prompt per line") from None
    texts: list[str] = []
    jsonl = path.suffix.lower() in (".jsonl", ".json")
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        if jsonl:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"--calib: {path}:{n} is not valid JSON ({exc.msg})",
                                  "write one JSON object per line, e.g. {\"text\": \"...\"}") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise ConfigError(f"--calib: {path}:{n} has no string field \"text\"",
                                  "write one JSON object per line, e.g. {\"text\": \"...\"}")
            texts.append(obj["text"])
        else:
            texts.append(line)
    if not texts:
        raise ConfigError(f"--calib: '{path}' holds no prompt", "put at least one non-empty line in it")
    return texts


def tokenize_calib(tokenizer, texts: Sequence[str], max_tokens: int = 4096,
                   max_seq_len: int = 256, suffix: Sequence[int] = ()) -> list[list[int]]:
    """Token ids of each prompt, each cut to `max_seq_len`, stopping once `max_tokens` are taken.

    `suffix`: the tokens every prompt of the model must end with (its position scheme's
    `prompt_suffix`, e.g. ChatGLM-6B's [gMASK] <sop>): a prompt that ends with them is cut in its
    body, and they stay at its end (cutting the tail would make a prompt the model refuses); a
    prompt with no room left for more than the suffix is not taken.
    """
    if max_tokens < 1 or max_seq_len < 1:
        raise ConfigError(f"calibration: max_tokens ({max_tokens}) and max_seq_len ({max_seq_len}) must be ≥ 1")
    suffix = list(suffix)
    out, total = [], 0
    for t in texts:
        ids = list(tokenizer.encode(t))
        limit = min(max_seq_len, max_tokens - total)
        if suffix and len(ids) > len(suffix) and ids[-len(suffix):] == suffix:
            ids = ids[:-len(suffix)][:max(0, limit - len(suffix))] + suffix if limit > len(suffix) else []
        else:
            ids = ids[:limit]
        if ids:
            out.append(ids)
            total += len(ids)
        if total >= max_tokens:
            break
    return out


def linear_names(spec) -> list[str]:
    """Canonical Linear prefixes of a spec ("layers.0.attn.q", …, "lm_head"), in model order."""
    shapes = spec.canonical_shapes()
    names = [f"layers.{i}.{s}" for i in range(spec.num_layers) for s in LAYER_LINEARS
             if f"layers.{i}.{s}.weight" in shapes]
    return names + ["lm_head"]


def hf_weight_names(spec) -> dict[str, str]:
    """Canonical Linear prefix → the HF checkpoint's weight name holding it (a fused tensor such as
    ChatGLM's `query_key_value.weight` is the name of each of its parts)."""
    from ascend_adapt.model_zoo.base import ADAPTERS

    adapter = ADAPTERS.get(spec.arch)
    out = {}
    wanted = {f"{n}.weight": n for n in linear_names(spec)}
    for e in adapter.entries(spec, "hf"):
        for c in e.canonical:
            if c in wanted:
                out[wanted[c]] = e.source
    if "lm_head" not in out:  # tied and not stored: the head is the embedding matrix
        src = [e.source for e in adapter.entries(spec, "hf") if spec.tied_source in e.canonical]
        out["lm_head"] = src[0] if src else "lm_head.weight"
    return out


def torch_linear_modules(backend) -> dict[str, object]:
    """Canonical Linear prefix → the `nn.Linear` of a torch golden backend computing it.

    Our own family modules (ChatGLM-6B, ChatGLM2/3) name parameters through `_param_name`; the
    transformers-based goldens (Llama, Qwen) use the HF names of the adapter's table.
    """
    from torch import nn

    model, spec = backend.model, backend.spec
    hf = hf_weight_names(spec)
    out = {}
    for name in linear_names(spec):
        if name == "lm_head":
            pname = "lm_head.weight"
        elif hasattr(model, "_param_name"):
            pname = model._param_name(f"{name}.weight")
        else:
            pname = hf[name]
        mod = model.get_submodule(pname[: -len(".weight")])
        if not isinstance(mod, nn.Linear):
            raise ConfigError(f"calibration: '{pname}' of the {spec.arch} golden is not an nn.Linear")
        out[name] = mod
    return out


@dataclass
class ActStats:
    """Per-input-channel max |x| of every Linear over a calibration run.

    Attributes:
        amax: canonical Linear prefix → float32 [in_features].
        tokens: calibration tokens seen.
        prompts: calibration prompts run.
        inputs: canonical prefix → float32 [kept_tokens, in_features]: the inputs of the Linears
            asked for in `keep_inputs` on every `stride`-th calibration token (None otherwise).
        kept_tokens: rows of each `inputs` array.
        input_prompts: int [kept_tokens]: the calibration prompt (0, 1, …) of each kept row.
    """

    amax: dict[str, np.ndarray]
    tokens: int
    prompts: int
    inputs: dict[str, np.ndarray] | None = None
    kept_tokens: int = 0
    input_prompts: np.ndarray | None = None


class _Recorder:
    """The forward pre-hooks of a calibration run: per-input-channel amax of each hooked Linear,
    and the inputs of the `keep` Linears on every `stride`-th calibration token (global index)."""

    def __init__(self, token_lists, keep_inputs, max_kept_tokens, mods, arch):
        self.token_lists = token_lists
        self.keep = set(keep_inputs)
        unknown = sorted(self.keep - set(mods))
        if unknown:
            raise ConfigError(f"calibration: '{unknown[0]}' is not a Linear of this {arch} model",
                              "name Linears by canonical prefix, e.g. layers.0.attn.q")
        if self.keep and max_kept_tokens < 1:
            raise ConfigError(f"calibration: max_kept_tokens = {max_kept_tokens} must be ≥ 1")
        total = sum(len(ids) for ids in token_lists)
        self.stride = max(1, -(-total // max_kept_tokens)) if self.keep else 1
        self.n_kept = -(-total // self.stride) if self.keep else 0  # global t with t % stride == 0
        self.amax: dict = {}
        self.kept: dict[str, np.ndarray] = {}  # filled in place: no second copy when done
        self.rows = None  # rows of the current prompt to keep
        self.at = 0  # where they go
        self.row_prompt = np.empty(self.n_kept, np.int64)
        self.tokens = self.prompts = 0

    def hook(self, name):
        import torch

        def pre(_mod, args):
            x = args[0].detach()
            x2 = x.reshape(-1, x.shape[-1])
            m = x2.abs().amax(dim=0).float()
            prev = self.amax.get(name)
            self.amax[name] = m if prev is None else torch.maximum(prev, m)
            if name in self.keep and self.rows is not None and len(self.rows):
                if name not in self.kept:
                    self.kept[name] = np.empty((self.n_kept, x2.shape[-1]), np.float32)
                self.kept[name][self.at:self.at + len(self.rows)] = x2[self.rows].float().numpy()
        return pre

    @contextmanager
    def hooks(self, mods):
        handles = [m.register_forward_pre_hook(self.hook(n)) for n, m in mods.items()]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def run(self, step):
        """`step(prompt index, ids)` runs one prompt (batch 1) through the hooked modules."""
        import torch

        self.tokens = self.prompts = self.at = 0
        with torch.no_grad():
            for ids in self.token_lists:
                # global token index t is kept when t % stride == 0
                self.rows = torch.arange((-self.tokens) % self.stride, len(ids), self.stride) if self.keep else None
                step(self.prompts, ids)
                if self.keep:
                    self.row_prompt[self.at:self.at + len(self.rows)] = self.prompts
                    self.at += len(self.rows)
                self.tokens += len(ids)
                self.prompts += 1
        if not self.prompts:
            raise ConfigError("calibration: no calibration tokens", "pass a calibration set with at least one prompt")

    def check_kept(self):
        missing = sorted(self.keep - set(self.kept))
        if missing:
            raise ConfigError(f"calibration: the golden never ran '{missing[0]}'",
                              "a Linear that the forward pass does not reach cannot be calibrated")


class CanonicalSource:
    """Random access to a checkpoint's canonical tensors, one source tensor read at a time (the
    layer-streamed calibration reads each decoder layer's tensors when it builds that layer).

    Every source tensor's shape is checked against the spec first, as `Adapter.iter_canonical`
    does. A fused source tensor (ChatGLM's query_key_value) is split once and its parts handed
    out in turn.

    Attributes:
        spec: the `ModelSpec`; adapter: the family adapter; path: the checkpoint.
    """

    def __init__(self, path):
        from ascend_adapt.port.artifact import open_weights

        w = open_weights(path)  # the checkpoint, its adapter and spec, as port and export open them
        self.path, self.reader, self.adapter, self.spec = w.path, w.reader, w.adapter, w.spec
        present = w.preflight()  # every tensor's presence and shape, before any is read
        self._entry = {c: e for e in w.entries() for c in e.canonical if c in present}
        self._split: dict[str, np.ndarray] = {}  # parts of the last fused tensor not yet handed out

    def __contains__(self, name: str) -> bool:
        return name in self._entry

    def get(self, name: str) -> np.ndarray:
        """The canonical tensor `name` (its source tensor read now)."""
        if name in self._split:
            return self._split.pop(name)
        e = self._entry.get(name)
        if e is None:
            from ascend_adapt.errors import CheckpointError

            raise CheckpointError(f"{self.path}: the checkpoint has no tensor for canonical '{name}'")
        arrays = self.adapter.split(e, self.reader.get(e.source), self.spec)
        self._split = {c: a for c, a in zip(e.canonical, arrays) if c != name}
        return dict(zip(e.canonical, arrays))[name]


@dataclass
class StreamedLayer:
    """What the layer-streamed calibration hands its consumer after each stage (`stream_act_stats`).

    Attributes:
        index: decoder layer index, or None for the head.
        linears: canonical prefix → the stage's `nn.Linear` (weights live until the callback returns).
        amax: canonical prefix → float32 [in] of this stage's Linears.
        inputs: canonical prefix → float32 [kept_tokens, in] for the kept Linears of this stage.
        input_prompts: int [kept_tokens]: the calibration prompt of each kept row (None: none kept).
    """

    index: int | None
    linears: dict
    amax: dict[str, np.ndarray]
    inputs: dict[str, np.ndarray]
    input_prompts: np.ndarray | None = None


@lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's `malloc_trim`, or None (another C library; looked up once: `find_library` runs
    `ldconfig`)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None)


def return_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc `malloc_trim(0)`; nothing elsewhere): after
    each streamed layer, and before each input group's α search (`search_alphas`).

    A layer's tensors below glibc's 32 MB mmap ceiling (Llama-1B's 2048×2048 q/k/v/o in fp32:
    16.8 MB) come from the heap once the dynamic mmap threshold has risen past them; freed, they
    stay resident under the small tensors allocated after them. Measured on a random
    0.95 B-parameter Llama (16 layers): resident anonymous memory grew 65 MB per layer without
    this (2.2 GB peak), flat with it. The freed outputs and activations of a layer's run and of
    one group's search (a few MB each) likewise stayed resident under the next group's weight-sized
    tensors: trimmed before each group, the streamed peak on that model fell by 0.1 GB."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def stream_act_stats(stages, spec, token_lists: Iterable[Sequence[int]], keep_inputs: Iterable[str] = (),
                     max_kept_tokens: int = 1024, head: bool = True, on_stage=None) -> ActStats:
    """`collect_act_stats` one decoder layer at a time: the same hooks over the same modules.

    `stages` is the family's layer stepper (`model_zoo/<arch>/torch_model.py: calib_stages(spec,
    source)`): `embed(ids)` → (hidden [1, S, H], per-prompt context), `layer(i)` → a module with
    layer i's fp32 weights, `linears(i, module)`, `run_layer(i, module, x, ctx)`, `final_norm(x)`
    (the head's input) and `head()` (the head's nn.Linear). The hidden state of every prompt is
    held (4 bytes × tokens × H); each layer is built, run over every prompt with the hooks,
    handed to `on_stage(StreamedLayer)` (the α search of its groups runs there), and freed.
    `head=True` builds the head too (a quantized head: its weights and kept inputs are needed);
    else only the final norm runs and the head's amax is taken on its input.

    Returns:
        `ActStats` with the amax of every Linear; `inputs` None (each stage's went to `on_stage`).
    """
    import torch

    token_lists = [list(ids) for ids in token_lists]
    keep = set(keep_inputs)
    names = linear_names(spec)
    unknown = sorted(keep - set(names))
    if unknown:
        raise ConfigError(f"calibration: '{unknown[0]}' is not a Linear of this {spec.arch} model",
                          "name Linears by canonical prefix, e.g. layers.0.attn.q")
    amax: dict[str, np.ndarray] = {}
    hidden, ctxs = [], []
    with torch.no_grad():
        for ids in token_lists:
            x, ctx = stages.embed(np.asarray([ids], np.int64))
            hidden.append(x)
            ctxs.append(ctx)
    kept_rows = {"n_kept": 0, "row_prompt": None}

    def stage(index, mods, step):
        # the stride is a function of the whole set's token count: every stage keeps the same tokens
        rec = _Recorder(token_lists, keep & set(mods), max_kept_tokens, mods, spec.arch)
        with rec.hooks(mods):
            rec.run(step)
        rec.check_kept()
        got = {n: rec.amax[n].numpy().astype(np.float32) for n in mods}
        amax.update(got)
        if rec.keep:
            kept_rows.update(n_kept=rec.n_kept, row_prompt=rec.row_prompt)
        if on_stage is not None:
            on_stage(StreamedLayer(index, mods, got, rec.kept, rec.row_prompt if rec.keep else None))

    for i in range(spec.num_layers):
        layer = stages.layer(i)
        mods = stages.linears(i, layer)

        def step(p, _ids, i=i, layer=layer):
            hidden[p] = stages.run_layer(i, layer, hidden[p], ctxs[p])
        stage(i, mods, step)
        del layer, mods
        del step
        return_freed_memory()
    with torch.no_grad():
        finals = [stages.final_norm(x) for x in hidden]
    hidden = None  # frees the hidden states (the closures above share this cell)
    # the head's input is the final norm's output: hooked on the head itself when it is built
    # (quantized: its weights and kept inputs are needed), else on an identity standing in for it
    lm = stages.head() if head else torch.nn.Identity()
    stage(None, {"lm_head": lm}, lambda p, _ids: lm(finals[p]))
    lm = finals = None
    missing = [n for n in names if n not in amax]
    if missing:
        raise ConfigError(f"calibration: the layer stepper of {spec.arch} never ran '{missing[0]}'",
                          "its linears(i, layer) must name every Linear of the layer")
    return ActStats({n: amax[n] for n in names}, sum(map(len, token_lists)), len(token_lists), None,
                    kept_rows["n_kept"], kept_rows["row_prompt"])


def collect_act_stats(backend, token_lists: Iterable[Sequence[int]], keep_inputs: Iterable[str] = (),
                      max_kept_tokens: int = 1024) -> ActStats:
    """Run the fp32 golden over each prompt (batch 1) and record every Linear's input amax.

    Args:
        backend: a `TorchBackend` (fp32 golden).
        token_lists: token ids per prompt.
        keep_inputs: canonical Linear prefixes whose inputs are also kept (the W8A8 α search),
            on a uniform stride over all calibration tokens so that at most `max_kept_tokens`
            are kept: 4 bytes × kept tokens × Σ in_features of those Linears.

    Returns:
        `ActStats` over all the prompts.
    """

    mods = torch_linear_modules(backend)
    token_lists = [list(ids) for ids in token_lists]
    rec = _Recorder(token_lists, keep_inputs, max_kept_tokens, mods, backend.spec.arch)
    with rec.hooks(mods):
        rec.run(lambda _p, ids: backend.full_logits(np.asarray([ids], np.int64)))
    rec.check_kept()
    amax = rec.amax
    return ActStats({n: amax[n].numpy().astype(np.float32) for n in mods}, rec.tokens, rec.prompts,
                    rec.kept if rec.keep else None, rec.n_kept, rec.row_prompt if rec.keep else None)
