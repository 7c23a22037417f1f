"""The in-process orchestration plugin, for ADK apps run without the supervisor daemon."""

from .orchestration import TASK_ID_METADATA_KEY, TIMEOUT_METADATA_KEY, RedisOrchestrationPlugin

__all__ = ["TASK_ID_METADATA_KEY", "TIMEOUT_METADATA_KEY", "RedisOrchestrationPlugin"]
