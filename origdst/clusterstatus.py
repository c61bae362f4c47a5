"""
The admin's C{/clusters}: the figures of each host of the cluster, in Envoy's
text and JSON forms. Read only when asked; nothing here is kept.
"""


class HostFigures:
    """
    Who a host is, apart from its pool: what C{/clusters} names it by, and
    what L{origdst.workerstats} merges the workers' figures by.
    """

    __slots__ = ("key", "ip", "port", "last_used", "tls_name")

    def __init__(self, key, ip, port, last_used, tls_name=None):
        self.key = key
        self.ip = ip
        self.port = port
        self.last_used = last_used
        self.tls_name = tls_name

    @property
    def order(self):
        return (self.ip, self.port, self.tls_name or "")


def hosts(cluster):
    """
    @param cluster: the L{origdst.cluster.OriginalDstCluster}.
    @return: C{(host, counters, gauges)} for each current host, in address
        order: the host's L{HostFigures}, then C{(name, value)} pairs sorted
        by name.
    """
    out = []
    for host in sorted(cluster.hosts.values(), key=lambda h: (h.ip, h.port, h.tls_name or "")):
        pool = host.pool
        counters = [
            ("cx_connect_fail", pool.cx_connect_fail),
            ("cx_rx_bytes_total", pool.rx_bytes),
            ("cx_total", pool.cx_total),
            ("cx_tx_bytes_total", pool.tx_bytes),
            ("rq_error", pool.rq_error),
            ("rq_success", pool.rq_success),
            ("rq_timeout", pool.rq_timeout),
            ("rq_total", pool.rq_total),
        ]
        gauges = [("cx_active", pool.cx_active()), ("rq_active", pool.rq_active())]
        figures = HostFigures(host.key, host.ip, host.port, host.last_used, host.tls_name)
        out.append((figures, counters, gauges))
    return out


def as_text(settings, figures, missing=()):
    """
    Envoy's form: C{<cluster>::<host>::<figure>::<value>} lines.

    @param figures: what L{hosts} returns.
    @param missing: the numbers of the workers left out of the sum, named in
        a C{<cluster>::workers_missing::1,2} line when there are any.
    """
    name = settings.cluster_name
    lines = [
        f"{name}::observability_name::{name}",
        f"{name}::default_priority::max_connections::{settings.max_connections}",
        f"{name}::default_priority::max_pending_requests::{settings.max_pending_requests}",
        f"{name}::added_via_api::false",
    ]
    if missing:
        lines.append(f"{name}::workers_missing::" + ",".join(str(number) for number in missing))
    for host, counters, gauges in figures:
        prefix = f"{name}::{host.key}::"
        lines += [f"{prefix}{figure}::{value}" for figure, value in counters + gauges]
        lines += [
            # An originated TLS host: the name it is verified for (one
            # address can have several, as in Envoy's DNS clusters).
            prefix + "hostname::" + (host.tls_name or ""),
            prefix + "health_flags::healthy",
            prefix + "weight::1",
            prefix + "region::",
            prefix + "zone::",
            prefix + "sub_zone::",
            prefix + "canary::false",
            prefix + "priority::0",
            prefix + "success_rate::-1",
            prefix + "local_origin_success_rate::-1",
            prefix + "last_used::%.3f" % (host.last_used or 0),
        ]
    return "".join(line + "\n" for line in lines)


def as_json(settings, figures, missing=()):
    """
    Envoy's C{cluster_statuses} form, values as numbers; C{key} and
    C{last_used} (seconds since the epoch) are origdst's own, and so is
    C{workers_missing}, present when workers did not answer.

    @param figures: what L{hosts} returns.
    """
    statuses = []
    for host, counters, gauges in figures:
        statuses.append(
            {
                "address": {"socket_address": {"address": host.ip, "port_value": host.port}},
                "key": host.key,
                "hostname": host.tls_name or "",
                "stats": [{"name": n, "value": v} for n, v in counters]
                + [{"type": "GAUGE", "name": n, "value": v} for n, v in gauges],
                "health_status": {"eds_health_status": "HEALTHY"},
                "weight": 1,
                "last_used": host.last_used,
            }
        )
    data = {
        "cluster_statuses": [
            {
                "name": settings.cluster_name,
                "observability_name": settings.cluster_name,
                "added_via_api": False,
                "circuit_breakers": {
                    "thresholds": [
                        {
                            "max_connections": settings.max_connections,
                            "max_pending_requests": settings.max_pending_requests,
                        }
                    ]
                },
                "host_statuses": statuses,
            }
        ]
    }
    if missing:
        data["workers_missing"] = list(missing)
    return data
