"""DeciLM ("nemotron-nas") configuration for heterogeneous Llama-family checkpoints.

Remote code (``trust_remote_code=True``) shipped by twossp-engine next to 2SSP-pruned models, written for
transformers 5.x (checked with 5.24). It is the Llama config plus ``block_configs``: one entry per decoder block,

    {"attention": {"no_op": bool, "n_heads_in_group": int | None, "window_length": int | None, ...},
     "ffn":       {"no_op": bool, "ffn_mult": float (optional), "intermediate_size": int, ...}}

and ``qkv_bias`` (Qwen2-style bias on q/k/v only). A block's FFN width is ``ffn_mult`` turned into a width by the
formula vLLM, TRT-LLM, SGLang and llama.cpp use when that key is present, else ``ffn.intermediate_size``.

vLLM reads this file (not the modeling file) and tests ``hasattr(block.ffn, "ffn_mult")``, so each block and its
sub-entries are ``_AttrDict``s: dicts with attribute access whose missing keys raise ``AttributeError``. They stay
plain dicts for JSON (``to_dict`` / ``save_pretrained`` write plain dicts). The global ``intermediate_size`` and
``num_key_value_heads`` stay valid ints (derived from the blocks when absent or null), as v5 strict validation and
tools reading the globals expect.
"""

from transformers import LlamaConfig


def _find_multiple(n: int, k: int) -> int:
    """Smallest multiple of ``k`` that is >= ``n``."""
    return n if n % k == 0 else n + k - n % k


def ffn_mult_to_intermediate_size(ffn_mult: float, hidden_size: int) -> int:
    """DeciLM's width formula: ``int(2 * ffn_mult * hidden / 3)`` rounded up to a multiple of 256."""
    return _find_multiple(int(2 * ffn_mult * hidden_size / 3), 256)


def ffn_width(ffn: dict, hidden_size: int) -> int:
    """FFN width of one block's ``ffn`` entry: the ``ffn_mult`` formula wins when the key is present."""
    if "ffn_mult" in ffn:
        return ffn_mult_to_intermediate_size(ffn["ffn_mult"], hidden_size)
    return int(ffn["intermediate_size"])


class _AttrDict(dict):
    """A dict whose keys are also attributes; a missing key raises AttributeError, so ``hasattr`` works."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key, value):
        self[key] = value

    def __delattr__(self, key):
        try:
            del self[key]
        except KeyError:
            raise AttributeError(key) from None


def _to_attr_dict(value):
    """Wraps nested dicts (recursively) as ``_AttrDict``."""
    if isinstance(value, dict):
        return _AttrDict({k: _to_attr_dict(v) for k, v in value.items()})
    return value


def _to_plain(value):
    """Turns ``_AttrDict``s (and tuples) back into plain JSON containers."""
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


class DeciLMConfig(LlamaConfig):
    model_type = "nemotron-nas"

    def __init__(self, block_configs=None, **kwargs):
        qkv_bias = bool(kwargs.pop("qkv_bias", False))
        # NVIDIA's converters write these globals as null (or drop them); v5 strict typing wants ints.
        derive_width = kwargs.get("intermediate_size") is None
        derive_kv = kwargs.get("num_key_value_heads") is None
        for key in ("intermediate_size", "num_key_value_heads"):
            if kwargs.get(key) is None:
                kwargs.pop(key, None)
        super().__init__(**kwargs)
        self.qkv_bias = qkv_bias

        if block_configs is None:
            # A plain Llama described as DeciLM: every block keeps attention and the global FFN width.
            group = self.num_attention_heads // self.num_key_value_heads
            block_configs = [
                {
                    "attention": {"no_op": False, "replace_with_linear": False, "n_heads_in_group": group},
                    "ffn": {"no_op": False, "replace_with_linear": False, "intermediate_size": self.intermediate_size},
                }
                for _ in range(self.num_hidden_layers)
            ]
        blocks = []
        for block in block_configs:
            block = _to_attr_dict(dict(block))
            for part in ("attention", "ffn"):
                block[part] = _to_attr_dict(dict(block.get(part) or {}))
                block[part].setdefault("no_op", False)
                block[part].setdefault("replace_with_linear", False)
            blocks.append(block)
        self.block_configs = blocks
        self._check_blocks()

        attention = [b.attention for b in blocks if not b.attention.no_op]
        if derive_kv and attention and attention[0].get("n_heads_in_group"):
            self.num_key_value_heads = self.num_attention_heads // attention[0].n_heads_in_group
        widths = [ffn_width(b.ffn, self.hidden_size) for b in blocks if not b.ffn.no_op]
        if derive_width and widths:
            self.intermediate_size = max(widths)

    def _check_blocks(self):
        """Rejects block lists that the shapes cannot follow (not a `validate_*` method: strict would not run it)."""
        if len(self.block_configs) != self.num_hidden_layers:
            raise ValueError(
                f"block_configs has {len(self.block_configs)} entries but num_hidden_layers is {self.num_hidden_layers}"
            )
        for i, block in enumerate(self.block_configs):
            attention, ffn = block.attention, block.ffn
            group = attention.get("n_heads_in_group")
            if not attention.no_op and not attention.replace_with_linear:
                if not isinstance(group, int) or group <= 0 or self.num_attention_heads % group:
                    raise ValueError(
                        f"block {i}: n_heads_in_group={group!r} must be a positive divisor of "
                        f"num_attention_heads={self.num_attention_heads}"
                    )
            if not ffn.no_op and not ffn.replace_with_linear:
                if "ffn_mult" not in ffn and not isinstance(ffn.get("intermediate_size"), int):
                    raise ValueError(f"block {i}: the ffn entry needs `ffn_mult` or an int `intermediate_size`")

    def to_dict(self):
        output = super().to_dict()
        if "block_configs" in output:
            output["block_configs"] = _to_plain(output["block_configs"])
        return output


__all__ = ["DeciLMConfig"]
