#!/usr/bin/env python3
"""A hostile-client run against `curfew-lab serve`: the abuses of issue 14,
items 7-11, each measured before, during and after.

How to run (from the workspace root, after `cargo build --release -p curfew-lab`):

    python3 benches/hostile.py                      # every abuse, ~5 minutes
    python3 benches/hostile.py --quick              # smaller counts, a smoke run
    python3 benches/hostile.py --only 10            # one item (7-11) ...
    python3 benches/hostile.py --only idle-spread   # ... or one abuse by name
    python3 benches/hostile.py --list               # the abuses and their flags
    python3 benches/hostile.py --server path/to/curfew-lab

Python 3 standard library only, Linux only (it reads /proc). Each abuse starts
its own `curfew-lab serve` on a free 127.0.0.1 port, with the flags the abuse
needs, and stops it afterwards (SIGINT, then SIGKILL; also on Ctrl-C or an
error). For each abuse it records, from /proc:

* connections: the server's TCP sockets other than its listener (summed over
  the process tree with `--processes`);
* RSS (VmRSS) and threads, summed over the process tree;
* `GET /hello` latency: probes on fresh connections from 127.0.9.1 (an
  address no abuse uses, so a per-IP cap on an attacker's address never
  touches them), a few before, one every 250 ms during, a few after.

Attackers bind source addresses inside 127.0.0.0/8: "1 IP" rows come from
one address, where the server's per-IP connection cap is the defence shown;
"N IPs" rows spread the same load over N addresses (at most 250 connections
each, under the default per-IP cap of 256) so that the total cap, the
timeouts and the descriptor shedding are what is measured.

Every loop is bounded in count and in time. The script raises its own
RLIMIT_NOFILE soft limit to the hard limit and bounds every connection count
by what that allows (it says so in the table). The `/dev/zero` abuses are
watched: a server whose tree passes `--rss-cap-mib` (default 2048) is killed
by the script, and the row says so.

A watcher thread notes every moment this process stood still for more than
a second (stopped, or starved of CPU by other work: the server most likely
stood still too, so the row's timings do not hold). Such a row is marked PAUSED and, with `--retries 1` (the default), run once
more; keep the machine otherwise idle for numbers worth quoting.

`--non-loopback-addr ADDR` (opt-in) adds a row whose server listens on ADDR,
an address of this machine outside 127.0.0.0/8, to ask `/metrics` from a
peer that is not loopback.

The output is Markdown: the command line and `uptime`, a table, and the
details of each abuse.
"""

import argparse
import collections
import errno
import os
import re
import resource
import select
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

PROBE_IP = "127.0.9.1"
PROBE_EVERY = 0.25
SAMPLE_EVERY = 0.25

# --------------------------------------------------------------------------
# /proc


def read_status(pid):
    """(RSS in KiB, threads) of one process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read()
    except OSError:
        return None
    rss = thr = 0
    for line in text.split(b"\n"):
        if line.startswith(b"VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith(b"Threads:"):
            thr = int(line.split()[1])
    return rss, thr


def tree_pids(root):
    """`root` and every live descendant of it."""
    children = collections.defaultdict(list)
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rfind(b")") + 2 :].split()
        children[int(rest[1])].append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        if os.path.exists(f"/proc/{p}"):
            out.append(p)
            todo.extend(children.get(p, ()))
    return out


def socket_inodes(pid):
    """The inodes of the sockets process `pid` holds."""
    out = set()
    d = f"/proc/{pid}/fd"
    try:
        names = os.listdir(d)
    except OSError:
        return out
    for n in names:
        try:
            link = os.readlink(f"{d}/{n}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(link[8:-1])
    return out


def tcp_sockets():
    """(local port, state, inode) of every TCP socket in /proc/net/tcp{,6}."""
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    yield int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]
        except OSError:
            pass


def tcp_conn_inodes(port):
    """Inodes of the non-listening TCP sockets whose local port is `port`."""
    return {inode for p, state, inode in tcp_sockets() if p == port and state != "0A"}


def listening(port):
    """Whether some socket listens on 127.0.0.1/0.0.0.0 `port` (TCP)."""
    return any(p == port and state == "0A" for p, state, _ in tcp_sockets())


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


# --------------------------------------------------------------------------
# HTTP on raw sockets


class Closed(Exception):
    """The server closed the connection before a whole response."""


class Result:
    """A request's outcome: an HTTP status, or a failure word."""

    def __init__(self, outcome, latency, lab=None, body=b"", t=0.0):
        self.outcome = outcome  # int status, or "timeout", "reset", "closed", ...
        self.latency = latency
        self.lab = lab  # the x-lab-outcome header
        self.body = body
        self.t = t

    @property
    def ok(self):
        return self.outcome == 200

    def short(self):
        if isinstance(self.outcome, int):
            return f"{self.outcome}" + (f" {self.lab}" if self.lab and self.lab != "ok" else "")
        return self.outcome


def parse_head(head):
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower().decode()] = v.strip().decode(errors="replace")
    return status, headers


def read_response(sock, buf, deadline):
    """Reads one response from `sock` (after `buf`, already read). Returns
    (status, headers, body, rest of the buffer)."""
    buf = bytearray(buf)
    while b"\r\n\r\n" not in buf:
        buf += recv_until(sock, deadline)
    head, _, buf = buf.partition(b"\r\n\r\n")
    status, headers = parse_head(bytes(head))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while b"0\r\n\r\n" not in buf:
            buf += recv_until(sock, deadline)
        body, _, buf = buf.partition(b"0\r\n\r\n")
        return status, headers, bytes(body), bytes(buf)
    n = int(headers.get("content-length", "0"))
    while len(buf) < n:
        buf += recv_until(sock, deadline)
    return status, headers, bytes(buf[:n]), bytes(buf[n:])


def recv_until(sock, deadline):
    left = deadline - time.monotonic()
    if left <= 0:
        raise socket.timeout()
    sock.settimeout(left)
    chunk = sock.recv(1 << 16)
    if not chunk:
        raise Closed()
    return chunk


def request_bytes(method, path, headers=None, body=b"", close=True):
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if close:
        lines.append("Connection: close")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def failure_word(e):
    if isinstance(e, socket.timeout):
        return "timeout"
    if isinstance(e, Closed):
        return "closed"
    if isinstance(e, ConnectionResetError):
        return "reset"
    if isinstance(e, ConnectionRefusedError):
        return "conn-refused"
    if isinstance(e, BrokenPipeError):
        return "broken-pipe"
    if isinstance(e, OSError) and e.errno:
        return errno.errorcode.get(e.errno, str(e.errno))
    return type(e).__name__


