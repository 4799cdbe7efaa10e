"""DreamerV2 and nothing else: networks, distributions, the RSSM, the losses, world model, actor-critic, agent."""
