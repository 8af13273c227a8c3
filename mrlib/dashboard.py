"""The master's web dashboard: the cluster, the jobs, and a timeline of each job's attempts.

    GET /                 the cluster and every job (refreshes itself every 2 s)
    GET /jobs/N           one job: progress, counters, failure, and its timeline (SVG)
    GET /logs/N/NAME      an attempt's stderr (var/job-N/logs/NAME), as text
    GET /api/cluster      JSON: cluster_status
    GET /api/jobs         JSON: every job's job_status_reply
    GET /api/jobs/N       JSON: one job's job_status_reply, with "attempts" (its timeline)

It reads only what the master publishes (the job board) or answers through
its event queue (`ask`): it never touches the coordinator's state. With a
secret, every request needs `token` (in the query, or an X-Token header):
an HMAC of the secret, printed in the master's log. Without one, only a
request whose Host is an address, localhost, the bound host or this
machine's name is answered, so no page elsewhere can read the dashboard
through a DNS name it points at us (DNS rebinding). Served by a threading
HTTP server on its own threads, stopped and joined with the master, within
MAX_CONNECTIONS open connections and REQUEST_TIMEOUT per read of a request:
whoever can reach the port can hold a few threads, never the master's.
"""
import collections
import hashlib
import functools
import hmac
import html
import ipaddress
import json
import logging
import os
import re
import socket
import sys
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import helper
from mrlib.display import counter_groups

LOG = logging.getLogger("master")

REFRESH_SECONDS = 2  # pages of a running job reload this often
LOG_NAME = re.compile(r"(map|sort|reduce)-\d{5}\.attempt-\d+\.log")
JOB_PATH = re.compile(r"/(?:api/)?jobs/(-?\d{1,9})")
LOG_PATH = re.compile(r"/logs/(\d{1,9})/([^/]+)")
RUNNING_STATES = ("queued", "running")
CACHED_PAGES = 32  # rendered pages of ended jobs kept: a page left open costs nothing
# A file name that is not UTF-8 comes as surrogate escapes (\udce9): they are
# shown as such, since strict UTF-8 cannot encode them.
TEXT_ERRORS = "backslashreplace"
# Connections served at once, each on a thread of its own. A browser opens a
# few; more are closed as soon as they are accepted, without a thread, so
# clients that never finish a request cannot pile up threads and files.
MAX_CONNECTIONS = 32
# How long a client may be silent while sending its request (each read); then
# its connection is closed and its thread ends.
REQUEST_TIMEOUT = 5.0
# How long the reply may take to leave, once a request has been let in (a
# log of 1 MiB to a slow client).
REPLY_TIMEOUT = 60.0
# Host names a page elsewhere cannot make point at us (besides the bound one).
LOOPBACK_NAMES = ("localhost",)
# The timeline's drawing: pixels.
BAR_HEIGHT, LANE_GAP, ROW_GAP, LABEL_WIDTH, PLOT_WIDTH = 18, 2, 10, 190, 760
AXIS_HEIGHT, LEGEND_HEIGHT, LEGEND_SPACING = 24, 30, 135
PHASE_COLOURS = {"map": "#4e79a7", "sort": "#f28e2b", "reduce": "#59a14f"}
OUTCOME_STROKES = {"failed": "#d62728", "revoked": "#999999", "leftover": "#999999",
                   "forgotten": "#999999", "reported": "#999999"}


def token_for(secret):
    """The dashboard's token for a secret (None without one)."""
    if not secret:
        return None
    return hmac.new(secret, b"mapreduce dashboard", hashlib.sha256).hexdigest()[:32]