def http(addr, method, path, headers=None, body=b"", src=None, timeout=2.0):
    """One request on a fresh connection."""
    t0 = time.monotonic()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if src:
            s.bind((src, 0))
        s.settimeout(timeout)
        s.connect(addr)
        s.sendall(request_bytes(method, path, headers, body))
        status, hdrs, rbody, _ = read_response(s, b"", t0 + timeout)
        return Result(status, time.monotonic() - t0, hdrs.get("x-lab-outcome"), rbody, t0)
    except (OSError, Closed, ValueError, IndexError) as e:
        return Result(failure_word(e), time.monotonic() - t0, t=t0)
    finally:
        s.close()


# --------------------------------------------------------------------------
# The server under test

LIVE = set()


class Server:
    """`curfew-lab serve` as a child process on a free 127.0.0.1 port."""

    def __init__(self, binary, mode, flags=(), nofile=None, rss_cap_mib=None, host="127.0.0.1"):
        self.host = host
        # Probes come from PROBE_IP, except to a server on another address.
        self.probe_src = PROBE_IP if host.startswith("127.") else None
        self.binary = binary
        self.mode = mode
        self.flags = list(flags)
        self.nofile = nofile
        self.rss_cap_mib = rss_cap_mib
        self.proc = None
        self.port = None
        self.addr = None
        self.base_inodes = set()
        self.seen = set()
        self.log = collections.deque(maxlen=4000)
        self.log_counts = collections.Counter()
        self.killed = None  # why the script killed it, if it did
        self.started = None

    def argv(self, port="PORT"):
        return [
            self.binary,
            "serve",
            "--mode",
            self.mode,
            "--addr",
            f"{self.host}:{port}",
            *self.flags,
        ]

    def start(self):
        probe = socket.socket()
        probe.bind((self.host, 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.addr = (self.host, self.port)
        nofile = self.nofile

        def pre():
            if nofile:
                hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

        self.proc = subprocess.Popen(
            self.argv(self.port),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=pre,
        )
        LIVE.add(self)
        threading.Thread(target=self._read_log, daemon=True).start()
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}: " + "\n".join(list(self.log)[-20:])
                )
            r = http(self.addr, "GET", "/hello", src=self.probe_src, timeout=1.0)
            if r.ok:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not answering /hello after 20 s ({r.short()})")
            time.sleep(0.1)
        self.started = time.monotonic()
        time.sleep(0.3)
        inodes = set()
        for p in tree_pids(self.proc.pid):
            self.seen.add(p)
            inodes |= socket_inodes(p)
        # The listener and any non-TCP sockets: everything but connections.
        self.base_inodes = inodes - tcp_conn_inodes(self.port)

    def _read_log(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.log.append(line)
            low = line.lower()
            for word in ("shedding", "recycl", "kill", "drain", "memory", "timed out", "refus"):
                if word in low:
                    self.log_counts[word] += 1

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def listening(self):
        """Whether a socket still listens on the server's port."""
        return listening(self.port)

    def state(self):
        """A word on the process: "" if it serves, else what is wrong."""
        if self.killed:
            return self.killed
        if not self.alive():
            rc = self.proc.returncode if self.proc else None
            return f"SERVER EXITED (status {rc})"
        if not self.listening():
            return "SERVER STOPPED LISTENING (process alive, connections refused)"
        return ""

    def kill_hard(self, why):
        if self.killed is None:
            self.killed = why
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
        self._kill_leftovers()

    def _kill_leftovers(self):
        # Workers of `--processes` run in process groups of their own (and
        # die with the supervisor through PDEATHSIG); kill any left, by pid,
        # if it is still this binary.
        name = os.path.basename(self.binary).encode()
        for p in sorted(self.seen):
            if self.proc and p == self.proc.pid:
                continue
            argv = cmdline(p)
            if argv and os.path.basename(argv[0]) == name:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass

    def stop(self):
        if self.proc is None:
            return
        if self.alive():
            try:
                os.kill(self.proc.pid, signal.SIGINT)
            except OSError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                self.proc.wait(timeout=5)
        self._kill_leftovers()
        LIVE.discard(self)

    def metrics(self, src="127.0.9.2"):
        if self.probe_src is None:
            src = None
        r = http(self.addr, "GET", "/metrics", src=src, timeout=2.0)
        return r.body.decode(errors="replace") if r.ok else None


def metrics_value(text, name):
    if not text:
        return None
    m = re.search(rf"{re.escape(name)}:\s*(\d+)", text)
    return int(m.group(1)) if m else None


def cleanup_all():
    for s in list(LIVE):
        try:
            s.stop()
        except Exception:
            s.kill_hard("cleanup")


# --------------------------------------------------------------------------
# Sampling and probing


class Sample:
    __slots__ = ("t", "conns", "rss", "threads", "procs")

    def __init__(self, t, conns, rss, threads, procs):
        self.t, self.conns, self.rss, self.threads, self.procs = t, conns, rss, threads, procs


class Sampler(threading.Thread):
    """Samples the server's process tree every SAMPLE_EVERY seconds, and
    kills it if its RSS passes the server's `rss_cap_mib`."""

    def __init__(self, srv, every=SAMPLE_EVERY):
        super().__init__(daemon=True)
        self.srv = srv
        self.every = every
        self.samples = []
        self.halt = threading.Event()
        self.pid_times = {}  # pid -> (first seen, last seen)

    def sample(self):
        now = time.monotonic()
        if not self.srv.alive():
            return Sample(now, None, None, None, 0)
        pids = tree_pids(self.srv.proc.pid)
        rss = thr = 0
        inodes = set()
        for p in pids:
            self.srv.seen.add(p)
            first = self.pid_times.get(p, (now, now))[0]
            self.pid_times[p] = (first, now)
            st = read_status(p)
            if st:
                rss += st[0]
                thr += st[1]
            inodes |= socket_inodes(p)
        s = Sample(now, len(inodes - self.srv.base_inodes), rss / 1024.0, thr, len(pids))
        cap = self.srv.rss_cap_mib
        if cap and s.rss > cap:
            self.srv.kill_hard(
                f"killed by the script at {s.rss:.0f} MiB (cap {cap} MiB), "
                f"{now - self.srv.started:.1f} s after start"
            )
        return s

    def run(self):
        while not self.halt.wait(self.every):
            self.samples.append(self.sample())

    def stop(self):
        self.halt.set()
        self.join(timeout=10)

    def window(self, t0, t1):
        return [s for s in self.samples if t0 <= s.t <= t1 and s.conns is not None]


class PauseWatch(threading.Thread):
    """Ticks every 0.1 s and records each tick more than 1 s late: this
    process was stopped (SIGSTOP) or starved of CPU for that long, and the
    server most likely with it, so the row's timings do not hold."""

    def __init__(self):
        super().__init__(daemon=True)
        self.halt = threading.Event()
        self.pauses = []

    def run(self):
        last = time.monotonic()
        while not self.halt.wait(0.1):
            now = time.monotonic()
            if now - last > 1.0:
                self.pauses.append(now - last - 0.1)
            last = now

    def stop(self):
        self.halt.set()
        self.join(timeout=5)


class Prober(threading.Thread):
    """`GET /hello` from PROBE_IP every PROBE_EVERY seconds until stopped."""

    def __init__(self, srv, timeout):
        super().__init__(daemon=True)
        self.srv, self.timeout = srv, timeout
        self.results = []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            r = http(self.srv.addr, "GET", "/hello", src=self.srv.probe_src, timeout=self.timeout)
            self.results.append(r)
            self.halt.wait(max(0.0, PROBE_EVERY - r.latency))

    def stop(self):
        self.halt.set()
        self.join(timeout=self.timeout + 5)


def probe_n(srv, n, timeout):
    out = []
    for _ in range(n):
        out.append(http(srv.addr, "GET", "/hello", src=srv.probe_src, timeout=timeout))
        time.sleep(0.05)
    return out


def fmt_s(x):
    if x is None:
        return "-"
    return f"{x * 1e3:.0f} ms" if x < 1 else f"{x:.2f} s"


def worst(results, timeout):
    if not results:
        return "-"
    w = max(r.latency for r in results)
    if any(r.outcome == "timeout" for r in results):
        return f">{timeout:g} s"
    return fmt_s(w)


def failures(results):
    bad = [r for r in results if not r.ok]
    if not results:
        return "-"
    if not bad:
        return f"0/{len(results)}"
    c = collections.Counter(r.short() for r in bad)
    return f"{len(bad)}/{len(results)} (" + ", ".join(f"{k}×{v}" for k, v in c.most_common()) + ")"


def outcomes(results):
    c = collections.Counter(r.short() for r in results)
    return ", ".join(f"{k}×{v}" for k, v in c.most_common()) or "-"


# --------------------------------------------------------------------------
# Client helpers for many connections


def ip_pool(prefix, n):
    """`n` source addresses 127.<prefix>.x.y, avoiding .0 and .255."""
    out = []
    i = 0
    while len(out) < n:
        a, b = divmod(i, 254)
        out.append(f"127.{prefix}.{a}.{b + 1}")
        i += 1
    return out


class Conns:
    """Many client connections watched by one selector: records when the
    server closes each one (or answers it)."""

    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self.open = {}  # fd -> [sock, src, t_open]
        self.closed = []  # (src, seconds after open, what)
        self.connect_failures = collections.Counter()

    def connect(self, addr, src, timeout=2.0):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((src, 0))
            s.settimeout(timeout)
            s.connect(addr)
        except OSError as e:
            s.close()
            self.connect_failures[failure_word(e)] += 1
            return None
        s.setblocking(False)
        self.open[s.fileno()] = [s, src, time.monotonic()]
        self.sel.register(s, selectors.EVENT_READ)
        return s

    def open_many(self, addr, sources, n, deadline, on_open=None):
        """Opens up to `n` connections, round robin over `sources`, until
        `deadline`; stops early after 20 connect failures in a row."""
        in_a_row = 0
        for i in range(n):
            if time.monotonic() > deadline:
                self.connect_failures["open deadline"] += n - i
                break
            s = self.connect(addr, sources[i % len(sources)])
            if s is None:
                in_a_row += 1
                if in_a_row >= 20:
                    self.connect_failures["gave up after 20 failures in a row"] += n - i - 1
                    break
                continue
            in_a_row = 0
            if on_open:
                on_open(s)
            if i % 256 == 255:
                self.poll(0)
        return len(self.open) + len(self.closed)

    def _close(self, fd, what):
        s, src, t = self.open.pop(fd)
        self.closed.append((src, time.monotonic() - t, what))
        try:
            self.sel.unregister(s)
        except (KeyError, ValueError):
            pass
        s.close()

    def poll(self, timeout):
        for key, _ in self.sel.select(timeout):
            fd = key.fd
            if fd not in self.open:
                continue
            s = self.open[fd][0]
            try:
                data = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError as e:
                self._close(fd, failure_word(e))
                continue
            if not data:
                self._close(fd, "closed")
            else:
                what = "data"
                if data.startswith(b"HTTP/1."):
                    what = "answered " + data.split(b" ", 2)[1].decode(errors="replace")
                self._close(fd, what)

    def send_all(self, data):
        for fd in list(self.open):
            s = self.open[fd][0]
            try:
                s.send(data)
            except BlockingIOError:
                pass
            except OSError as e:
                self._close(fd, failure_word(e))

    def hold(self, seconds, every=None, data=None, until_all_closed=True):
        end = time.monotonic() + seconds
        next_send = time.monotonic() + (every or 0)
        while time.monotonic() < end and (self.open or not until_all_closed):
            self.poll(0.2)
            if every and time.monotonic() >= next_send:
                self.send_all(data)
                next_send += every

    def close_all(self):
        for fd in list(self.open):
            s = self.open.pop(fd)[0]
            try:
                self.sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()
        self.sel.close()

    def summary(self, held):
        quick = [c for c in self.closed if c[1] < 1.0]
        late = [c for c in self.closed if c[1] >= 1.0]
        parts = []
        if quick:
            kinds = collections.Counter(c[2] for c in quick)
            parts.append(
                f"{len(quick)} closed by the server within 1 s ("
                + ", ".join(f"{k}×{v}" for k, v in kinds.items())
                + ")"
            )
        if late:
            ts = sorted(c[1] for c in late)
            kinds = collections.Counter(c[2] for c in late)
            parts.append(
                f"{len(late)} closed after {ts[0]:.1f}-{ts[-1]:.1f} s (median "
                f"{statistics.median(ts):.1f} s; "
                + ", ".join(f"{k}×{v}" for k, v in kinds.items())
                + ")"
            )
        if self.open:
            parts.append(f"{len(self.open)} still open after {held:.0f} s")
        if self.connect_failures:
            parts.append(
                "connect failures: "
                + ", ".join(f"{k}×{v}" for k, v in self.connect_failures.items())
            )
        return "; ".join(parts)


# --------------------------------------------------------------------------
# The abuses


class Ctx:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.binary = args.server
        self.probe_timeout = args.probe_timeout
        self.iters_per_s = args.spin_iters_per_sec
        self.fd_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

    def fd_budget(self):
        """Connections this process can still open."""
        used = len(os.listdir("/proc/self/fd"))
        return max(0, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - used - 200)

    def spin_iters(self, seconds):
        if self.iters_per_s is None:
            self.iters_per_s = calibrate(self)
        return int(self.iters_per_s * seconds)


def calibrate(ctx):
    """Iterations per second of the lab's infinite-loop handler, measured on
    a tokio-mode server (where it runs to the end)."""
    srv = Server(ctx.binary, "tokio")
    srv.start()
    try:
        n = 200_000_000
        best = None
        for _ in range(3):
            r = http(srv.addr, "POST", "/attack/infinite-loop?form=inline", body=str(n).encode(), timeout=30)
            if r.ok:
                best = r.latency if best is None else min(best, r.latency)
        if best is None:
            raise RuntimeError("calibration failed: the tokio server did not run the loop")
        rate = n / best
        print(f"spin calibration: {n:,} iterations in {best:.3f} s -> {rate / 1e9:.2f} G iterations/s", file=sys.stderr)
        return rate
    finally:
        srv.stop()


def poison(srv, ctx, client=None, src=None, seconds=0.5):
    headers = {"x-client-id": client} if client is not None else {}
    body = str(ctx.spin_iters(seconds)).encode()
    return http(srv.addr, "POST", "/attack/infinite-loop?form=inline", headers, body, src=src, timeout=10)


def hello_as(srv, client=None, src=None):
    headers = {"x-client-id": client} if client is not None else {}
    return http(srv.addr, "GET", "/hello", headers, src=src, timeout=3)


def wait_handlers_done(srv, max_s):
    """Waits until `/metrics` says no handler body is running."""
    end = time.monotonic() + max_s
    last = None
    while time.monotonic() < end:
        if srv.state():
            return None
        last = metrics_value(srv.metrics(), "handlers running")
        if last == 0:
            return 0
        time.sleep(0.5)
    return last


# item 7 ------------------------------------------------------------------


def abuse_loops(n):
    def attack(ctx, srv, sampler):
        spin_s = 0.5 if ctx.quick else 1.0
        iters = ctx.spin_iters(spin_s)
        results = [None] * n

        def one(i):
            results[i] = http(
                srv.addr,
                "POST",
                "/attack/infinite-loop?form=inline",
                {"x-client-id": f"loop-{i}"},
                str(iters).encode(),
                timeout=60,
            )

        t0 = time.monotonic()
        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(0.1, t0 + 65 - time.monotonic()))
        answered = time.monotonic() - t0
        res = [r for r in results if r is not None]
        # The loops go on spinning on written-off threads: the window lasts
        # until they are done (bounded).
        bound = (n * spin_s) / 2 * 3 + 10
        left = wait_handlers_done(srv, min(bound, 40 if ctx.quick else 90))
        took = time.monotonic() - t0
        lat = sorted(r.latency for r in res)
        m = srv.metrics() or ""
        counters = ""
        if m:
            counters = "; event threads: " + ", ".join(
                f"{k} {metrics_value(m, k)}" for k in ("hijacked_total", "timeouts", "queue_timeouts")
            )
        first_bad = next((r for r in sorted(res, key=lambda r: r.t) if not isinstance(r.outcome, int)), None)
        notes = [
            "loop requests, by start time: "
            + ", ".join(f"{r.t - t0:.2f}s+{fmt_s(r.latency)} {r.short()}" for r in sorted(res, key=lambda r: r.t))
        ]
        return {
            "bound": (
                f"{n} loops ({iters:,} iterations, ~{spin_s:g} s each): {outcomes(res)}, "
                f"answered in {fmt_s(lat[0]) if lat else '-'}-{fmt_s(lat[-1]) if lat else '-'}; "
                + (f"handlers running {left} after {took:.1f} s" if left is not None else f"no /metrics after {took:.1f} s")
                + counters
                + (f"; first loop request without an answer: {first_bad.short()}" if first_bad else "")
            ),
            "notes": notes,
        }

    return attack


