"""Building blocks: attention, the Transformer layer, embeddings and heads.

Example:

>>> from tf_bigmodels.layers import TransformerLayer
>>> block = TransformerLayer(d_model=128, num_heads=4, dff=512, causal=True, norm_first=True)
"""

from tf_bigmodels.layers.activations import gelu, gelu_approximate
from tf_bigmodels.layers.attention import MultiHeadSelfAttention, scaled_dot_product_attention
from tf_bigmodels.layers.masked_lm_head import MaskedLMHead
from tf_bigmodels.layers.masks import attention_mask
from tf_bigmodels.layers.position_embedding import PositionEmbedding
from tf_bigmodels.layers.transformer_layer import TransformerLayer

__all__ = [
    "MaskedLMHead",
    "MultiHeadSelfAttention",
    "PositionEmbedding",
    "TransformerLayer",
    "attention_mask",
    "gelu",
    "gelu_approximate",
    "scaled_dot_product_attention",
]
