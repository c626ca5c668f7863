"""DeciLM ("nemotron-nas") causal LM for heterogeneous Llama-family checkpoints.

Remote code (``trust_remote_code=True``) shipped by twossp-engine next to 2SSP-pruned models, written for
transformers 5.x (checked with 5.24; it uses the ``cache=`` argument naming of recent 5.x releases). It is a
Llama decoder built from transformers' Llama pieces (RMSNorm, rotary embedding, rotary application, eager
attention), where ``config.block_configs[i]`` shapes block ``i``:

- ``attention.no_op`` false: ``input_layernorm`` + self-attention with
  ``num_attention_heads // attention.n_heads_in_group`` KV heads and, when ``attention.window_length`` is an int, a
  sliding window of that many tokens (Mistral semantics). Bias on q/k/v when ``config.qkv_bias`` (Qwen2) or
  ``config.attention_bias``; bias on o only with ``config.attention_bias``.
  ``attention.no_op`` true: the block has no attention and no ``input_layernorm`` parameters at all.
- ``ffn.no_op`` false: ``post_attention_layernorm`` + SiLU-gated MLP whose width is given by ``ffn_width`` (the
  ``ffn_mult`` formula when present, else ``ffn.intermediate_size``). ``ffn.no_op`` true: neither exists.

Block forward: ``h = h + attn(input_layernorm(h))`` (if attention), then ``h = h + mlp(post_attention_layernorm(h))``
(if MLP). Tensor names are the HF Llama names. The KV cache is transformers' ``DynamicCache``: attention-free blocks
never write their (lazily created, empty) cache layer, and positions and masks are sized from the first block that
has attention, so decoding with a cache matches a full recompute.
"""

import torch
from torch import nn

from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask, sliding_window_overlay
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.models.llama.modeling_llama import (
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
    eager_attention_forward,
)
from transformers.utils import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .configuration_decilm import DeciLMConfig, ffn_width


class DeciLMMLP(nn.Module):
    """Llama's gated MLP with a per-block width."""

    def __init__(self, config: DeciLMConfig, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class DeciLMAttention(nn.Module):
    """Llama's attention with a per-block KV-head count and optional sliding window."""

    def __init__(self, config: DeciLMConfig, layer_idx: int, num_key_value_heads: int, sliding_window):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.num_key_value_groups = config.num_attention_heads // num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        self.sliding_window = sliding_window
        qkv_bias = bool(config.attention_bias or getattr(config, "qkv_bias", False))
        q_size = config.num_attention_heads * self.head_dim
        kv_size = num_key_value_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, q_size, bias=qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, kv_size, bias=qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, kv_size, bias=qkv_bias)
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=config.attention_bias)

    def forward(self, hidden_states, position_embeddings, attention_mask=None, cache=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)

        implementation = self.config._attn_implementation
        attention = eager_attention_forward
        if implementation not in (None, "eager"):
            attention = ALL_ATTENTION_FUNCTIONS[implementation]
        output, weights = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            sliding_window=self.sliding_window,  # flash/flex kernels window by this; sdpa/eager by the mask
            **kwargs,
        )
        output = output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(output), weights


class DeciLMDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: DeciLMConfig, layer_idx: int):
        super().__init__()
        block = config.block_configs[layer_idx]
        attention, ffn = block.attention, block.ffn
        if attention.get("replace_with_linear") or ffn.get("replace_with_linear"):
            raise NotImplementedError(f"block {layer_idx}: `replace_with_linear` blocks are not supported")
        if not attention.no_op and attention.get("num_sink_tokens"):
            raise NotImplementedError(f"block {layer_idx}: sink attention (`num_sink_tokens`) is not supported")
        self.has_attention = not attention.no_op
        self.has_mlp = not ffn.no_op
        self.window_length = None

        if self.has_attention:
            window = attention.get("window_length")
            self.window_length = window if isinstance(window, int) and not isinstance(window, bool) else None
            num_kv = config.num_attention_heads // attention.n_heads_in_group
            self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.self_attn = DeciLMAttention(config, layer_idx, num_kv, self.window_length)
        if self.has_mlp:
            self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.mlp = DeciLMMLP(config, ffn_width(ffn, config.hidden_size))

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        position_ids=None,
        cache=None,
        use_cache=False,
        position_embeddings=None,
        **kwargs,
    ):
        if self.has_attention:
            attn_out, _ = self.self_attn(
                self.input_layernorm(hidden_states),
                position_embeddings=position_embeddings,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                **kwargs,
            )
            hidden_states = hidden_states + attn_out
        if self.has_mlp:
            hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states


class DeciLMPreTrainedModel(PreTrainedModel):
    config_class = DeciLMConfig
    config: DeciLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DeciLMDecoderLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": DeciLMDecoderLayer, "attentions": DeciLMAttention}


class DeciLMModel(DeciLMPreTrainedModel):
    def __init__(self, config: DeciLMConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([DeciLMDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        # The cache layer that sizes positions and masks: the first block with attention (block 0 in our exports).
        attention_layers = [i for i, layer in enumerate(self.layers) if layer.has_attention]
        self.first_attention_layer = attention_layers[0] if attention_layers else 0
        # One mask per distinct window (None = full causal attention).
        self.window_lengths = sorted(
            {self.layers[i].window_length for i in attention_layers}, key=lambda w: -1 if w is None else w
        )
        self.post_init()

    @capture_outputs
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache: Cache | None = None,
        inputs_embeds=None,
        use_cache=None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache is None:
            use_cache = self.config.use_cache and not (self.gradient_checkpointing and self.training)
        if use_cache and cache is None:
            # Blocks without attention leave their cache layer empty; see the module docstring.
            cache = DynamicCache(config=self.config)

        ref = self.first_attention_layer
        if position_ids is None:
            past_seen_tokens = cache.get_seq_length(ref) if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_ids = position_ids.unsqueeze(0)

        masks = {
            window: create_causal_mask(
                config=self.config,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                cache=cache,
                position_ids=position_ids,
                and_mask_function=None if window is None else sliding_window_overlay(window),
                layer_idx=ref,
            )
            for window in self.window_lengths
        }

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        for layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states = layer(
                hidden_states,
                attention_mask=masks.get(layer.window_length),
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                position_embeddings=position_embeddings,
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache)


class DeciLMForCausalLM(DeciLMPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: DeciLMConfig):
        super().__init__(config)
        self.model = DeciLMModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache: Cache | None = None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        logits_to_keep=0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = ["DeciLMForCausalLM", "DeciLMModel", "DeciLMPreTrainedModel", "DeciLMDecoderLayer"]