# item 8 ------------------------------------------------------------------


def flood_ids(addr, n, deadline, prefix="flood", conns=4, batch=100):
    """`n` GET /hello with distinct x-client-ids, pipelined on `conns`
    keep-alive connections. Returns (status counts, requests answered)."""
    counts = collections.Counter()
    lock = threading.Lock()

    def worker(k, lo, hi):
        local = collections.Counter()
        i = lo
        s, buf = None, b""
        while i < hi and time.monotonic() < deadline:
            try:
                if s is None:
                    s = socket.socket()
                    s.bind((f"127.0.7.{k + 1}", 0))
                    s.settimeout(5)
                    s.connect(addr)
                    buf = b""
                j = min(hi, i + batch)
                s.sendall(
                    b"".join(
                        b"GET /hello HTTP/1.1\r\nHost: x\r\nx-client-id: %s-%d\r\n\r\n" % (prefix.encode(), m)
                        for m in range(i, j)
                    )
                )
                for _ in range(j - i):
                    status, _, _, buf = read_response(s, buf, time.monotonic() + 5)
                    local[status] += 1
                    i += 1
            except (OSError, Closed, ValueError, IndexError) as e:
                local[failure_word(e)] += 1
                if s is not None:
                    s.close()
                s = None
                time.sleep(0.05)
        if s is not None:
            s.close()
        with lock:
            counts.update(local)

    per = (n + conns - 1) // conns
    threads = [
        threading.Thread(target=worker, args=(k, k * per, min(n, (k + 1) * per)), daemon=True)
        for k in range(conns)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.1, deadline + 10 - time.monotonic()))
    return counts


