"""
The run at a glance: an SVG (hand-written, the standard library only) of origdst's ratios to
Envoy, one group of bars per figure, a bar per origdst target (the median of the per-round
ratios) with the min-max range over the rounds as a whisker, 1.0x as a line and each figure's
target (bench/targets.json) as a mark.
"""

from xml.sax.saxutils import escape

#: The figures drawn: (phase.key, label, better).
FIGURES = [
    ("keepalive.rps", "keep-alive req/s", "higher"),
    ("keepalive.proxy_cpu_us_per_req", "CPU per request", "lower"),
    ("close.rps", "Connection: close req/s", "higher"),
    ("keepalive.p99_ms", "p99 at saturation", "lower"),
    ("rate.p99_ms", "p99 at a fixed rate", "lower"),
    ("bulk.mb_per_s", "256 MiB download MB/s", "higher"),
    ("tcp.mb_per_s", "TCP relay MB/s", "higher"),
    ("tcp.proxy_cpu_s_per_gib", "TCP relay CPU per GiB", "lower"),
    ("tls.conns_per_s", "TLS passthrough conn/s", "higher"),
    ("tls.p99_ms", "TLS connection p99", "lower"),
    ("tls.proxy_cpu_us_per_conn", "CPU per TLS connection", "lower"),
]

COLOURS = ["#4878a8", "#e08a30", "#58a058", "#c04848", "#8c6cb8", "#888888"]

WIDTH = 900
LEFT = 210
RIGHT = 30
BAR = 14
GAP = 3
GROUP_GAP = 18
TOP = 70


def write(path, out, pairs, targets=None):
    """
    Write the chart of C{out} (the run's JSON) to C{path}.

    @param pairs: the C{(subject, reference)} ratios to draw, e.g.
        C{("origdst-pypy", "envoy1")}; pairs without origdst are left out.
    @param targets: bench/targets.json, for the target marks.
    """
    pairs = [p for p in pairs if p[0].startswith("origdst") and p[1].startswith("envoy")]
    ratios = out.get("ratios", {})
    marks = {}
    if targets:
        subject, reference = targets["subject"], targets["reference"]
        for c in targets["checks"]:
            if "ratio" in c:
                r = c["ratio"]
                marks[(c.get("subject", subject), c.get("reference", reference),
                       "%s.%s" % (r["phase"], r["key"]))] = (r["op"], r["limit"])
    groups = []
    for fig, label, better in FIGURES:
        bars = []
        for i, (num, den) in enumerate(pairs):
            r = ratios.get("%s/%s" % (num, den), {}).get(fig)
            if r:
                bars.append((i, num, den, r, marks.get((num, den, fig))))
        if bars:
            groups.append((label, better, bars))
    # Up to 3x: a figure beyond is drawn to the edge, its value written.
    top = min(3.0, max([2.0] + [b[3]["max"] for g in groups for b in g[2]]))
    scale = (WIDTH - LEFT - RIGHT - 60) / (top * 1.05)
    height = TOP + sum(len(g[2]) * (BAR + GAP) + GROUP_GAP for g in groups) + 40 \
        + 18 * len(pairs)

    def x(v):
        return LEFT + min(v, top * 1.05) * scale

    meta = out.get("meta", {})
    n_rounds = len(out.get("rounds", [])) or 1
    svg = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'font-family="sans-serif" font-size="12">' % (WIDTH, height),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="10" y="22" font-size="15" font-weight="bold">origdst vs Envoy: ratios '
           '(median of %d rounds, whiskers min-max)</text>' % n_rounds,
           '<text x="10" y="42" fill="#555">%s, origdst %s; 1.0x = Envoy (--concurrency 1, '
           'or 2 for the -w2 targets); | = target</text>' % (
               escape(str(meta.get("date", ""))), escape(str(meta.get("origdst_commit", ""))))]
    step = 0.5 if top <= 4 else 1.0
    v = 0.0
    while v <= top * 1.05:
        svg.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s"/>' % (
            x(v), TOP - 10, x(v), height - 30 - 18 * len(pairs),
            "#333" if v == 1.0 else "#e4e4e4"))
        svg.append('<text x="%.1f" y="%d" text-anchor="middle" fill="#555">%gx</text>' % (
            x(v), TOP - 14, v))
        v += step
    y = TOP
    for label, better, bars in groups:
        svg.append('<text x="10" y="%d" font-weight="bold">%s</text>' % (y + BAR - 2,
                                                                          escape(label)))
        svg.append('<text x="10" y="%d" fill="#777">(%s is better)</text>' % (
            y + 2 * BAR + 1, better))
        for i, num, den, r, mark in bars:
            colour = COLOURS[i % len(COLOURS)]
            svg.append('<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s">'
                       '<title>%s/%s %s: %.2fx [%.2f-%.2f]</title></rect>' % (
                           LEFT, y, max(0.5, x(r["median"]) - LEFT), BAR, colour,
                           escape(num), escape(den), escape(label), r["median"], r["min"], r["max"]))
            mid = y + BAR / 2.0
            svg.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>' % (
                x(r["min"]), mid, x(r["max"]), mid))
            for end in (r["min"], r["max"]):
                svg.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>'
                           % (x(end), y + 3, x(end), y + BAR - 3))
            if mark:
                svg.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#d00" '
                           'stroke-width="3"><title>target %s %gx</title></line>' % (
                               x(mark[1]), y - 1, x(mark[1]), y + BAR + 1, escape(mark[0]), mark[1]))
            svg.append('<text x="%.1f" y="%d">%.2fx%s</text>' % (
                x(r["max"]) + 5, y + BAR - 3, r["median"],
                " (to %.1fx)" % r["max"] if r["max"] > top * 1.05 else ""))
            y += BAR + GAP
        y += GROUP_GAP
    y += 10
    for i, (num, den) in enumerate(pairs):
        svg.append('<rect x="10" y="%d" width="12" height="12" fill="%s"/>' % (
            y, COLOURS[i % len(COLOURS)]))
        svg.append('<text x="28" y="%d">%s / %s</text>' % (y + 10, escape(num), escape(den)))
        y += 18
    svg.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(svg) + "\n")
    return path


def main(argv=None):
    """
    C{python -m bench.chart RESULTS.json}: the chart of a run again, beside it.
    """
    import json
    import os
    import sys

    from bench import report

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python -m bench.chart RESULTS.json")
    with open(argv[0]) as f:
        out = json.load(f)
    pairs = [tuple(p.split("/")) for p in out.get("ratios", {})]
    svg = write(os.path.splitext(argv[0])[0] + ".svg", out, pairs, report.load_targets())
    print(svg)


if __name__ == "__main__":
    main()
