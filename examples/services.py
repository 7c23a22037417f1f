"""ADK CLI service registration from Python: the same as services.yaml beside it."""

from agent_runtime.adk_services import register_session_service

register_session_service()