def abuse_ids(n):
    def attack(ctx, srv, sampler):
        notes = []
        # A client struck out before the flood: is it still refused after?
        early = [poison(srv, ctx, "early-striker") for _ in range(3)]
        early_hello = hello_as(srv, "early-striker")
        notes.append(f"before the flood, `early-striker` poisons: {[r.short() for r in early]}, its /hello {early_hello.short()}")
        t0 = time.monotonic()
        cap = 20 if ctx.quick else 90
        counts = flood_ids(srv.addr, n, t0 + cap)
        took = time.monotonic() - t0
        done = sum(v for k, v in counts.items() if isinstance(k, int))
        notes.append(
            f"flood: {done:,} of {n:,} ids answered in {took:.1f} s (cap {cap} s): "
            + ", ".join(f"{k}×{v}" for k, v in counts.most_common())
        )
        m = srv.metrics()
        tracked = m.count("ClientMetrics {") if m else None
        evicted = metrics_value(m, "evicted_clients")
        after_early = hello_as(srv, "early-striker")
        fresh = [poison(srv, ctx, "fresh-after-flood") for _ in range(3)]
        fresh_hello = hello_as(srv, "fresh-after-flood")
        notes.append(f"after: `early-striker` /hello {after_early.short()}")
        notes.append(f"after: fresh id poisons {[r.short() for r in fresh]}, its /hello {fresh_hello.short()}")
        # The policy works when the fresh id, having spent its strikes, is
        # refused as a client (429) on a route it never poisoned. Its own
        # last poisoned request may instead meet the route limit (503
        # refused) while earlier poisoned polls on that route still spin.
        policy_ok = fresh_hello.outcome == 429
        kept = after_early.outcome == 429
        return {
            "bound": (
                f"{done:,} ids in {took:.1f} s; table holds {tracked} entries, {evicted} evicted; "
                f"fresh poisoner: {' '.join(r.short() for r in fresh)} then /hello {fresh_hello.short()} "
                f"({'policy works' if policy_ok else 'POLICY NOT REFUSING'}); "
                f"early striker {'still refused' if kept else 'NO LONGER REFUSED: ' + after_early.short()}"
            ),
            "notes": notes,
        }

    return attack


