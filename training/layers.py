"""Keras layers of our own; each has a native ONNX counterpart in training/onnx_rnn.py."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="rnnserve")
class MaxMeanPooling(keras.layers.Layer):
    """[N, T, D] -> [N, 2D]: the max and the mean over the steps the mask keeps (all steps without a mask).

    Keras's GlobalMaxPooling1D ignores masks, so padding would count; a text with no kept step gives zeros."""

    def call(self, x, mask=None):
        if mask is None:
            return ops.concatenate([ops.max(x, axis=1), ops.mean(x, axis=1)], axis=-1)
        keep = ops.expand_dims(ops.cast(mask, x.dtype), -1)  # [N, T, 1]
        count = ops.sum(keep, axis=1)  # [N, 1]
        mean = ops.sum(x * keep, axis=1) / ops.maximum(count, 1.0)
        highest = ops.max(ops.where(keep > 0, x, float("-inf")), axis=1)
        return ops.concatenate([ops.where(count > 0, highest, 0.0), mean], axis=-1)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 * input_shape[-1])