class Dashboard:
    """An HTTP server on (host, port), answering from `board` and `ask`."""

    def __init__(self, host, port, board, ask, job_root, token=None):
        self.board = board  # .all() -> [job snapshots]; .get(N) -> snapshot or None
        self.ask = ask  # ask(message) -> the coordinator's answer, or None
        self.job_root = job_root
        self.token = token
        self.names = {host_name(host), *LOOPBACK_NAMES}  # Hosts answered without a token
        self.cache = collections.OrderedDict()  # (job, version, kind) -> bytes, ended jobs
        self.cache_lock = threading.Lock()
        dashboard = self

        class Handler(_Handler):
            owner = dashboard
        self.server = _Server((host, port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="dashboard",
                                       daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self, join_timeout=2.0):
        if self.thread.is_alive():
            self.server.shutdown()
            self.thread.join(join_timeout)
        self.server.server_close()

    # --- what each path shows --------------------------------------------------------

    def cluster(self):
        return self.ask({"message_type": "cluster_status"}) or {"workers": []}

    def job(self, job_id):
        snapshot = self.board.get(job_id)
        if snapshot is None:
            return None
        timeline = self.ask({"message_type": "job_timeline", "job_id": job_id}) or {}
        return dict(snapshot, attempts=timeline.get("attempts", []), now=timeline.get("now"))

    def job_page(self, job_id, kind, render):
        """The rendered page (`kind`: html or json) of a job, or None if there is no such
        job. An ended job whose attempts have all ended does not change: its page is
        rendered once."""
        job = self.job(job_id)
        if job is None:
            return None
        attempts = job["attempts"]
        ended = (job["state"] not in RUNNING_STATES
                 and all(a["ended"] is not None for a in attempts))
        key = (job_id, job.get("version"), len(attempts), kind)
        with self.cache_lock:
            if ended and key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key]
        page = render(job)
        if ended:
            with self.cache_lock:
                self.cache[key] = page
                while len(self.cache) > CACHED_PAGES:
                    self.cache.popitem(last=False)
        return page

    def answers_host(self, header):
        """Whether a request with this Host header may be answered. With a token, any: a
        page elsewhere cannot know it. Without, only a name no page elsewhere can point at
        us: an address, ours, or this machine's name. A request without Host (HTTP/1.0)
        comes from no browser."""
        if self.token is not None or header is None:
            return True
        name = host_name(header)
        return is_address(name) or name in self.names or name in machine_names()

    def log_path(self, job_id, name):
        """The attempt log's path, or None unless `name` is one our master gives."""
        if not LOG_NAME.fullmatch(name):
            return None
        return os.path.join(self.job_root, f"job-{job_id}", "logs", name)


class _Server(ThreadingHTTPServer):
    """The standard threading server, within MAX_CONNECTIONS, quiet about bad clients."""

    daemon_threads = True
    request_queue_size = helper.LISTEN_BACKLOG

    def __init__(self, address, handler):
        super().__init__(address, handler)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.refused = helper.DropLog("dashboard")
        self.errors = helper.RateLog()  # a flood of resets costs a few lines

    def process_request(self, request, client_address):
        """Serve the connection on a thread of its own, or close it now if all are taken."""
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            self.refused.count(f"at the limit of {MAX_CONNECTIONS} open connections")
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: it will not give its slot back
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def service_actions(self):
        self.refused.flush()  # a flood's count, once the interval has passed

    def handle_error(self, request, client_address):
        """One rate-limited line, not a traceback on stderr: any client can cause it."""
        error = sys.exc_info()[1]
        self.errors.warning("dashboard: dropped a connection from %s: %s",
                            client_address[0], error if error is not None else "?")


