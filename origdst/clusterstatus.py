"""
The admin's C{/clusters}: the figures of each host of the cluster, in Envoy's
text and JSON forms. Read only when asked; nothing here is kept.
"""


def hosts(cluster):
    """
    @param cluster: the L{origdst.cluster.OriginalDstCluster}.
    @return: C{(host, counters, gauges)} for each current host, by key;
        counters and gauges are C{(name, value)} pairs sorted by name.
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
        out.append((host, counters, gauges))
    return out


def as_text(settings, figures):
    """
    Envoy's form: C{<cluster>::<host>::<figure>::<value>} lines.

    @param figures: what L{hosts} returns.
    """
    name = settings.cluster_name
    lines = [
        f"{name}::observability_name::{name}",
        f"{name}::default_priority::max_connections::{settings.max_connections}",
        f"{name}::default_priority::max_pending_requests::{settings.max_pending_requests}",
        f"{name}::added_via_api::false",
    ]
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


def as_json(settings, figures):
    """
    Envoy's C{cluster_statuses} form, values as numbers; C{key} and
    C{last_used} (seconds since the epoch) are origdst's own.

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
    return {
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
