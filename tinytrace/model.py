"""The decoder-only Transformer of the paper (Sec. 3.1, App. C.3) and its ablations (Sec. 4.4, G.2).

nanoGPT-style GPT: 12 layers, 16 heads, n_embd 368, context 512, pre-norm RMSNorm before the
attention and the FFN, FFN 4x with SiLU, learned absolute positions, the 77-token vocabulary,
tied input/output embeddings: 19,727,008 parameters (the paper's "~20M").

Positional encodings (``ModelConfig.pe``):

* ``ape``: learned absolute position embeddings added to the token embeddings (the paper's base);
* ``rpe``: Shaw et al. (2018) relative position representations: a learned vector per clipped
  distance ``min(i - j, rpe_clip)`` added to the keys (``q.(k_j + a_ij)``) and, optionally,
  to the values, one table per layer shared by the heads. Shaw et al. add them to both; the
  paper does not say which it used, and keys only is the default here (the values' term
  rules out the fused attention kernel);
* ``rpb``: T5 (Raffel et al., 2020) relative position bias: a per-head scalar per log-spaced
  distance bucket added to the attention logits, one table shared by all layers.

:func:`match_params` picks the embedding width of an RPE/RPB model so that it has the APE
model's parameter count, "adjusting only the embedding dimension" (Sec. 4.4).

Attention runs through ``F.scaled_dot_product_attention``. A head size that fused kernels refuse
(368 / 16 = 23) is zero-padded to a multiple of ``head_pad_multiple`` (23 -> 24): zero dims add
nothing to ``q.k``, the softmax scale stays ``1/sqrt(23)`` and the padded output dims are
dropped, so the function is unchanged (tested). :class:`KVCache` serves greedy decoding
(:mod:`tinytrace.evaluate`): each row's window sits at columns ``0..len-1`` of its buffer
(right padding), so a token's column is its position in the window.

Checkpoints are ``model.safetensors`` (no pickle) + ``config.json`` with the model config and the
vocabulary; :func:`load_checkpoint` refuses another vocabulary or mismatched weights by name.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.nn.attention import SDPBackend

from tinytrace.lang import tokenizer
from tinytrace.presets import ConfigDict, Presets

PE_KINDS = ("ape", "rpe", "rpb")


@dataclass
class ModelConfig(ConfigDict):
    vocab_size: int = 77
    block_size: int = 512  # context window
    n_layer: int = 12
    n_head: int = 16
    n_embd: int = 368
    pe: str = "ape"  # "ape" | "rpe" | "rpb"
    dropout: float = 0.0
    bias: bool = False  # biases in Linear layers (nanoGPT option; off, as with RMSNorm)
    rpe_clip: int = 128  # rpe: distances >= this share one embedding (Shaw et al.'s k)
    rpe_values: bool = False  # rpe: also add the embeddings to the values (slower: no SDPA)
    rpb_buckets: int = 32  # rpb: T5's defaults
    rpb_max_distance: int = 128
    head_pad_multiple: int = 8  # pad the head size to a multiple of this inside attention; 0 = off

    def __post_init__(self):
        if self.pe not in PE_KINDS:
            raise ValueError(f"pe must be one of {PE_KINDS}, got {self.pe!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        if self.block_size < 2 or self.n_layer < 1 or self.vocab_size < 1:
            raise ValueError("block_size >= 2, n_layer >= 1 and vocab_size >= 1 are required")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_head_size(self) -> int:
        m = self.head_pad_multiple
        return self.head_size if m <= 1 else -(-self.head_size // m) * m


MODEL_PRESETS: Presets[ModelConfig] = Presets("model preset", {
    "paper": ModelConfig(n_layer=12, n_head=16, n_embd=368),  # 19.73M, Sec. 3.1
    "medium": ModelConfig(n_layer=8, n_head=8, n_embd=176),  # 3.07M (head size 22 -> 24)
    "small": ModelConfig(n_layer=4, n_head=8, n_embd=128),  # 0.86M
    "tiny": ModelConfig(n_layer=2, n_head=4, n_embd=64),  # 0.14M, for CPU tests
})


def get_model_config(name: str, **overrides) -> ModelConfig:
    return MODEL_PRESETS.get(name, **overrides)


def count_params(config: ModelConfig) -> int:
    """Closed-form :meth:`GPT.num_params` (tested equal), for :func:`match_params`."""
    c, d = config, config.n_embd
    per_layer = 12 * d * d + 2 * d  # qkv 3d^2, proj d^2, FFN 8d^2, two RMSNorm gains
    if c.bias:
        per_layer += 9 * d
    if c.pe == "rpe":
        per_layer += (c.rpe_clip + 1) * c.head_size * (2 if c.rpe_values else 1)
    n = c.n_layer * per_layer + d + c.vocab_size * d  # final norm, tied embeddings
    if c.pe == "ape":
        n += c.block_size * d
    elif c.pe == "rpb":
        n += c.rpb_buckets * c.n_head
    return n


def match_params(config: ModelConfig, target_params: int | None = None) -> ModelConfig:
    """The config with the n_embd (a multiple of n_head) whose parameter count is closest to
    ``target_params`` (default: the same config with ``pe="ape"``); nothing else changes."""
    if target_params is None:
        target_params = count_params(dataclasses.replace(config, pe="ape"))
    h = config.n_head
    candidates = [dataclasses.replace(config, n_embd=h * m) for m in range(1, 4 * config.n_embd // h + 2)]
    return min(candidates, key=lambda c: (abs(count_params(c) - target_params), c.n_embd))


# --- relative positions ------------------------------------------------------------------------
def t5_bucket(distance: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's causal bucket of ``distance = i - j >= 0``: exact below num_buckets/2, then
    log-spaced up to max_distance, the last bucket beyond."""
    exact = num_buckets // 2
    d = distance.clamp(min=0)
    large = exact + (
        torch.log(d.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (num_buckets - exact)
    ).long()
    return torch.where(d < exact, d, large.clamp(max=num_buckets - 1))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


class KVCache:
    """Keys/values of every layer for ``batch`` rows: ``k[layer]`` is (B, nh, block_size, hs_pad).

    Row b holds ``lens[b]`` tokens at columns 0..lens[b]-1; a forward of T tokens writes them at
    columns lens[b]..lens[b]+T-1 and advances ``lens``. ``rows`` restricts a forward to some rows.
    A host copy of ``lens`` gives the attended width without a device sync. Each layer's keys
    and values are a tensor of their own, not views of one: ``torch.compile`` then writes them
    in place, where a write into a view made it copy the whole cache every step."""

    def __init__(self, config: ModelConfig, batch: int, device=None, dtype=torch.float32):
        shape = (batch, config.n_head, config.block_size, config.padded_head_size)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.lens = torch.zeros(batch, dtype=torch.long, device=device)
        self.lens_host = [0] * batch
        self.block_size = config.block_size

    @property
    def batch(self) -> int:
        return self.k[0].size(0)

    def keep(self, rows: list[int]) -> None:
        """Drop every row not in ``rows`` (finished rows stop costing compute)."""
        idx = torch.tensor(rows, dtype=torch.long, device=self.lens.device)
        self.k = [t.index_select(0, idx) for t in self.k]
        self.v = [t.index_select(0, idx) for t in self.v]
        self.lens = self.lens.index_select(0, idx)
        self.lens_host = [self.lens_host[r] for r in rows]

    def set_lens(self, rows: list[int], lens: list[int]) -> None:
        for r, n in zip(rows, lens):
            self.lens_host[r] = n
        self.lens[torch.tensor(rows, device=self.lens.device)] = torch.tensor(lens, device=self.lens.device)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head, self.hs, self.hs_pad = config.n_head, config.head_size, config.padded_head_size
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout, self.resid_dropout = config.dropout, nn.Dropout(config.dropout)
        self.pe = config.pe
        self.rpe_values = config.pe == "rpe" and config.rpe_values
        if config.pe == "rpe":  # causal: only distances 0..clip occur
            self.rpe_k = nn.Parameter(torch.zeros(config.rpe_clip + 1, self.hs))
            if self.rpe_values:
                self.rpe_v = nn.Parameter(torch.zeros(config.rpe_clip + 1, self.hs))

    def forward(self, x, ctx: dict):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        scale = 1.0 / math.sqrt(self.hs)
        mask = ctx["mask"]  # None (plain causal), bool (B|1, 1, T, S) or float bias (B|1, nh|1, T, S)
        if self.pe == "rpe":
            rel = ctx["rel"]  # (B|1, T, S) clipped distance i - j
            qa = q @ self.rpe_k.to(q.dtype).t()  # (B, nh, T, clip+1): q_i . a_d for every distance d
            bias = qa.gather(-1, rel.unsqueeze(1).expand(B, self.n_head, -1, -1)) * scale
            mask = bias.masked_fill(~ctx["allowed"].unsqueeze(1), float("-inf"))
        if self.hs_pad != self.hs:  # zero dims: same q.k, kernel-friendly head size
            pad = (0, self.hs_pad - self.hs)
            q, k, v = F.pad(q, pad), F.pad(k, pad), F.pad(v, pad)
        cache = ctx["cache"]
        if cache is not None:
            layer, rows, cols = ctx["layer"], ctx["rows"], ctx["pos"]  # cols (B, T)
            kb, vb = cache.k[layer], cache.v[layer]
            kb[rows[:, None], :, cols] = k.transpose(1, 2).to(kb.dtype)
            vb[rows[:, None], :, cols] = v.transpose(1, 2).to(vb.dtype)
            S = ctx["width"]
            if ctx["all_rows"]:
                k, v = kb[:, :, :S], vb[:, :, :S]
            else:
                k, v = kb[rows, :, :S], vb[rows, :, :S]
            k, v = k.to(q.dtype), v.to(q.dtype)
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(q.dtype)  # bf16 autocast: the bias follows q
        dropout = self.attn_dropout if self.training else 0.0
        if self.rpe_values:  # explicit attention: the value term needs the weights
            att = (q @ k.transpose(-2, -1)) * scale
            att = att + mask if mask.dtype != torch.bool else att.masked_fill(~mask, float("-inf"))
            att = F.dropout(F.softmax(att, dim=-1), dropout, self.training)
            y = att @ v
            w = torch.zeros(*att.shape[:-1], self.rpe_v.size(0), dtype=att.dtype, device=att.device)
            w.scatter_add_(-1, ctx["rel"].unsqueeze(1).expand_as(att), att)  # weight per distance
            y = y + F.pad(w @ self.rpe_v.to(att.dtype), (0, self.hs_pad - self.hs))
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=mask is None, scale=scale
            )
        y = y[..., : self.hs].transpose(1, 2).contiguous().view(B, T, C)  # drop padded dims
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.silu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1, self.attn = RMSNorm(config.n_embd), CausalSelfAttention(config)
        self.ln_2, self.mlp = RMSNorm(config.n_embd), MLP(config)

    def forward(self, x, ctx: dict):
        x = x + self.attn(self.ln_1(x), ctx)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=RMSNorm(config.n_embd),
        ))
        if config.pe == "ape":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        elif config.pe == "rpb":
            self.rpb = nn.Embedding(config.rpb_buckets, config.n_head)  # shared by all layers, as T5
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied, as GPT-2/nanoGPT
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: residual projections scaled by depth
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
            elif ".rpe_" in name:
                nn.init.normal_(p, mean=0.0, std=0.02)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Trainable parameters, the tied embedding counted once; ``non_embedding`` leaves out
        the token and absolute position tables (Kaplan et al.'s N)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wte.weight.numel()
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, T: int | None = None) -> float:
        """Training FLOPs per token: ``6 * (N_nonembedding + V*d) + 12 * n_layer * n_embd * T``.

        6N for the forward+backward matmuls (the tied output head is a real V*d matmul, the
        embedding lookups are free), 12*L*d*T for q.k and att.v over a T-token window (PaLM /
        nanoGPT's MFU). Paper model, T = 512: 6 * 19,538,592 + 27,131,904 = 144.36e6 (counting
        all 19,727,008 parameters instead gives 145.49e6)."""
        c = self.config
        T = c.block_size if T is None else T
        n = self.num_params(non_embedding=True) + c.vocab_size * c.n_embd
        return 6.0 * n + 12.0 * c.n_layer * c.n_embd * T

    def _attention_context(self, pos: torch.Tensor, width: int, plain: bool) -> dict:
        """Mask/bias for queries at window positions ``pos`` (B|1, T) over key columns 0..width-1."""
        c = self.config
        ctx = {"mask": None}
        if plain and c.pe == "ape":
            return ctx  # is_causal=True: the fused kernels' fast path
        kpos = torch.arange(width, device=pos.device)
        dist = pos[:, :, None] - kpos[None, None, :]  # (B|1, T, S) = i - j
        allowed = dist >= 0
        ctx["allowed"] = allowed
        if c.pe == "ape":
            ctx["mask"] = allowed.unsqueeze(1)
        elif c.pe == "rpe":
            ctx["rel"] = dist.clamp(0, c.rpe_clip)
        else:
            bias = self.rpb(t5_bucket(dist, c.rpb_buckets, c.rpb_max_distance)).permute(0, 3, 1, 2)
            ctx["mask"] = bias.masked_fill(~allowed.unsqueeze(1), float("-inf"))  # (B|1, nh, T, S)
        return ctx

    def forward(self, idx, targets=None, *, kv_cache: KVCache | None = None, rows: list[int] | None = None,
                static: bool = False, width: int | None = None):
        """idx (B, T) -> logits (B, T, V), mean cross-entropy over targets != -100 (or None).

        With ``kv_cache``: the T tokens of each row (or of ``rows`` of the cache) continue its
        cached window; their positions are the row's columns, so rows of different lengths batch
        exactly (right padding: a padded token's keys are overwritten before any query sees them).
        ``static``: every row, attention over all ``block_size`` columns (masked past each row's
        length), no host reads and no length bookkeeping (the caller advances ``lens`` per row):
        fixed shapes, so the step can be captured in a CUDA graph. ``width`` (static only): attend
        over the first ``width`` columns instead, for a caller that knows every advancing row's
        window is shorter (the others' outputs are then meaningless)."""
        B, T = idx.size()
        device = idx.device
        if kv_cache is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
            pos = torch.arange(T, device=device)[None]  # (1, T)
            ctx = self._attention_context(pos, T, plain=True)
            ctx["cache"] = None
        else:
            all_rows = rows is None
            rows_list = list(range(kv_cache.batch)) if all_rows else list(rows)
            if len(rows_list) != B or (static and not all_rows):
                raise ValueError(f"{B} rows of input for {len(rows_list)} cache rows"
                                 + (" (static: all rows)" if static else ""))
            if width is not None and not static:
                raise ValueError("width is for static forwards only")
            if static:
                width = self.config.block_size if width is None else width
            else:
                width = max(kv_cache.lens_host[r] for r in rows_list) + T
            if width > self.config.block_size:
                raise ValueError(f"cached window would reach {width} > block_size {self.config.block_size}")
            rows_t = torch.arange(B, device=device) if all_rows else torch.tensor(rows_list, device=device)
            pos = kv_cache.lens[rows_t][:, None] + torch.arange(T, device=device)  # (B, T)
            ctx = self._attention_context(pos, width, plain=False)
            ctx.update(cache=kv_cache, rows=rows_t, pos=pos, width=width, all_rows=all_rows)
        x = self.transformer.wte(idx)  # (B, T, C)
        if self.config.pe == "ape":
            x = x + self.transformer.wpe(pos)
        x = self.transformer.drop(x)
        for layer, block in enumerate(self.transformer.h):
            ctx["layer"] = layer
            x = block(x, ctx)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
        if kv_cache is not None:
            if not static:  # static: the caller advances lens (rows may be frozen)
                kv_cache.lens[rows_t] += T
                for r in rows_list:
                    kv_cache.lens_host[r] += T
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    def new_kv_cache(self, batch: int, device=None, dtype=None) -> KVCache:
        p = self.lm_head.weight
        return KVCache(self.config, batch, device=device or p.device, dtype=dtype or p.dtype)


