"""The paper's 2-D toy experiment: free latents aligned to a flow prior of a known density."""