# item 9 ------------------------------------------------------------------


def abuse_spoof(trusted):
    def attack(ctx, srv, sampler):
        notes = []
        atk = "127.0.3.1"
        v1 = [poison(srv, ctx, "victim", src=atk) for _ in range(2)]
        v2 = [poison(srv, ctx, "127.0.0.1", src=atk) for _ in range(2)]
        v3 = poison(srv, ctx, "ip:127.0.0.1", src=atk)
        notes.append(f"attacker {atk} poisons as `victim`: {[r.short() for r in v1]}")
        notes.append(f"attacker {atk} poisons as `127.0.0.1`: {[r.short() for r in v2]}")
        notes.append(f"attacker {atk} poisons as `ip:127.0.0.1`: {v3.short()}")
        victim = hello_as(srv, "victim", src="127.0.3.2")
        plain = hello_as(srv, None, src="127.0.0.1")
        attacker = hello_as(srv, None, src=atk)
        notes.append(f"victim (127.0.3.2, `x-client-id: victim`) /hello: {victim.short()}")
        notes.append(f"header-less client from 127.0.0.1 /hello: {plain.short()}")
        notes.append(f"the attacker's own address, header-less /hello: {attacker.short()}")
        m = srv.metrics(src="127.0.0.1") or ""
        listed = "loopback peers only" not in m
        ids = sorted(set(re.findall(r'"((?:id|ip):[^"]*)"', m)))
        notes.append(f"/metrics from a loopback peer lists clients: {listed} {ids[:8]}")
        if ctx.args.non_loopback_addr:
            notes.append("/metrics from a non-loopback peer: see the `metrics-public` row")
        if trusted:
            verdict = (
                f"trusted header: `victim` {victim.short()} (a trusted id is the client's claim), "
                f"header-less 127.0.0.1 {plain.short()} ({'namespaces apart' if plain.ok else 'NAMESPACES MIXED'})"
            )
        else:
            verdict = (
                f"header ignored: victim {victim.short()}, header-less 127.0.0.1 {plain.short()}, "
                f"attacker's own IP {attacker.short()}"
                + ("" if victim.ok and plain.ok and attacker.outcome == 429 else " (UNEXPECTED)")
            )
        return {"bound": verdict + f"; /metrics to loopback lists {len(ids)} clients", "notes": notes}

    return attack


def abuse_metrics_public():
    """`/metrics` from a non-loopback peer: the server listens on that
    address (only with --non-loopback-addr)."""

    def attack(ctx, srv, sampler):
        poison(srv, ctx, None)  # a client to list
        r = http(srv.addr, "GET", "/metrics", timeout=3)
        body = r.body.decode(errors="replace")
        hidden = "loopback peers only" in body
        ids = re.findall(r'"((?:id|ip):[^"]*)"', body)
        return {
            "bound": f"/metrics from {ctx.args.non_loopback_addr}: {r.short()}, "
            + ("clients hidden" if hidden else f"CLIENTS LISTED: {ids[:5]}"),
        }

    return attack


# item 10 -----------------------------------------------------------------


def abuse_trickle(n, nips, head=b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Trickle: ", trickle=None):
    """`n` connections that send `head`, then one byte a second: of
    `trickle` while it lasts, else `a` (a header value that never ends)."""

    def attack(ctx, srv, sampler):
        want = min(n, ctx.fd_budget())
        c = Conns()
        sources = ip_pool(5, nips) if nips > 1 else ["127.0.0.1"]
        t0 = time.monotonic()
        opened = c.open_many(srv.addr, sources, want, t0 + 30, on_open=lambda s: s.send(head))
        hold = 14.0 if not ctx.quick else 12.0
        end = time.monotonic() + hold
        k = 0
        next_send = time.monotonic() + 1.0
        while time.monotonic() < end and c.open:
            c.poll(0.2)
            if time.monotonic() >= next_send:
                if trickle is None:
                    c.send_all(b"a")
                elif k < len(trickle):
                    c.send_all(trickle[k : k + 1])
                k += 1
                next_send += 1.0
        held = time.monotonic() - t0
        summary = c.summary(held)
        c.close_all()
        lim = f" (client fd budget {want})" if want < n else ""
        return {"bound": f"{opened} trickling{lim}: {summary}"}

    return attack


def abuse_content_length():
    def attack(ctx, srv, sampler):
        groups = [
            ("Content-Length 10^18 + 3 bytes", 10**18, 4),
            ("Content-Length 10^6 + 3 bytes", 10**6, 4),
        ]
        results = collections.defaultdict(list)

        def one(label, cl):
            t0 = time.monotonic()
            s = socket.socket()
            try:
                s.bind(("127.0.2.1", 0))
                s.settimeout(20)
                s.connect(srv.addr)
                s.sendall(
                    b"POST /attack/infinite-loop HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\nabc" % cl
                )
                status, hdrs, _, _ = read_response(s, b"", t0 + 20)
                results[label].append((time.monotonic() - t0, f"{status}"))
            except (OSError, Closed, ValueError) as e:
                results[label].append((time.monotonic() - t0, failure_word(e)))
            finally:
                s.close()

        threads = [
            threading.Thread(target=one, args=(label, cl), daemon=True) for label, cl, k in groups for _ in range(k)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=25)
        parts = []
        for label, _, _ in groups:
            rs = results[label]
            ts = [t for t, _ in rs]
            kinds = collections.Counter(w for _, w in rs)
            parts.append(
                f"{label}: " + ", ".join(f"{k}×{v}" for k, v in kinds.items()) + f" after {fmt_s(min(ts))}-{fmt_s(max(ts))}"
                if rs
                else f"{label}: no result"
            )
        return {"bound": "; ".join(parts)}

    return attack


def abuse_idle(n, nips, hold, reopen=False):
    def attack(ctx, srv, sampler):
        want = min(n, ctx.fd_budget())
        c = Conns()
        sources = ip_pool(5, nips) if nips > 1 else ["127.0.0.1"]
        t0 = time.monotonic()
        opened = c.open_many(srv.addr, sources, want, t0 + 25)
        t_open = time.monotonic() - t0
        peak_client = len(c.open)
        reopened = 0
        end = time.monotonic() + hold
        if reopen:
            # A persistent attacker: every connection the server closes is
            # opened again (bounded by the hold time).
            while time.monotonic() < end:
                c.poll(0.2)
                gap = want - len(c.open)
                for i in range(min(gap, 2000)):
                    if c.connect(srv.addr, sources[(reopened + i) % len(sources)], timeout=1.0):
                        reopened += 1
        else:
            c.hold(hold)
        held = time.monotonic() - t0
        summary = c.summary(held)
        c.close_all()
        lim = f" (of {n} asked: client fd budget)" if want < n else ""
        extra = f"; {reopened} reopened" if reopen else ""
        return {
            "bound": f"{opened} opened{lim} in {t_open:.1f} s, {peak_client} open at once on the client side: {summary}{extra}"
        }

    return attack


# item 11 -----------------------------------------------------------------


def abuse_uploads(k, size):
    def attack(ctx, srv, sampler):
        results = [None] * k
        # The body is not a decimal count, so the infinite-loop handler
        # refuses it at once (422) after the body is read: what is measured
        # is the bodies held in memory.
        chunk = b"x" * (1 << 18)
        deadline = time.monotonic() + 90

        def one(i):
            t0 = time.monotonic()
            s = socket.socket()
            sent = 0
            try:
                s.bind(("127.0.0.1", 0))
                s.settimeout(30)
                s.connect(srv.addr)
                s.sendall(
                    b"POST /attack/infinite-loop?form=inline HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size
                )
                try:
                    while sent < size and time.monotonic() < deadline:
                        # An early answer (503 before the body is read)
                        # ends the upload.
                        if select_readable(s):
                            break
                        part = chunk[: min(len(chunk), size - sent)]
                        s.sendall(part)
                        sent += len(part)
                except OSError as e:
                    send_error = failure_word(e)
                else:
                    send_error = None
                try:
                    status, hdrs, _, _ = read_response(s, b"", time.monotonic() + 30)
                    what = f"{status}" + (f" {hdrs.get('x-lab-outcome')}" if hdrs.get("x-lab-outcome") else "")
                except (OSError, Closed, ValueError) as e:
                    what = send_error or failure_word(e)
                results[i] = (time.monotonic() - t0, what, sent)
            except (OSError, Closed, ValueError) as e:
                results[i] = (time.monotonic() - t0, failure_word(e), sent)
            finally:
                s.close()

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(k)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(0.1, deadline + 35 - time.monotonic()))
        rs = [r for r in results if r]
        kinds = collections.Counter(r[1] for r in rs)
        full = sum(1 for r in rs if r[2] == size)
        ts = [r[0] for r in rs]
        return {
            "bound": (
                f"{k} × {size / 1e6:.0f} MB: " + ", ".join(f"{k_}×{v}" for k_, v in kinds.items())
                + f"; {full} bodies sent whole; answered after {fmt_s(min(ts))}-{fmt_s(max(ts))}"
            ),
            "notes": [
                "uploads: "
                + ", ".join(f"{r[1]} after {fmt_s(r[0])} ({r[2] / 1e6:.1f} MB sent)" for r in sorted(rs))
            ],
        }

    return attack


def select_readable(s):
    r, _, _ = select.select([s], [], [], 0)
    return bool(r)


def abuse_devzero(hold):
    def attack(ctx, srv, sampler):
        t0 = time.monotonic()
        pids0 = set(tree_pids(srv.proc.pid))
        r = http(srv.addr, "POST", "/attack/read-path", body=b"/dev/zero", src="127.0.4.1", timeout=10)
        end = t0 + hold
        while time.monotonic() < end and srv.alive():
            time.sleep(0.25)
        pids1 = set(tree_pids(srv.proc.pid)) if srv.alive() else set()
        gone = sorted(pids0 - pids1)
        new = sorted(pids1 - pids0)
        peak = max((s.rss for s in sampler.window(t0, time.monotonic())), default=None)
        what = f"read-path /dev/zero answered {r.short()} after {fmt_s(r.latency)}; tree RSS peak {peak:.0f} MiB" if peak else ""
        if srv.killed:
            what += f"; UNBOUNDED: {srv.killed}"
        else:
            what += f"; processes ended {len(gone)}, started {len(new)} in {hold:.0f} s"
        lines = [
            re.sub(r"\x1b\[[0-9;]*m", "", line)
            for line in srv.log
            if re.search(r"recycl|drain|kill|memory|rss|died", line, re.I)
        ]
        return {"bound": what, "notes": [f"server log: `{line[:300]}`" for line in lines[:8]]}

    return attack


# --------------------------------------------------------------------------
# The plan