class _Handler(BaseHTTPRequestHandler):
    owner = None  # the Dashboard, set by a subclass per server
    server_version = "mapreduce-dashboard"
    timeout = REQUEST_TIMEOUT  # set on the connection before the request is read

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        LOG.debug("dashboard: %s", format % args)

    def do_GET(self):  # noqa: N802 (the base class's name)
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if not self.owner.answers_host(self.headers.get("Host")):
            self.send_text(HTTPStatus.FORBIDDEN,
                           f"not answered for Host {self.headers['Host']}: without a secret "
                           f"the dashboard answers only localhost, an IP address or this "
                           f"machine's name, so that no web page elsewhere can read it\n")
            return
        if not self.allowed(query):
            self.send_text(HTTPStatus.FORBIDDEN, "a token is needed: see the master's log for "
                                                 "the dashboard's address with its token\n")
            return
        self.connection.settimeout(REPLY_TIMEOUT)
        try:
            self.route(url.path)
        except (ConnectionError, TimeoutError) as error:  # the client left, or stopped reading
            LOG.debug("dashboard: gave up answering %s: %s", url.path, error)
        except Exception:  # one bad request must never stop the dashboard
            LOG.exception("dashboard: error answering %s", url.path)
            self.send_text(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error\n")

    def do_HEAD(self):  # noqa: N802 (the base class's name)
        self.do_GET()  # send_bytes leaves the body out

    def allowed(self, query):
        token = self.owner.token
        if token is None:
            return True
        given = (query.get("token") or [self.headers.get("X-Token", "")])[0]
        return hmac.compare_digest(given.encode(), token.encode())

    def route(self, path):
        owner = self.owner
        if path == "/api/cluster":
            self.send_json(owner.cluster())
        elif path == "/api/jobs":
            self.send_json({"jobs": owner.board.all()})
        elif path in ("/", "/index.html"):
            self.send_html(render_index(owner.cluster(), owner.board.all(), self.suffix()))
        elif match := JOB_PATH.fullmatch(path):
            api = path.startswith("/api/")
            suffix = self.suffix()
            page = owner.job_page(
                int(match.group(1)), "json" if api else "html",
                lambda job: json.dumps(job).encode() if api else
                encode_text(render_job(job, suffix)))
            if page is None:
                self.send_text(HTTPStatus.NOT_FOUND, f"no job {match.group(1)}\n")
            else:
                self.send_bytes(HTTPStatus.OK, page,
                                "application/json" if api else "text/html; charset=utf-8")
        elif match := LOG_PATH.fullmatch(path):
            self.send_log(int(match.group(1)), urllib.parse.unquote(match.group(2)))
        else:
            self.send_text(HTTPStatus.NOT_FOUND, f"no page {path}: try / or /api/jobs\n")

    def suffix(self):
        """What every link carries: the token, if one is needed."""
        token = self.owner.token
        return f"?token={token}" if token else ""

    def send_log(self, job_id, name):
        path = self.owner.log_path(job_id, name)
        try:
            if path is None:
                raise FileNotFoundError(name)
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError:
            self.send_text(HTTPStatus.NOT_FOUND, f"no log {name} for job {job_id} (the attempt "
                                                 f"wrote nothing, or the job's files are gone)\n")
            return
        self.send_bytes(HTTPStatus.OK, data, "text/plain; charset=utf-8")

    def send_json(self, value):
        self.send_bytes(HTTPStatus.OK, json.dumps(value).encode(), "application/json")

    def send_html(self, text):
        self.send_bytes(HTTPStatus.OK, encode_text(text), "text/html; charset=utf-8")

    def send_text(self, status, text):
        self.send_bytes(status, encode_text(text), "text/plain; charset=utf-8")

    def send_bytes(self, status, data, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def host_name(header):
    """The name or address a Host header gives, without its port, in lower case."""
    host = header.strip().lower()
    if host.startswith("["):  # [::1]:8080
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def is_address(name):
    """True for an IP address: a browser sends one only when the user typed it."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@functools.cache
def machine_names():
    """This machine's names (looked up once, and only if a Host needs them)."""
    return {host_name(socket.gethostname()), host_name(socket.getfqdn())}


def encode_text(text):
    """UTF-8 bytes of a page or message, whatever names it holds."""
    return text.encode("utf-8", TEXT_ERRORS)


# --- pages ---------------------------------------------------------------------------

def page(title, body, refresh):
    meta = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'>{meta}"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{body}</body></html>")


STYLE = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
         "td,th{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:left}"
         ".failed,.cancelled{color:#d62728}.succeeded{color:#2a7d2a}"
         "pre{background:#f6f6f6;padding:.6em}")


def render_index(cluster, jobs, suffix):
    workers = "".join(
        f"<tr><td>{w['pid']}</td><td>{html.escape(str(w['host']))}:{w['port']}</td>"
        f"<td class='{w['state']}'>{w['state']}</td><td>{w['tasks']}"
        f"{f' ({aside} set aside)' if (aside := w.get('set_aside')) else ''}</td>"
        f"<td>{w.get('since_heartbeat', 0):.1f} s</td></tr>" for w in cluster["workers"])
    rows = "".join(
        f"<tr><td><a href='/jobs/{j['job_id']}{suffix}'>job {j['job_id']}</a></td>"
        f"<td class='{j['state']}'>{j['state']}</td><td>{html.escape(str(j.get('phase')))}</td>"
        f"<td>{progress(j)}</td><td>{elapsed(j)}</td>"
        f"<td>{html.escape(j.get('error') or '')}</td></tr>"
        for j in sorted(jobs, key=lambda j: -j["job_id"]))
    body = (f"<h2>Workers</h2><table><tr><th>pid</th><th>address</th><th>state</th>"
            f"<th>tasks</th><th>last heartbeat</th></tr>{workers}</table>"
            f"<p>running job: {cluster.get('current_job')}, queued: "
            f"{', '.join(map(str, cluster.get('queued_jobs') or [])) or 'none'}</p>"
            f"<h2>Jobs</h2><table><tr><th>job</th><th>state</th><th>phase</th>"
            f"<th>progress</th><th>time</th><th>error</th></tr>{rows}</table>")
    return page("MapReduce cluster", body, refresh=True)  # workers come and go too


def progress(job):
    total = job.get("tasks_total") or 0
    if job["state"] != "running" or not total:
        return ""
    return f"{job['tasks_done']}/{total} ({100 * job['tasks_done'] // total}%)"


def elapsed(job):
    total = (job.get("timings") or {}).get("total")
    return f"{total:.1f} s" if total is not None else ""


def render_job(job, suffix):
    counters = "".join(
        f"<tr><th colspan='2'>{html.escape(group)}</th></tr>"
        + "".join(f"<tr><td>{html.escape(n)}</td><td>{v}</td></tr>" for n, v in named)
        for group, named in counter_groups(job.get("counters")))
    failure = ""
    if job.get("failure") and job["state"] in ("failed", "cancelled"):
        cause = job["failure"]
        failure = (f"<h2>Probable cause of failure</h2><p>{html.escape(cause.get('task', ''))}"
                   f", attempt {cause.get('attempt')}, on worker {cause.get('worker')}: "
                   f"{html.escape(cause.get('reason') or '')}</p>"
                   f"<pre>{html.escape(cause.get('stderr_tail') or '')}</pre>"
                   + log_link(job["job_id"], cause.get("log_file"), suffix, "its stderr"))
    events = "".join(f"<li>{html.escape(e)}</li>" for e in job.get("events") or [])
    body = (f"<p><a href='/{suffix}'>cluster</a></p>"
            f"<p class='{job['state']}'>{job['state']}, {html.escape(str(job.get('phase')))} "
            f"phase {progress(job)} {elapsed(job)}</p>"
            f"<p>{html.escape(job.get('error') or '')}</p>{failure}"
            f"<h2>Timeline</h2>{timeline_svg(job, suffix)}"
            f"<h2>Counters</h2><table>{counters}</table><h2>Events</h2><ul>{events}</ul>")
    return page(f"job {job['job_id']}", body, job["state"] in RUNNING_STATES)


def log_link(job_id, path, suffix, text):
    if not path:
        return ""
    return (f"<p><a class='log' href='/logs/{job_id}/{urllib.parse.quote(os.path.basename(path))}"
            f"{suffix}'>{html.escape(text)}</a></p>")


def timeline_svg(job, suffix):
    """One row per worker, one bar per attempt from delivery to end (or now), coloured by
    phase, outlined by outcome; backups hatched; each bar links to its stderr. Attempts
    a worker held at once (queued behind each other) get lanes of their own."""
    attempts = job.get("attempts") or []
    if not attempts:
        return "<p>no attempts yet</p>"
    now = job.get("now")
    start = min(a["sent"] for a in attempts)
    end = max([finish_of(a, now) for a in attempts] + [start + 1e-3])
    scale = PLOT_WIDTH / (end - start)
    rows, y = [], AXIS_HEIGHT
    by_worker = {}
    for attempt in attempts:
        by_worker.setdefault((attempt["worker"], attempt["worker_address"]), []).append(attempt)
    for worker in sorted(by_worker, key=lambda w: w[1]):
        lanes = pack(by_worker[worker], now)
        rows.append((worker, y, lanes))
        y += max(1, len(lanes)) * (BAR_HEIGHT + LANE_GAP) + ROW_GAP
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' class='timeline' width='"
             f"{LABEL_WIDTH + PLOT_WIDTH + 10}' height='{y + LEGEND_HEIGHT}'>",
             "<defs><pattern id='backup' width='6' height='6' patternUnits='userSpaceOnUse'>"
             "<path d='M0,6 L6,0' stroke='white' stroke-width='2'/></pattern></defs>"]
    logs = existing_logs(attempts)
    for (pid, address), top, lanes in rows:
        parts.append(f"<text x='0' y='{top + BAR_HEIGHT - 4}' font-size='12'>worker {pid} "
                     f"({html.escape(address)})</text>")
        for number, lane in enumerate(lanes):
            for attempt in lane:
                parts.append(bar(job, attempt, start, scale,
                                 top + number * (BAR_HEIGHT + LANE_GAP), suffix, logs))
    parts.append(f"<text x='{LABEL_WIDTH}' y='14' font-size='11'>0 s</text>"
                 f"<text x='{LABEL_WIDTH + PLOT_WIDTH - 40}' y='14' font-size='11'>"
                 f"{end - start:.1f} s</text>{legend(y)}</svg>")
    return "".join(parts)


def existing_logs(attempts):
    """The attempts' log files that exist: one listing per log directory, not a stat each."""
    found = set()
    for directory in {os.path.dirname(a["log_file"]) for a in attempts if a.get("log_file")}:
        try:
            found.update(os.path.join(directory, name) for name in os.listdir(directory))
        except OSError:  # no attempt wrote anything, or the job's files are gone
            pass
    return found


def finish_of(attempt, now):
    return attempt["ended"] or now or attempt["started"]


def pack(attempts, now):
    """Attempts in lanes, none overlapping another in its lane (greedy by start)."""
    lanes = []
    for attempt in sorted(attempts, key=began_of):
        for lane in lanes:
            if finish_of(lane[-1], now) <= began_of(attempt):
                lane.append(attempt)
                break
        else:
            lanes.append([attempt])
    return lanes


def legend(top):
    items = [(f"<rect width='14' height='10' fill='{colour}'/>", kind)
             for kind, colour in PHASE_COLOURS.items()]
    items += [("<rect width='14' height='10' fill='#ccc' stroke='#d62728' stroke-width='2'/>",
               "failed"),
              ("<rect width='14' height='10' fill='#ccc' stroke='#999' stroke-width='2'/>",
               "revoked or left over"),
              ("<rect width='14' height='10' fill='#4e79a7'/><rect width='14' height='10' "
               "fill='url(#backup)'/>", "backup")]
    shown = []
    for number, (shape, text) in enumerate(items):
        x = LABEL_WIDTH + number * LEGEND_SPACING
        shown.append(f"<g transform='translate({x},{top + 6})'>{shape}"
                     f"<text x='18' y='10' font-size='11'>{text}</text></g>")
    return "".join(shown)


def began_of(attempt):
    """When it started running: its worker's own count where it sent one (our worker), else
    its delivery (a task may then have waited in the worker's queue)."""
    if attempt.get("ran") is not None and attempt["ended"] is not None:
        return max(attempt["started"], attempt["ended"] - attempt["ran"])
    return attempt["started"]


def bar(job, attempt, start, scale, y, suffix, logs=frozenset()):
    """The attempt's bar, from when it started running to its end (or now)."""
    finish = finish_of(attempt, job.get("now"))
    began = began_of(attempt)
    waited = began - attempt["started"]
    x = LABEL_WIDTH + (began - start) * scale
    width = max(2.0, (finish - began) * scale)
    colour = PHASE_COLOURS.get(attempt["kind"], "#777")
    stroke = OUTCOME_STROKES.get(attempt["state"], "none")
    title = (f"{attempt['task']}{' (backup)' if attempt['backup'] else ''} on worker "
             f"{attempt['worker']}: {attempt['state']}"
             f"{': ' + attempt['outcome'] if attempt['outcome'] else ''}, "
             f"ran {finish - began:.2f} s"
             f"{f' after {waited:.2f} s in the worker’s queue' if waited > 0.01 else ''}")
    shape = (f"<rect class='attempt {attempt['kind']} {attempt['state']}' "
             f"data-worker='{attempt['worker']}' x='{x:.1f}' y='{y}' width='{width:.1f}' "
             f"height='{BAR_HEIGHT}' fill='{colour}' stroke='{stroke}' stroke-width='2'>"
             f"<title>{html.escape(title)}</title></rect>")
    if attempt["backup"]:
        shape += (f"<rect x='{x:.1f}' y='{y}' width='{width:.1f}' height='{BAR_HEIGHT}' "
                  f"fill='url(#backup)'/>")
    log_file = attempt.get("log_file")
    if log_file and log_file in logs:
        name = urllib.parse.quote(os.path.basename(log_file))
        shape = f"<a class='log' href='/logs/{job['job_id']}/{name}{suffix}'>{shape}</a>"
    return shape