def sdpa_backend(config: ModelConfig, device="cpu", dtype=torch.float32, batch: int = 1, T: int | None = None,
                 cached: bool = False) -> str:
    """Name of the SDPA kernel PyTorch would pick for this model's attention: "flash", "efficient",
    "cudnn", "math" (on CPU "flash" is the CPU flash kernel); "explicit" for rpe with values."""
    if config.pe == "rpe" and config.rpe_values:
        return "explicit"
    T = config.block_size if T is None else T
    S = T
    q = torch.zeros(batch, config.n_head, 1 if cached else T, config.padded_head_size, device=device, dtype=dtype)
    k = torch.zeros(batch, config.n_head, S, config.padded_head_size, device=device, dtype=dtype)
    mask, causal = None, True
    if cached or config.pe != "ape":
        causal = False
        shape = (batch, 1 if config.pe == "ape" else config.n_head, q.size(2), S)
        mask = (torch.ones(shape, dtype=torch.bool, device=device) if config.pe == "ape"
                else torch.zeros(shape, dtype=dtype, device=device))
    choice = torch._fused_sdp_choice(q, k, k, mask, 0.0, causal, scale=1.0 / math.sqrt(config.head_size))
    names = {SDPBackend.FLASH_ATTENTION: "flash", SDPBackend.EFFICIENT_ATTENTION: "efficient",
             SDPBackend.CUDNN_ATTENTION: "cudnn", SDPBackend.MATH: "math"}
    return names.get(SDPBackend(int(choice)), f"other({int(choice)})")


