//! bench/run.sh's open-loop client: requests at a fixed rate over a pool of keep-alive
//! connections, each request's latency counted from the time it was due.
//!
//! ```text
//! weir-bench-openloop HOST:PORT PATH RATE CONNECTIONS SECONDS
//! ```
//!
//! Request k is due at start + k/RATE. At that time it goes out on an idle connection;
//! when every connection is busy, it waits for the first to come free. Its latency runs
//! from its due time to the end of its response, so a server that falls behind is
//! charged for the wait it caused (no coordinated omission). Requests still waiting for
//! a connection when the SECONDS are over are never sent, and count with the time they
//! had waited by then (a lower bound), so an overloaded server's tail is not hidden; so
//! do responses still missing 5 s later, and requests whose connection the server
//! closed (those are errors too; a request that could not be written goes out again on
//! another connection).
//!
//! Why not oha (which `profile.sh` still uses): the open-loop client shares its CPU with
//! the bench upstream, so what it costs per request and how exactly it keeps time are
//! in every latency it reports. oha runs on tokio, whose timers tick in milliseconds:
//! requests due within a millisecond go out together, a burst the server then queues.
//! This client is one thread whose one wait, `epoll_pwait2` (Linux 5.11, glibc 2.35),
//! ends at the next due time (a nanosecond timeout, with the thread's timer slack cut
//! from 50 µs to 1 ns), so a
//! request goes out within microseconds of its time. A request costs about three system
//! calls: the wait, the write and the read of its response. (A timerfd armed at each
//! due time, as before, cost two more: arming it and reading it. At half nginx's
//! maximum the client and the upstream keep their CPU busy, so each call counts.)
//!
//! Prints one JSON line: `due`, `completed`, `unsent`, `errors` (non-2xx responses and
//! connections lost), `rps` (completed per second of the schedule), and the latency
//! percentiles `p50_us`, `p90_us`, `p99_us`, `p999_us` and `max_us`.
//!
//! With `OPENLOOP_TIMELINE=FILE` it also writes, for each millisecond of the schedule
//! in which a response came, `MS MAX_US COUNT SLOW`: the millisecond (from the
//! schedule's start, by due time), the longest latency of the requests due in it, how
//! many there were, and how many of them took 1 ms or more. A first line `# start_ns N` gives the schedule's start on
//! `CLOCK_MONOTONIC`, the clock `perf record -k monotonic` stamps events with, so
//! `bench/stalls.sh` can lay the two side by side.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::process::exit;

/// How long to wait for the responses in flight once the schedule is over.
const DRAIN_NS: u64 = 5_000_000_000;

