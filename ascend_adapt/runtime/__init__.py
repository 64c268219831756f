"""Runtime: step inputs for a static KV cache, LM sessions, runners, the generate loop."""
