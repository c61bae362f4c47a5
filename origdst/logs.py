"""
origdst's loggers, filtered by one process-wide level.

twistd writes every event it is given, so the level (C{--log-level}) is applied
here, between origdst's loggers and the global publisher; Twisted's own events
are not affected.
"""

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_predicate])


def logger(namespace):
    """
    @return: a L{Logger} whose events pass the origdst level filter.
    """
    return Logger(namespace=namespace, observer=_observer)


def set_level(name):
    """
    Set the level below which origdst's events are dropped.

    @param name: one of L{LEVELS}.
    """
    global _debug
    _predicate.setLogLevelForNamespace("", LEVELS[name])
    _debug = name == "debug"


def level():
    """
    @return: the name of the level in force.
    """
    current = _predicate.logLevelForNamespace("")
    return next(name for name, value in LEVELS.items() if value == current)


_debug = False


def debug_enabled():
    """
    Let hot paths skip building debug messages that would be dropped.
    """
    return _debug
