"""A causal LM's logits as a linear head of its last hidden state, for distill/loss/fused.py.

Most Hugging Face causal LMs compute ``logits = lm_head(base_model(x).last_hidden_state)``
with ``lm_head`` a ``torch.nn.Linear`` (GPT-2: no bias, and ``lm_head.weight`` IS
``transformer.wte.weight``). The fused loss takes that hidden state and the head's
weight instead of the (B, L, V) logits. Some architectures post-process the head's
output (Gemma 2 soft-caps its logits, others scale them); ``is_linear_head`` checks a
model on a tiny input so that a caller can refuse it or fall back to the logits.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from kdsweep.distill.runtime import eval_mode

# Length of the default probe input of is_linear_head: a few positions suffice.
PROBE_LENGTH = 8


class HeadInputs(NamedTuple):
    """What the fused loss needs from one model, still attached to its autograd graph.

    ``hidden`` (B, L, d): the last hidden state, after the final layer norm;
    ``weight`` (V, d): the LM head's weight, the model's own Parameter (for GPT-2 the
    Parameter shared with the token embedding), so gradients land where they belong;
    ``bias`` (V,) or None.
    """

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None


def head_inputs(model, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> HeadInputs:
    """Run ``model``'s base on (B, L) ``input_ids``: its hidden states and LM-head parameters.

    Raises:
        ValueError: if the model has no ``torch.nn.Linear`` output embedding or no
            separate base model.
    """
    head = _linear_head(model)
    if head is None or model.base_model is model:
        raise ValueError(f"head_inputs: {type(model).__name__} has no separate base model "
                         f"with a torch.nn.Linear LM head (output embeddings: "
                         f"{type(model.get_output_embeddings()).__name__})")
    output = model.base_model(input_ids=input_ids, attention_mask=attention_mask)
    return HeadInputs(output.last_hidden_state, head.weight, head.bias)


def is_linear_head(model, input_ids: torch.Tensor | None = None, *,
                   rtol: float = 1e-4, atol: float = 1e-4) -> bool:
    """Whether ``model(x).logits`` equals ``F.linear(*head_inputs(model, x))`` to tolerance.

    ``input_ids`` (B, L) default to one sequence of ``PROBE_LENGTH`` ids 0, 1, 2, ...
    Runs in eval mode (dropout would make two forwards differ) without gradients,
    then restores the model's training mode. False for models without a linear head.

    The check is numerical, for the weights it sees: a post-processing that barely
    acts on them passes (Gemma 2's soft cap of 30 on a freshly initialized model's
    logits of ~0.2), so check a trained teacher, not a student before training.
    """
    if _linear_head(model) is None or model.base_model is model:
        return False
    weight = model.get_output_embeddings().weight  # (V, d)
    if input_ids is None:
        input_ids = torch.arange(PROBE_LENGTH, device=weight.device).remainder(
            weight.shape[0]).unsqueeze(0)  # (1, PROBE_LENGTH)
    with eval_mode(model), torch.no_grad():
        logits = model(input_ids=input_ids).logits  # (B, L, V)
        hidden, weight, bias = head_inputs(model, input_ids)
        linear = F.linear(hidden, weight, bias)  # (B, L, V)
    return linear.shape == logits.shape and torch.allclose(
        linear.float(), logits.float(), rtol=rtol, atol=atol)


def _linear_head(model) -> torch.nn.Linear | None:
    head = model.get_output_embeddings()
    return head if isinstance(head, torch.nn.Linear) else None
