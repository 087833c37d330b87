"""The one place where padding and causal masks become an attention mask."""

from keras import ops


def attention_mask(
    padding_mask=None, *, causal=False, query_length=None, key_length=None, query_offset=0
):
    """Builds the boolean attention mask `[batch or 1, query, key]` (True = may attend).

    A padding mask `[batch, key]` (1/True = real token) hides padded keys from every query; a
    causal mask lets the query at absolute position `query_offset + i` see only keys at
    positions `<= query_offset + i`. Both combine with a logical AND. Padded *queries* are not
    hidden: their outputs are ignored by whoever reads them, and hiding them would leave rows
    with nothing to attend to.

    With a mask, attention is softmax(Q K^T / sqrt(d_k) + M) V, where M is 0 where the mask is
    True and a large negative number (-1e9, in effect minus infinity) where it is False:
    `scaled_dot_product_attention` applies it to the scores before the softmax.

    Args:
        padding_mask: tensor `[batch, key_length]` of bool or 0/1 ints, or None.
        causal: bool. Whether to add the causal (lower-triangular) mask.
        query_length: int or scalar tensor. Number of queries; needed when `causal`.
        key_length: int or scalar tensor. Number of keys; needed when `causal`.
        query_offset: int or scalar tensor. Absolute position of the first query (non-zero when
            decoding with a key/value cache). Defaults to 0.

    Returns:
        A bool tensor broadcastable to `[batch, query_length, key_length]`, or None when there
        is nothing to mask.

    Example:

    The last key is padding, so no query sees it; each query sees itself and earlier keys:

    >>> mask = attention_mask(ops.array([[1, 1, 0]]), causal=True, query_length=3, key_length=3)
    >>> ops.convert_to_numpy(mask).astype(int)
    array([[[1, 0, 0],
            [1, 1, 0],
            [1, 1, 0]]])
    """
    mask = None
    if padding_mask is not None:
        mask = ops.expand_dims(ops.cast(padding_mask, "bool"), axis=1)  # (B, 1, K)
    if causal:
        query_positions = ops.arange(query_length) + query_offset
        key_positions = ops.arange(key_length)
        causal_mask = ops.expand_dims(
            ops.expand_dims(query_positions, 1) >= ops.expand_dims(key_positions, 0), 0
        )  # (1, Q, K)
        mask = causal_mask if mask is None else ops.logical_and(mask, causal_mask)
    return mask
