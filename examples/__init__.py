"""Example agents for adk-supervisor: none of them needs a network or an API key."""
