"""
Reading the proxy's admin figures as the tests, the soak and the accounting
check do: one place that knows the shape of Envoy's JSON forms.
"""

import json


def stat_values(document):
    """
    @param document: the body of C{/stats?format=json} (bytes or text), or
        its parsed form.
    @return: C{{name: value}} of its counters and gauges; Envoy's
        C{histograms} element, the last of C{stats}, is left out.
    """
    if isinstance(document, (bytes, str)):
        document = json.loads(document)
    return {s["name"]: s["value"] for s in document["stats"] if "name" in s}
