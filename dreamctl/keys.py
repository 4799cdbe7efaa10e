"""Names of the data a step carries that the envs produce and the model reads by name (no package owns them)."""

ACTION_MASK_KEY = "action_mask"
"""The observation of envs that restrict the actions from state to state (SMAC's available actions, PettingZoo's
`action_mask`): float32 (action_dim,), 1 for each action allowed now. The actor never chooses an action it marks 0:
acting reads it from the env, imagination from the world model, which reconstructs it as it does every vector
(MAMBA's availability head)."""
