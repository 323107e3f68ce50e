"""Prometheus text exposition (format 0.0.4) of the detector's counters on a local port.

Hand-written on purpose: a dozen series do not justify a dependency, and the format is
small (prometheus.io/docs/instrumenting/exposition_formats). Served by a stdlib HTTP server
on its own thread, bound to 127.0.0.1 by default.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from semiflow.detector.serving.stats import Histogram, ServingStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _histogram(name: str, help_: str, h: Histogram) -> list[str]:
    out = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
    acc = 0
    for b, c in zip(h.buckets, h.counts):
        acc += c
        out.append(f'{name}_bucket{{le="{b:g}"}} {acc}')
    out.append(f'{name}_bucket{{le="+Inf"}} {h.n}')
    out.append(f"{name}_sum {h.sum:.6f}")
    out.append(f"{name}_count {h.n}")
    return out


def render(stats: ServingStats, queue_depth: int, extra: dict[str, float] | None = None) -> str:
    """All series as exposition text."""
    with stats.lock:
        lines = [
            "# HELP semiflow_requests_received_total Flows received from Zeek, batched or not.",
            "# TYPE semiflow_requests_received_total counter",
            f"semiflow_requests_received_total {stats.received}",
            "# HELP semiflow_flows_scored_total Flows scored by the model.",
            "# TYPE semiflow_flows_scored_total counter",
            f"semiflow_flows_scored_total {stats.scored}",
            "# HELP semiflow_flows_shed_total Flows answered status=shed (queue full).",
            "# TYPE semiflow_flows_shed_total counter",
            f"semiflow_flows_shed_total {stats.shed}",
            "# HELP semiflow_errors_total Malformed requests and other errors, by kind.",
            "# TYPE semiflow_errors_total counter",
        ]
        lines += [f'semiflow_errors_total{{kind="{_label(k)}"}} {v}'
                  for k, v in sorted(stats.errors.items())]
        lines += ["# HELP semiflow_verdicts_total Verdicts sent, by status.",
                  "# TYPE semiflow_verdicts_total counter"]
        lines += [f'semiflow_verdicts_total{{status="{_label(k)}"}} {v}'
                  for k, v in sorted(stats.statuses.items())]
        lines += _histogram("semiflow_batch_size", "Flows per micro-batch.", stats.batches)
        lines += _histogram("semiflow_latency_seconds",
                            "Request received -> verdict ready.", stats.latency)
    lines += ["# HELP semiflow_queue_depth Flows waiting for the scorer.",
              "# TYPE semiflow_queue_depth gauge", f"semiflow_queue_depth {queue_depth}"]
    typed = set()
    for k, v in (extra or {}).items():
        base = k.split("{", 1)[0]  # name{label="..."}: one TYPE line per metric name
        if base not in typed:
            typed.add(base)
            lines.append(f"# TYPE {base} {'counter' if base.endswith('_total') else 'gauge'}")
        lines.append(f"{k} {v:g}")
    return "\n".join(lines) + "\n"


class MetricsServer:
    """GET /metrics -> render_fn(); runs on a daemon thread until close()."""

    def __init__(self, port: int, render_fn: Callable[[], str], host: str = "127.0.0.1"):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server API)
                if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = render_fn().encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                       name="semiflow-metrics")
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
