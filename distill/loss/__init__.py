"""The KD loss of method §3 as pure tensor functions: the reference, the chunked loss from logits, the fused loss from hidden states."""
