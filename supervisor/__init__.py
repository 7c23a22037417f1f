"""The adk-supervisor daemon, its configuration, CLI, status socket and client."""

from .client import SupervisorClient, TaskExistsError, TaskNotFoundError, submit_task
from .config import ConfigError, Settings, load_settings
from .daemon import Supervisor
from .redis_server import RedisServer, RedisServerError, find_redis_server
from .sd_notify import SdNotifier
from .socket_client import DaemonError, DaemonUnavailable
from .socket_client import request as socket_request
from .state_lock import StateDirLock, StateDirLocked
from .status_socket import SocketInUseError, StatusSocketServer

__all__ = [
    "ConfigError",
    "DaemonError",
    "DaemonUnavailable",
    "RedisServer",
    "RedisServerError",
    "SdNotifier",
    "Settings",
    "SocketInUseError",
    "StateDirLock",
    "StateDirLocked",
    "StatusSocketServer",
    "Supervisor",
    "SupervisorClient",
    "TaskExistsError",
    "TaskNotFoundError",
    "find_redis_server",
    "load_settings",
    "socket_request",
    "submit_task",
]
