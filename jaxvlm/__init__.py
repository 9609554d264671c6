"""jaxvlm: where do video language models look? Flax ports + attention knockouts + keyframe selection."""