# --- checkpoints -------------------------------------------------------------------------------
def unwrap(model: nn.Module) -> nn.Module:
    """The plain GPT under DDP (``.module``) / torch.compile (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model


def _weights(model: GPT) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    sd.pop("lm_head.weight")  # tied to transformer.wte.weight
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def save_checkpoint(model: nn.Module, directory, extra: dict | None = None) -> None:
    """``directory/model.safetensors`` (unwrapped weights) + ``directory/config.json``
    = ``{"model": config, "vocab": tokenizer.VOCAB, **extra}``."""
    model = unwrap(model)
    extra = dict(extra or {})
    clash = {"model", "vocab"} & set(extra)
    if clash:
        raise ValueError(f"extra must not set {sorted(clash)}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    # written beside, then moved into place: a full disk or a kill mid-write never leaves a
    # truncated model.safetensors (an earlier checkpoint there stays whole)
    weights, config = d / "model.safetensors", d / "config.json"
    save_file(_weights(model), f"{weights}.tmp", metadata={"format": "pt"})
    meta = {"model": model.config.to_dict(), "vocab": list(tokenizer.VOCAB), **extra}
    Path(f"{config}.tmp").write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(f"{weights}.tmp", weights)
    os.replace(f"{config}.tmp", config)


def load_checkpoint(directory, map_location="cpu") -> GPT:
    """Rebuild the GPT saved by :func:`save_checkpoint`; ValueError naming the field when the
    vocabulary, the config or the weights do not match."""
    d = Path(directory)
    cfg_path, w_path = d / "config.json", d / "model.safetensors"
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"checkpoint file {p} not found")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
    if "model" not in meta or "vocab" not in meta:
        raise ValueError(f"{cfg_path}: needs the fields 'model' and 'vocab'")
    vocab = meta["vocab"]
    if vocab != list(tokenizer.VOCAB):
        diff = next((i for i, (a, b) in enumerate(zip(vocab, tokenizer.VOCAB)) if a != b), min(len(vocab), 77))
        raise ValueError(
            f"{cfg_path}: field 'vocab' differs from tinytrace.tokenizer.VOCAB "
            f"({len(vocab)} vs {len(tokenizer.VOCAB)} tokens, first difference at id {diff})"
        )
    config = ModelConfig.from_dict(meta["model"])
    if config.vocab_size != len(tokenizer.VOCAB):
        raise ValueError(f"{cfg_path}: field 'model.vocab_size' is {config.vocab_size}, the vocabulary has 77")
    model = GPT(config)
    expected = _weights(model)
    try:
        got = load_file(str(w_path), device="cpu")
    except Exception as e:  # safetensors raises its own error type for a bad header or size
        raise ValueError(f"{w_path}: not a readable safetensors file, truncated or corrupt? "
                         f"({type(e).__name__}: {e})") from None
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{w_path}: weights do not match field 'model' of config.json "
            f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})"
        )
    for name, t in expected.items():
        if got[name].shape != t.shape:
            raise ValueError(
                f"{w_path}: tensor {name} has shape {tuple(got[name].shape)}, config.json's field "
                f"'model' implies {tuple(t.shape)}"
            )
    model.load_state_dict(got, strict=False)  # lm_head.weight is tied to transformer.wte.weight
    return model.to(map_location)
