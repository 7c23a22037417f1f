"""An app whose import takes 3 s: a fork server preloading it keeps runs in ``starting``."""

from __future__ import annotations

import time

from examples.agents import slow_agent, weather_agent

time.sleep(3)

agent = weather_agent

slow = slow_agent