class Abuse:
    def __init__(
        self, name, item, clients, mode, flags, attack, nofile=None, rss_cap=None, settle=15, sample_every=SAMPLE_EVERY
    ):
        self.name, self.item, self.clients = name, item, clients
        self.mode, self.flags, self.attack = mode, flags, attack
        self.nofile, self.rss_cap, self.settle = nofile, rss_cap, settle
        self.sample_every = sample_every


def plan(ctx):
    q = ctx.quick
    trust = ["--trust-client-header"]
    cap = ctx.args.rss_cap_mib
    rss_limit = ctx.args.rss_limit_mib
    idle_n = 2000 if q else 20000
    out = [
        Abuse("loops10", 7, "1 IP, 10 ids", "curfew", trust, abuse_loops(10)),
        Abuse("loops50", 7, f"1 IP, {20 if q else 50} ids", "curfew", trust, abuse_loops(20 if q else 50)),
        Abuse("ids1100", 8, "4 conns, 1,100 ids", "curfew-policy", trust, abuse_ids(1100)),
        Abuse("ids100k", 8, f"4 conns, {10000 if q else 100000:,} ids", "curfew-policy", trust, abuse_ids(10000 if q else 100000)),
        Abuse("spoof", 9, "1 IP spoofing", "curfew-policy", [], abuse_spoof(False)),
        Abuse("spoof-trusted", 9, "1 IP spoofing", "curfew-policy", trust, abuse_spoof(True)),
        Abuse("trickle-ip", 10, f"1 IP, {500 if q else 5000} conns", "curfew", [], abuse_trickle(500 if q else 5000, 1)),
        Abuse("trickle-spread", 10, "20 IPs", "curfew", [], abuse_trickle(500 if q else 5000, 20)),
        Abuse(
            "trickle-h2-preface",
            10,
            "1 IP, 200 conns",
            "curfew",
            [],
            # The HTTP/2 preface, a byte a second: the server cannot tell
            # HTTP/1 from HTTP/2 until it has all 24 bytes.
            abuse_trickle(200, 1, head=b"P", trickle=b"RI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        ),
        Abuse("content-length", 10, "1 IP, 8 conns", "curfew", [], abuse_content_length()),
        Abuse("idle-ip", 10, "1 IP", "curfew", [], abuse_idle(1000, 1, 5 if q else 13)),
        Abuse(
            "idle-reaper",
            10,
            "1 IP, --idle-timeout 5s",
            "curfew",
            ["--idle-timeout", "5s"],
            abuse_idle(1000, 1, 16),
        ),
        Abuse("idle-spread", 10, f"{idle_n // 250} IPs", "curfew", [], abuse_idle(idle_n, idle_n // 250, 8 if q else 13)),
        Abuse(
            "idle-spread-reopen",
            10,
            f"{idle_n // 250} IPs, reconnecting",
            "curfew",
            [],
            abuse_idle(idle_n, idle_n // 250, 8 if q else 13, reopen=True),
        ),
        Abuse(
            "idle-fd",
            10,
            "16 IPs, server nofile 2048",
            "curfew",
            [],
            abuse_idle(4000, 16, 5 if q else 13),
            nofile=2048,
        ),
        Abuse("uploads", 11, "1 IP, 12 conns", "curfew", [], abuse_uploads(12, 16_000_000 if q else 66_000_000)),
        Abuse(
            "devzero-plain",
            11,
            "1 request, 1 process",
            "curfew",
            [],
            abuse_devzero(6),
            rss_cap=cap,
            settle=3,
            sample_every=0.05,
        ),
        Abuse(
            "devzero-rss",
            11,
            f"1 request, --processes 1 --rss-limit-mib {rss_limit}",
            "curfew",
            ["--processes", "1", "--rss-limit-mib", str(rss_limit)],
            abuse_devzero(8 if q else 12),
            rss_cap=cap,
            settle=5,
            sample_every=0.05,
        ),
    ]
    if ctx.args.non_loopback_addr:
        out.append(
            Abuse(
                "metrics-public",
                9,
                f"peer {ctx.args.non_loopback_addr}",
                "curfew-policy",
                [],
                abuse_metrics_public(),
            )
        )
    return out


def run_abuse(ctx, ab):
    flags = list(ab.flags)
    # The metrics-public row (opt-in) listens on the non-loopback address.
    host = ctx.args.non_loopback_addr if ab.name == "metrics-public" else "127.0.0.1"
    srv = Server(ctx.binary, ab.mode, flags, nofile=ab.nofile, rss_cap_mib=ab.rss_cap, host=host)
    row = {"abuse": f"{ab.item}: {ab.name}", "clients": ab.clients, "cmd": " ".join(srv.argv())}
    print(f"== {ab.name}: {row['cmd']}", file=sys.stderr, flush=True)
    pauses = PauseWatch()
    pauses.start()
    srv.start()
    sampler = Sampler(srv, ab.sample_every)
    try:
        sampler.start()
        b = sampler.sample()
        pb = probe_n(srv, 3, ctx.probe_timeout)
        prober = Prober(srv, ctx.probe_timeout)
        t0 = time.monotonic()
        prober.start()
        try:
            info = ab.attack(ctx, srv, sampler)
        finally:
            prober.stop()
        t1 = time.monotonic()
        # After: wait (bounded) for the connections to close and the
        # handlers to end.
        end = time.monotonic() + ab.settle
        while time.monotonic() < end and not srv.state():
            s = sampler.sample()
            if s.conns is not None and s.conns <= b.conns:
                running = metrics_value(srv.metrics(), "handlers running")
                if running in (0, None):
                    break
            time.sleep(0.5)
        time.sleep(0.5)
        a = sampler.sample()
        pa = probe_n(srv, 3, ctx.probe_timeout) if srv.alive() else []
        win = sampler.window(t0, t1) + [b]
        during = prober.results
        row.update(
            conns=(b.conns, max(s.conns for s in win), a.conns),
            rss=(b.rss, max(s.rss for s in win), a.rss),
            threads=(b.threads, max(s.threads for s in win), a.threads),
            hello=(worst(pb, ctx.probe_timeout), worst(during, ctx.probe_timeout), worst(pa, ctx.probe_timeout)),
            failures=failures(during),
            failures_after=failures(pa) if pa else "server gone",
            bound=info.get("bound", ""),
            notes=info.get("notes", []),
            seconds=t1 - t0,
            killed=srv.killed,
            during_ok_after_first_failure=recovery(during),
        )
        pauses.stop()
        if pauses.pauses:
            row["paused"] = sum(pauses.pauses)
            row["bound"] = (
                f"PAUSED: this run stood still {len(pauses.pauses)} time(s), {sum(pauses.pauses):.1f} s in all "
                "(stopped or starved by other work on the machine), timings unreliable; " + row["bound"]
            )
        state = srv.state()
        if state:
            row["bound"] = f"{state}; " + row["bound"]
            if not srv.killed:
                row["notes"].extend(f"server output: `{line[:300]}`" for line in list(srv.log)[-10:])
        if srv.killed and not pa:
            row["hello"] = (row["hello"][0], row["hello"][1], "killed")
        shed = srv.log_counts.get("shedding")
        if shed:
            row["notes"].append(f"server log: {shed} 'shedding connection' lines")
    finally:
        pauses.halt.set()
        sampler.stop()
        srv.stop()
    return row


def recovery(results):
    """Longest stretch (seconds) during which no /hello probe succeeded."""
    longest, start = 0.0, None
    for r in results:
        if not r.ok:
            if start is None:
                start = r.t
            longest = max(longest, r.t + r.latency - start)
        else:
            start = None
    return longest


def fmt_triple(t, f="{:.0f}"):
    return " / ".join("-" if x is None else f.format(x) for x in t)


def print_report(ctx, rows, started, argv):
    print("# Hostile-client run against `curfew-lab serve`\n")
    print(f"command: `{' '.join(argv)}`  ")
    print(f"server: `{ctx.binary}`  ")
    print(f"started: {started}, took {time.monotonic() - ctx.t0:.0f} s  ")
    print(f"uptime before: `{ctx.uptime0}`  ")
    print(f"uptime after: `{uptime()}`  ")
    print(
        f"RLIMIT_NOFILE: script and server {resource.getrlimit(resource.RLIMIT_NOFILE)[0]} "
        f"(unless a row says otherwise); /hello probes from {PROBE_IP}, timeout {ctx.probe_timeout:g} s, "
        f"every {PROBE_EVERY:g} s during"
    )
    if ctx.iters_per_s:
        print(f"  \nspin rate (tokio-mode calibration): {ctx.iters_per_s / 1e9:.2f} G iterations/s")
    print()
    print(
        "| abuse | clients | connections before / peak / after | RSS MiB before / peak / after "
        "| threads before / peak / after | /hello worst before / during / after | /hello failures during "
        "| longest /hello outage | what the server did at the bound |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if "error" in r:
            print(f"| {r['abuse']} | {r['clients']} | | | | | | | ERROR: {r['error']} |")
            continue
        print(
            f"| {r['abuse']} | {r['clients']} | {fmt_triple(r['conns'])} | {fmt_triple(r['rss'])} "
            f"| {fmt_triple(r['threads'])} | {' / '.join(r['hello'])} | {r['failures']} "
            f"| {fmt_s(r['during_ok_after_first_failure']) if r['during_ok_after_first_failure'] else '0'} "
            f"| {r['bound'].replace('|', '/')} |"
        )
    print("\n## Details\n")
    for r in rows:
        print(f"- **{r['abuse']}** (`{r['cmd']}`)")
        if "error" in r:
            print(f"  - error: {r['error']}")
            continue
        print(f"  - abuse window {r['seconds']:.1f} s; /hello after: {r['failures_after']} failed")
        for n in r["notes"]:
            print(f"  - {n}")


def uptime():
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        with open("/proc/loadavg") as f:
            return "loadavg " + f.read().strip()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default="target/release/curfew-lab", help="the curfew-lab binary")
    p.add_argument("--quick", action="store_true", help="smaller counts: a smoke run")
    p.add_argument("--only", action="append", default=[], help="an abuse name or an item number (7-11); repeatable, or comma separated")
    p.add_argument("--list", action="store_true", help="list the abuses and exit")
    p.add_argument("--probe-timeout", type=float, default=2.0, help="seconds a /hello probe may take (default 2)")
    p.add_argument("--rss-limit-mib", type=int, default=512, help="--rss-limit-mib for the supervised /dev/zero row")
    p.add_argument("--rss-cap-mib", type=int, default=2048, help="the script kills a /dev/zero server past this")
    p.add_argument("--retries", type=int, default=1, help="reruns of an abuse whose run was paused (0 or 1)")
    p.add_argument("--spin-iters-per-sec", type=float, default=None, help="skip the spin calibration")
    p.add_argument(
        "--non-loopback-addr",
        default=None,
        help="opt-in: an address of this machine outside 127/8; adds a row whose server listens on it, "
        "to ask /metrics from a non-loopback peer",
    )
    args = p.parse_args()
    ctx = Ctx(args)
    abuses = plan(ctx)
    if args.list:
        for ab in abuses:
            srv = Server(ctx.binary, ab.mode, ab.flags)
            print(f"{ab.item:>2} {ab.name:<20} {ab.clients:<34} {' '.join(srv.argv()[1:])}")
        return 0
    only = [w for o in args.only for w in o.split(",") if w]
    if only:
        abuses = [a for a in abuses if a.name in only or str(a.item) in only]
        if not abuses:
            p.error(f"--only {','.join(only)} matches no abuse; --list shows them")
    if not os.access(ctx.binary, os.X_OK):
        p.error(f"{ctx.binary} is not an executable; build it (cargo build --release -p curfew-lab) or pass --server")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def on_term(signum, frame):
        raise KeyboardInterrupt()

    signal.signal(signal.SIGTERM, on_term)
    ctx.t0 = time.monotonic()
    ctx.uptime0 = uptime()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    rows = []
    try:
        for ab in abuses:
            try:
                row = run_abuse(ctx, ab)
                if row.get("paused") and args.retries > 0:
                    # Once more, in the hope of a quieter moment.
                    print(f"   {ab.name} paused {row['paused']:.1f} s: running it again", file=sys.stderr, flush=True)
                    cleanup_all()
                    again = run_abuse(ctx, ab)
                    again["abuse"] += " (rerun)"
                    row = again if not again.get("paused") or again["paused"] < row["paused"] else row
                rows.append(row)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # a row that fails is reported, the run goes on
                rows.append({"abuse": f"{ab.item}: {ab.name}", "clients": ab.clients, "cmd": "", "error": f"{type(e).__name__}: {e}"})
                cleanup_all()
    except KeyboardInterrupt:
        print("interrupted: stopping the servers", file=sys.stderr)
        cleanup_all()
        print_report(ctx, rows, started, sys.argv)
        return 130
    finally:
        cleanup_all()
    print_report(ctx, rows, started, sys.argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
