"""What the daemon needs around it: the state-dir lock, the embedded Redis, logging, sd_notify."""