/// One keep-alive connection.
struct Conn {
    stream: TcpStream,
    /// What has come and is not yet a whole response.
    buf: Vec<u8>,
    /// The due time of the request in flight, if one is.
    due: Option<u64>,
    /// Closed by the server: no longer used.
    lost: bool,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!("usage: weir-bench-openloop HOST:PORT PATH RATE CONNECTIONS SECONDS");
        exit(2);
    }
    let addr = &args[1];
    let path = &args[2];
    let rate: f64 = parse(&args[3], "RATE");
    let connections: usize = parse(&args[4], "CONNECTIONS");
    let seconds: f64 = parse(&args[5], "SECONDS");
    if rate <= 0.0 || connections == 0 || seconds <= 0.0 {
        eprintln!("RATE, CONNECTIONS and SECONDS must be more than zero");
        exit(2);
    }
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n").into_bytes();

    let epoll = check(
        unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) },
        "epoll_create1",
    );
    // The kernel may end a timed wait up to the thread's timer slack late (50 µs by
    // default) or 0.1 % of the wait, whichever is more; 1 ns leaves the 0.1 %, about
    // 20 ns at 50k req/s.
    check(
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) },
        "prctl(PR_SET_TIMERSLACK)",
    );
    let mut conns: Vec<Conn> = (0..connections)
        .map(|i| {
            let stream = TcpStream::connect(addr).unwrap_or_else(|e| {
                eprintln!("cannot connect to {addr}: {e}");
                exit(1);
            });
            stream.set_nodelay(true).expect("TCP_NODELAY");
            stream.set_nonblocking(true).expect("O_NONBLOCK");
            watch(epoll, stream.as_raw_fd(), i as u64);
            Conn {
                stream,
                buf: Vec::with_capacity(4096),
                due: None,
                lost: false,
            }
        })
        .collect();

    let interval = 1e9 / rate;
    let start = now_ns() + 1_000_000;
    let end = start + (seconds * 1e9) as u64;
    let due_of = |k: u64| start + (k as f64 * interval) as u64;
    let mut next = 0u64;
    let mut idle: Vec<usize> = (0..connections).rev().collect();
    let mut waiting: VecDeque<u64> = VecDeque::new();
    let mut latencies: Vec<u64> = Vec::with_capacity((rate * seconds) as usize + 1);
    let (mut completed, mut errors, mut unsent) = (0u64, 0u64, 0u64);
    let mut in_flight = 0usize;
    // Only with OPENLOOP_TIMELINE: (due, latency) of every response, in order of arrival.
    let timeline_path = std::env::var_os("OPENLOOP_TIMELINE");
    let mut timeline: Vec<(u64, u64)> = Vec::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; connections];
    let mut chunk = vec![0u8; 64 * 1024];

    loop {
        let now = now_ns();
        while due_of(next) <= now && due_of(next) < end {
            waiting.push_back(due_of(next));
            next += 1;
        }
        while let (Some(&due), Some(&i)) = (waiting.front(), idle.last()) {
            waiting.pop_front();
            idle.pop();
            let conn = &mut conns[i];
            if send(&mut conn.stream, &request) {
                conn.due = Some(due);
                in_flight += 1;
            } else {
                // The request goes out on another connection; this one is done.
                lose(epoll, conn);
                errors += 1;
                waiting.push_front(due);
            }
        }
        let schedule_over = due_of(next) >= end && now >= end;
        if schedule_over {
            for due in waiting.drain(..) {
                latencies.push(now - due);
                unsent += 1;
            }
            if in_flight == 0 || now >= end + DRAIN_NS {
                // Still unanswered: errors, and in the latencies with what they waited.
                for conn in conns.iter_mut().filter(|c| !c.lost) {
                    if let Some(due) = conn.due.take() {
                        latencies.push(now - due);
                        errors += 1;
                    }
                }
                break;
            }
        }
        if in_flight == 0 && idle.is_empty() {
            eprintln!("every connection was closed by the server");
            exit(1);
        }
        // Wake at the next due time (or the end of the drain), or when a response comes.
        let wake = if schedule_over {
            end + DRAIN_NS
        } else {
            due_of(next).min(end)
        };
        let wait = wake.saturating_sub(now_ns());
        let timeout = libc::timespec {
            tv_sec: (wait / 1_000_000_000) as libc::time_t,
            tv_nsec: (wait % 1_000_000_000) as libc::c_long,
        };
        let n = unsafe {
            libc::epoll_pwait2(
                epoll,
                events.as_mut_ptr(),
                events.len() as i32,
                &timeout,
                std::ptr::null(),
            )
        };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == ErrorKind::Interrupted {
                continue;
            }
            check(n, "epoll_pwait2");
        }
        for ev in &events[..n as usize] {
            let i = ev.u64 as usize;
            let conn = &mut conns[i];
            if conn.lost {
                continue;
            }
            let closed = loop {
                match conn.stream.read(&mut chunk) {
                    Ok(0) => break true,
                    Ok(n) => {
                        conn.buf.extend_from_slice(&chunk[..n]);
                        // A short read emptied the socket; epoll reports anything later.
                        if n < chunk.len() {
                            break false;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break true,
                }
            };
            while let Some((len, ok)) = response(&conn.buf) {
                conn.buf.drain(..len);
                let Some(due) = conn.due.take() else {
                    eprintln!("a response came with no request in flight");
                    exit(1);
                };
                let latency = now_ns().saturating_sub(due);
                latencies.push(latency);
                if timeline_path.is_some() {
                    timeline.push((due, latency));
                }
                in_flight -= 1;
                completed += 1;
                if !ok {
                    errors += 1;
                }
                idle.push(i);
            }
            if closed {
                lose(epoll, conn);
                idle.retain(|&j| j != i);
                if let Some(due) = conn.due.take() {
                    in_flight -= 1;
                    errors += 1;
                    latencies.push(now_ns().saturating_sub(due));
                }
            }
        }
    }

    if let Some(path) = timeline_path {
        write_timeline(&path, start, &timeline);
    }
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let at = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[at] as f64 / 1e3
    };
    println!(
        "{{\"due\": {}, \"completed\": {completed}, \"unsent\": {unsent}, \"errors\": {errors}, \
         \"rps\": {:.1}, \"p50_us\": {:.1}, \"p90_us\": {:.1}, \"p99_us\": {:.1}, \
         \"p999_us\": {:.1}, \"max_us\": {:.1}}}",
        next,
        completed as f64 / seconds,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(0.999),
        pct(1.0),
    );
}

