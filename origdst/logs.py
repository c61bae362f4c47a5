"""
origdst's loggers, filtered by one process-wide level.

twistd writes every event it is given, so the level (C{--log-level}) is applied
here, between origdst's loggers and the global publisher; Twisted's own events
are not affected. C{--log-format json} swaps twistd's text observer for
L{json_observer}, one JSON object per line.
"""

import datetime
import json
import sys

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogPublisher,
)
from twisted.python.logfile import LogFile

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


# Keys of Twisted's own (and legacy) events that are not fields worth a key.
_INTERNAL = frozenset(["format", "message", "isError", "system", "time", "why", "failure"])


def format_json(event):
    """
    One event as one line of JSON: C{time} (UTC, RFC 3339), C{level},
    C{namespace}, C{message} (the formatted text, with a traceback when the
    event carries a failure), then the event's own scalar fields, such as
    C{tag} (C{[C4][S9]}) or C{key}, so a request can be followed by field.
    """
    record = {
        "time": datetime.datetime.fromtimestamp(
            event.get("log_time", 0), datetime.timezone.utc
        ).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": getattr(event.get("log_level"), "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    system = event.get("log_system")
    if system and system != "-":
        record["system"] = system
    for key, value in event.items():
        if (
            key in record
            or key in _INTERNAL
            or key.startswith("log_")
            or not isinstance(value, (str, int, float, bool, type(None)))
        ):
            continue
        record[key] = value
    return json.dumps(record, default=str) + "\n"


def json_observer(out):
    """
    @return: an observer writing L{format_json} lines to the file C{out}.
    """
    return FileLogObserver(out, format_json)


def tagged(observer, number):
    """
    With C{--workers}, each process's lines say which it is: C{[worker 1]}
    as the system of a text line (C{[worker 1,HTTPChannel,...]} for an event
    that has one), C{"worker": 1} in a JSON one. The main process is 0.

    @return: an observer passing tagged copies of events to C{observer}.
    """
    name = f"worker {number}"

    def observe(event):
        event = dict(event)
        system = event.get("log_system")
        event["log_system"] = name if system in (None, "-") else f"{name},{system}"
        event["worker"] = number
        observer(event)

    return observe


def twistd_log_file(server_options):
    """
    The file twistd would log to, chosen from its own options as twistd
    does: stdout with C{-n} (or C{--logfile -}), else C{--logfile} or
    C{twistd.log}.

    @param server_options: twistd's options (the plugin options' C{parent}),
        or C{None} when not run by twistd.
    @return: a writable file, or C{None} when twistd's own choice must stand
        (C{--syslog}, or a daemon asked to log to stdout, which twistd
        refuses).
    """
    if server_options is None:
        return sys.stdout
    if server_options.get("syslog"):
        return None
    name = server_options.get("logfile") or ""
    daemon = not server_options.get("nodaemon")
    if name == "-" or (not name and not daemon):
        return None if daemon else sys.stdout
    return LogFile.fromFullPath(name or "twistd.log")
