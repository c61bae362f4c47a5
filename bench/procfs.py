"""
What the benchmark reads from /proc: process trees, their CPU time and memory, the machine's
busy time; and CPU affinity for the profiler's pinning.
"""

import os
import statistics
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_tree(pid):
    """
    @return: C{pid} and all its descendants that are alive.
    """
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_seconds(pids):
    user, system = cpu_split(pids)
    return user + system


def cpu_split(pids):
    """
    @return: C{(user, system)} CPU seconds of C{pids} (utime, stime).
    """
    user = system = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        # Fields 14 and 15 of stat (utime, stime); index 0 here is field 3.
        user += int(fields[11])
        system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def status_kib(pids, field):
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def reset_peak(pids):
    for pid in pids:
        try:
            with open("/proc/%d/clear_refs" % pid, "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
        except OSError:
            pass


def settled_rss(proxy):
    samples = []
    for _ in range(3):
        samples.append(proxy.rss_kib())
        time.sleep(0.2)
    return statistics.median(samples)


class RssSampler(threading.Thread):
    """
    Polls the proxy's RSS every 20 ms: a second opinion next to VmHWM.
    """

    def __init__(self, proxy):
        threading.Thread.__init__(self, daemon=True)
        self.proxy = proxy
        self.pids = proxy.pids()
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            self.peak = max(self.peak, status_kib(self.pids, "VmRSS"))
            self._stop_event.wait(0.02)

    def stop(self):
        self._stop_event.set()
        self.join(5)


def machine_busy_seconds():
    """
    @return: CPU seconds all CPUs spent busy since boot (/proc/stat).
    """
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: irq and softirq
    # are left out, being mostly the packets of the bench itself, which the
    # kernel charges to no process.
    return (fields[0] + fields[1] + fields[2] + fields[7]) / CLK_TCK


def machine_busy(seconds=1.0):
    """
    @return: the fraction of all CPUs busy over C{seconds}, from /proc/stat:
        other work sharing the machine makes every figure noisy.
    """
    def sample():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle
    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    return round(1 - (i1 - i0) / float(max(1, t1 - t0)), 3)


def set_affinity(pids, cpus):
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir("/proc/%d/task" % pid)]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass
