"""The master's dashboard (--http-port): JSON API, pages and the timeline, over real HTTP."""
import http.client
import json
import re
import socket
import struct
import subprocess
import urllib.error
import urllib.request

import pytest

import helper
from conftest import (JOB_TIMEOUT, PYTHON, REPO, START_TIMEOUT, WORD_COUNT, free_master_port,
                      free_port, wait_until, write_files)
from mrlib.dashboard import MAX_CONNECTIONS, REQUEST_TIMEOUT
from support.localcluster import write_secret
from support.programs import script

pytestmark = pytest.mark.timeout(120)

SMALL_INPUT = {f"part-{n}": b"the quick brown fox jumps over the lazy dog\n" * (n + 1)
               for n in range(4)}
SECRET = "d" * 64
UNFINISHED_REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n"  # no blank line: the headers go on
FLOOD = 4 * MAX_CONNECTIONS
# Threads a master may run besides the dashboard's (its listeners, ticker, a handler or two).
OTHER_THREADS = 8
RESETS = 50
# What 50 resets may add to the master's log: its burst of rate-limited lines.
RESET_LOG_BYTES = helper.LOG_BURST * 200


def get(port, path, token=None):
    """(status, body bytes, content type) of GET path."""
    url = f"http://localhost:{port}{path}"
    if token:
        url += ("&" if "?" in url else "?") + f"token={token}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers["Content-Type"]


def secret_dashboard(make_cluster, tmp_path):
    """A master with a secret serving its dashboard; (cluster, the dashboard's token)."""
    secret = write_secret(tmp_path / "secret", SECRET)
    cluster = make_cluster(start=False, env={"MAPREDUCE_SECRET_FILE": str(secret)})
    cluster.http_port = free_port()
    cluster.start_master(extra=("--http-port", cluster.http_port))
    token = wait_until(lambda: re.search(r"dashboard on http://\S+\?token=(\w+)",
                                         cluster.master_log()), what="the dashboard's address")
    return cluster, token.group(1)


def settled_threads(cluster):
    """The master's thread count once it has served the dashboard and started all its
    threads (one may start after its port listens): the same in two looks in a row."""
    answered(cluster.http_port, "/api/jobs")
    looks = []

    def settled():
        looks.append(threads_of(cluster.master.pid))
        return len(looks) > 1 and looks[-1] == looks[-2]
    wait_until(settled, what="the master's threads to settle")
    return looks[-1]


def threads_of(pid):
    """The process's thread count, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


def unfinished_request(port):
    """A connection that sent the start of a request and then nothing."""
    sock = socket.create_connection(("localhost", port), timeout=5)
    sock.sendall(UNFINISHED_REQUEST)
    sock.setblocking(False)
    return sock


def closed_by_server(sock):
    """True once the server has closed the connection (EOF or reset)."""
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def answered(port, path):
    """Send a whole request and read to EOF: the server has accepted everyone before it."""
    with socket.create_connection(("localhost", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        while sock.recv(65536):
            pass


def reset_after_request_line(port):
    """Send a request line, then reset the connection (SO_LINGER 0)."""
    with socket.create_connection(("localhost", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def ask_as(port, host, path="/api/jobs", method="GET"):
    """(status, body, headers) of a request that names `host` in its Host header."""
    connection = http.client.HTTPConnection("localhost", port, timeout=10)
    try:
        connection.request(method, path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, response.read(), response.headers
    finally:
        connection.close()


def api(port, path, token=None):
    status, body, _ = get(port, path, token)
    assert status == 200, body
    return json.loads(body)


def test_the_api_and_the_timeline_show_every_attempt(dashboard, tmp_path):
    workers = dashboard.start_workers(2)
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    dashboard.run_job(*WORD_COUNT, inputs, tmp_path / "out", 4, 2)
    jobs = api(dashboard.http_port, "/api/jobs")["jobs"]
    assert [(j["job_id"], j["state"]) for j in jobs] == [(0, "succeeded")]
    job = api(dashboard.http_port, "/api/jobs/0")
    attempts = job["attempts"]
    assert sorted(a["task"] for a in attempts if a["kind"] == "map") == \
        [f"map task {n}" for n in range(4)]
    assert sorted(a["task"] for a in attempts if a["kind"] == "reduce") == \
        ["reduce task 0", "reduce task 1"]
    assert {a["worker"] for a in attempts} == {w.pid for w in workers}
    assert all(a["state"] == "succeeded" for a in attempts)
    lines = sum(data.count(b"\n") for data in SMALL_INPUT.values())
    assert job["counters"]["Map-Reduce Framework"]["Map input records"] == lines
    cluster = api(dashboard.http_port, "/api/cluster")
    assert sorted(w["pid"] for w in cluster["workers"]) == sorted(w.pid for w in workers)
    status, page, kind = get(dashboard.http_port, "/jobs/0")
    assert status == 200 and kind.startswith("text/html")
    bars = re.findall(rb"<rect class='attempt (\w+) (\w+)' data-worker='(\d+)'", page)
    assert sorted((k.decode(), int(w)) for k, _, w in bars) == \
        sorted((a["kind"], a["worker"]) for a in attempts)
    assert f"<td>Map input records</td><td>{lines}</td>".encode() in page
    status, index, _ = get(dashboard.http_port, "/")
    assert status == 200 and b"/jobs/0" in index and str(workers[0].pid).encode() in index


def test_a_failed_jobs_page_shows_the_cause_and_links_its_stderr(dashboard, tmp_path):
    dashboard.start_worker()
    mapper = script(tmp_path / "failing.sh", "cat >/dev/null\necho 'bad record 7' >&2\nexit 3\n")
    inputs = write_files(tmp_path / "in", {"only": b"x\n"})
    result = dashboard.send_job("--input", inputs, "--output", tmp_path / "out", "--mapper",
                                mapper, "--mappers", 1, "--max-attempts", 1, "--wait")
    assert result.returncode == 1
    status, page, _ = get(dashboard.http_port, "/jobs/0")
    assert b"Probable cause of failure" in page and b"bad record 7" in page
    links = re.findall(rb"href='(/logs/0/[^']+)'", page)
    assert len(links) == 2, page  # the cause's link and the failed attempt's bar
    assert re.search(rb"<a class='log' href='/logs/0/[^']+'><rect class='attempt map failed'",
                     page), page
    status, log, kind = get(dashboard.http_port, links[0].decode())
    assert status == 200 and log == b"bad record 7\n" and kind.startswith("text/plain")


@pytest.mark.parametrize("path", ["/api/jobs/99", "/jobs/7", "/nope", "/api/jobs/x",
                                  "/logs/0/../../../etc/passwd", "/logs/0/map-00000.attempt-1.log",
                                  "/logs/0/%2e%2e%2fsecret"])
def test_unknown_jobs_and_paths_are_404(dashboard, path):
    status, body, _ = get(dashboard.http_port, path)
    assert status == 404, body
    assert dashboard.master.poll() is None


def test_a_dashboard_port_in_use_stops_the_start_cleanly(make_cluster):
    cluster = make_cluster(start=False)
    with socket.create_server(("localhost", 0)) as taken:
        port = free_master_port()
        result = subprocess.run([PYTHON, str(REPO / "master.py"), str(port), "--http-port",
                                 str(taken.getsockname()[1])], cwd=cluster.workdir,
                                capture_output=True, timeout=30)
    assert result.returncode == 1
    assert b"cannot serve the dashboard" in result.stderr, result.stderr
    assert not (cluster.workdir / "var").exists(), "nothing touched before binding"


def test_with_a_secret_the_dashboard_needs_its_token(make_cluster, tmp_path):
    cluster, token = secret_dashboard(make_cluster, tmp_path)
    status, body, _ = get(cluster.http_port, "/api/jobs")
    assert status == 403, body
    assert get(cluster.http_port, "/api/jobs", "0" * 32)[0] == 403
    assert get(cluster.http_port, "/api/jobs", token)[0] == 200
    status, index, _ = get(cluster.http_port, "/", token)
    assert status == 200


def test_the_timeline_draws_lanes_for_attempts_a_worker_held_at_once():
    from mrlib import dashboard

    def attempt(number, started, ended):
        return {"attempt": number, "task": f"map task {number}", "kind": "map", "worker": 7,
                "worker_address": "h:1", "backup": number == 2, "state": "succeeded",
                "outcome": None, "sent": 0.0, "started": started, "ended": ended,
                "log_file": None}
    job = {"job_id": 0, "now": 10.0,
           "attempts": [attempt(0, 0.0, 4.0), attempt(1, 0.0, 8.0), attempt(2, 5.0, 6.0)]}
    svg = dashboard.timeline_svg(job, "")
    rows = sorted(float(y) for y in re.findall(r"class='attempt map succeeded' "
                                               r"data-worker='7' x='[\d.]+' y='([\d.]+)'", svg))
    assert len(rows) == 3 and len(set(rows)) == 2, svg  # two lanes: 0-4 then 5-6, and 0-8
    assert "url(#backup)" in svg


def test_a_running_job_shows_in_the_api_with_its_progress(dashboard, tmp_path):
    dashboard.start_worker()
    mapper = script(tmp_path / "slow.sh", f"sleep 1\nexec {WORD_COUNT[0]}\n")
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    client = dashboard.send_job_async("--input", inputs, "--output", tmp_path / "out",
                                      "--mapper", mapper, "--mappers", 4, "--wait")
    try:
        seen = set()
        wait_until(lambda: seen.add(progress_of(dashboard)) or len(seen - {None}) >= 2,
                   JOB_TIMEOUT, what="the dashboard to show the job advancing")
        assert client.wait(JOB_TIMEOUT) == 0
    finally:
        if client.poll() is None:
            client.kill()
        client.communicate()


def progress_of(cluster):
    jobs = api(cluster.http_port, "/api/jobs")["jobs"]
    running = [j for j in jobs if j["state"] == "running" and j["phase"] == "map"]
    return running[0]["tasks_done"] if running else None


@pytest.mark.parametrize("state, last_ended, renders", [
    ("succeeded", 3.0, 1),  # ended, every attempt too: rendered once
    ("running", 3.0, 3),  # its bars grow: rendered each time
    ("succeeded", None, 3),  # a losing copy still runs: its bar grows
])
def test_only_a_page_that_cannot_change_is_rendered_once(state, last_ended, renders):
    from mrlib import dashboard

    class Board:
        @staticmethod
        def get(job_id):
            return {"job_id": job_id, "state": state, "version": 5} if job_id == 0 else None

    attempts = [{"ended": 2.0}, {"ended": last_ended}]
    shown = dashboard.Dashboard("localhost", 0, Board(), lambda message: {"attempts": attempts},
                                "var")
    try:
        rendered = []
        for _ in range(3):
            page = shown.job_page(0, "html", lambda job: rendered.append(job) or b"page")
            assert page == b"page"
        assert len(rendered) == renders
        assert shown.job_page(1, "html", lambda job: b"page") is None
    finally:
        shown.stop()


def test_unfinished_requests_hold_few_threads_and_never_starve_the_master(make_cluster,
                                                                          tmp_path):
    """Many clients that never finish a request hold at most MAX_CONNECTIONS threads, the
    master's own port answers meanwhile, and each silent one is closed after REQUEST_TIMEOUT."""
    cluster, token = secret_dashboard(make_cluster, tmp_path)
    baseline = settled_threads(cluster)
    held = [unfinished_request(cluster.http_port) for _ in range(FLOOD)]
    try:
        answered(cluster.http_port, f"/api/jobs?token={token}")  # after every held one
        assert threads_of(cluster.master.pid) <= baseline + MAX_CONNECTIONS + OTHER_THREADS
        workers = cluster.send_job("--workers", timeout=10)
        assert workers.returncode == 0, workers.stderr
        wait_until(lambda: all(closed_by_server(sock) for sock in held),
                   REQUEST_TIMEOUT + START_TIMEOUT, what="the server to close every connection")
    finally:
        for sock in held:
            sock.close()
    assert get(cluster.http_port, "/api/jobs", token)[0] == 200  # their slots are free again
    assert "Traceback" not in cluster.master_log()


def test_resets_by_clients_cost_the_log_a_few_lines(dashboard):
    """Connections reset after their request line leave no traceback, and a bounded log."""
    baseline = settled_threads(dashboard)
    before = len(dashboard.master_log())
    for _ in range(RESETS):
        reset_after_request_line(dashboard.http_port)
    answered(dashboard.http_port, "/api/jobs")  # every reset connection was accepted before
    wait_until(lambda: threads_of(dashboard.master.pid) <= baseline,
               what="the dashboard's threads to end")
    log = dashboard.master_log()
    assert "Traceback" not in log, log[-3000:]
    assert len(log) - before <= RESET_LOG_BYTES, log[before:]
    assert get(dashboard.http_port, "/api/jobs")[0] == 200


def test_an_input_named_in_bytes_that_are_not_utf8_shows_on_every_page(dashboard, tmp_path):
    """A failed job whose input's name is not UTF-8 leaves every page readable, the name
    escaped."""
    dashboard.start_worker()
    inputs = tmp_path / "in"
    inputs.mkdir()
    with open(bytes(inputs) + b"/caf\xe9.txt", "wb") as handle:
        handle.write(b"x\n")
    mapper = script(tmp_path / "fail.sh", "cat >/dev/null\necho 'no good' >&2\nexit 1\n")
    result = dashboard.send_job("--input", inputs, "--output", tmp_path / "out", "--mapper",
                                mapper, "--reducer", "/bin/cat", "--max-attempts", 1, "--wait")
    assert result.returncode == 1, result.stderr
    for path in ("/", "/jobs/0", "/api/jobs", "/api/jobs/0"):
        status, body, _ = get(dashboard.http_port, path)
        assert status == 200, (path, body)
        assert b"caf\\udce9.txt" in body, (path, body)
    status, page, _ = get(dashboard.http_port, "/jobs/0")
    links = re.findall(rb"href='(/logs/0/[^']+)'", page)
    assert links, page
    for link in links:
        status, log, _ = get(dashboard.http_port, link.decode())
        assert status == 200 and b"no good" in log, log


@pytest.mark.parametrize("host, status", [
    ("localhost", 200), ("LOCALHOST.:{port}", 200), ("127.0.0.1:{port}", 200),
    ("[::1]:{port}", 200), ("{hostname}", 200),
    ("evil.example:{port}", 403), ("localhost.evil.example", 403), ("127.0.0.1.nip.io", 403),
])
def test_without_a_secret_only_hosts_no_other_site_can_name_are_answered(dashboard, host,
                                                                        status):
    """Without a secret, a Host that a page elsewhere could point at us (DNS rebinding) is
    refused with a 403 that says why."""
    host = host.format(port=dashboard.http_port, hostname=socket.gethostname())
    answer, body, _ = ask_as(dashboard.http_port, host)
    assert answer == status, body
    if status == 403:
        assert b"without a secret the dashboard answers only localhost" in body, body
    else:
        assert json.loads(body) == {"jobs": []}


def test_with_a_secret_any_host_is_answered_with_the_token(make_cluster, tmp_path):
    """With a secret the token is what counts: a proxy's or a LAN name is answered."""
    cluster, token = secret_dashboard(make_cluster, tmp_path)
    assert ask_as(cluster.http_port, "mapreduce.example")[0] == 403
    assert ask_as(cluster.http_port, "mapreduce.example", f"/api/jobs?token={token}")[0] == 200


@pytest.mark.parametrize("path, status", [("/", 200), ("/api/jobs", 200), ("/nope", 404)])
def test_head_answers_as_get_without_a_body(dashboard, path, status):
    """HEAD gives GET's status and headers, and no body."""
    with socket.create_connection(("localhost", dashboard.http_port), timeout=10) as sock:
        sock.sendall(f"HEAD {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        reply = b"".join(iter(lambda: sock.recv(65536), b""))
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.0 {status} ".encode()) and body == b"", reply
    got, page, kind = get(dashboard.http_port, path)
    assert f"Content-Type: {kind}\r\n".encode() in head, head
    assert f"Content-Length: {len(page)}\r\n".encode() in head + b"\r\n", head
