"""The reference router for llama-server router mode."""