/// Writes the per-millisecond timeline (see the module's docs) to `path`.
fn write_timeline(path: &std::ffi::OsStr, start: u64, timeline: &[(u64, u64)]) {
    let mut by_ms: std::collections::BTreeMap<u64, (u64, u64, u64)> = Default::default();
    for &(due, latency) in timeline {
        let slot = by_ms.entry((due - start) / 1_000_000).or_default();
        slot.0 = slot.0.max(latency);
        slot.1 += 1;
        slot.2 += u64::from(latency >= 1_000_000);
    }
    let mut out = format!("# start_ns {start}\n");
    for (ms, (max, count, slow)) in by_ms {
        out.push_str(&format!("{ms} {} {count} {slow}\n", max / 1000));
    }
    if let Err(e) = std::fs::write(path, out) {
        eprintln!(
            "cannot write the timeline to {}: {e}",
            path.to_string_lossy()
        );
        exit(1);
    }
}

/// Stops using a connection the server closed: out of epoll (which would otherwise
/// report it readable for ever) and shut down.
fn lose(epoll: i32, conn: &mut Conn) {
    if conn.lost {
        return;
    }
    conn.lost = true;
    let fd = conn.stream.as_raw_fd();
    unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
    let _ = conn.stream.shutdown(std::net::Shutdown::Both);
}

fn parse<T: std::str::FromStr>(text: &str, what: &str) -> T {
    text.parse().unwrap_or_else(|_| {
        eprintln!("{what} is not a number: {text:?}");
        exit(2);
    })
}

/// Writes a whole request; false if the connection is gone.
fn send(stream: &mut TcpStream, request: &[u8]) -> bool {
    // A request is far smaller than a socket buffer with nothing else in flight on it,
    // so a write that would block means something is badly wrong: count it as lost.
    matches!(stream.write(request), Ok(n) if n == request.len())
}

/// The length of the whole response at the start of `buf` and whether it is a 2xx, or
/// `None` while it is incomplete. Responses must carry a `content-length`.
fn response(buf: &[u8]) -> Option<(usize, bool)> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = &buf[..head_end];
    let ok = head.get(9) == Some(&b'2');
    let len = head
        .split(|&b| b == b'\n')
        .find_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let (name, value) = line.split_at(colon);
            name.eq_ignore_ascii_case(b"content-length").then(|| {
                std::str::from_utf8(&value[1..])
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            })?
        })
        .unwrap_or_else(|| {
            eprintln!(
                "a response without a content-length: {:?}",
                String::from_utf8_lossy(head)
            );
            exit(1);
        });
    (buf.len() >= head_end + len).then_some((head_end + len, ok))
}

/// CLOCK_MONOTONIC in nanoseconds.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Adds `fd` to `epoll` for reading, level-triggered, with `token`.
fn watch(epoll: i32, fd: i32, token: u64) {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    };
    check(
        unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut ev) },
        "epoll_ctl",
    );
}

fn check(r: i32, what: &str) -> i32 {
    if r < 0 {
        eprintln!("{what}: {}", std::io::Error::last_os_error());
        exit(1);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_is_whole_once_its_content_length_has_come() {
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(response(&resp[..20]), None);
        assert_eq!(response(&resp[..resp.len() - 1]), None);
        assert_eq!(response(resp), Some((resp.len(), true)));
        let two = [&resp[..], b"HTTP/1.1 503 No\r\ncontent-length: 0\r\n\r\n"].concat();
        assert_eq!(response(&two), Some((resp.len(), true)));
        assert_eq!(
            response(&two[resp.len()..]),
            Some((two.len() - resp.len(), false))
        );
        // A reason phrase in obs-text is a head like any other.
        let odd = b"HTTP/1.1 200 \xffK\r\ncontent-length: 1\r\n\r\nx";
        assert_eq!(response(odd), Some((odd.len(), true)));
    }
}
