//! The edges of the command line and the config file, from a review:
//! flag values past their range (a canary weight past u32, a duration
//! that overflows the clock), a SIGTERM as soon as the proxy serves, and
//! `check`'s errors (duplicate keys, an early end, non-UTF-8 bytes, an
//! unknown field inside an endpoint, an endpoint that does not resolve)
//! each with file, line and reason; a header rule no request can match is
//! refused, and a bad flag is named. Real processes, sockets and files.

use crate::support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A fresh directory for one test's files.
fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "switchyard-cli-edges-{}-{test}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn write(dir: &std::path::Path, name: &str, contents: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write");
    path
}

/// `run` with one route to `stable`, the proxy and the admin API on
/// ephemeral loopback ports, and `extra` flags.
fn one_route<'a>(stable: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--stable",
        stable,
    ];
    args.extend_from_slice(extra);
    args
}

/// Runs the binary to its end, or kills it after `limit` (then `None`).
async fn run_to_end(args: &[&str], limit: Duration) -> Option<(std::process::ExitStatus, String)> {
    let child = tokio::process::Command::new(BIN)
        .args(args)
        .env("SWITCHYARD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn switchyard");
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .ok()?
        .expect("wait");
    Some((
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// Starts the binary; reads stdout until the line "Admin API on …". Returns
/// the child and the first `http://ADDR` printed, or the exit status and
/// stderr if it ended before that.
async fn start(
    args: &[&str],
) -> Result<(tokio::process::Child, std::net::SocketAddr), (std::process::ExitStatus, String)> {
    start_with_banner(args)
        .await
        .map(|(child, proxy, _)| (child, proxy))
}

/// [`start`], and the lines printed before "Admin API on …".
async fn start_with_banner(
    args: &[&str],
) -> Result<
    (tokio::process::Child, std::net::SocketAddr, Vec<String>),
    (std::process::ExitStatus, String),
> {
    let mut child = tokio::process::Command::new(BIN)
        .args(args)
        .env("SWITCHYARD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn switchyard");
    let mut stderr = child.stderr.take().expect("stderr");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut proxy = None;
    let mut banner = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("switchyard printed its addresses or ended in time")
            .expect("read stdout");
        let Some(line) = line else {
            let status = child.wait().await.expect("exit status");
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            return Err((status, text));
        };
        if line.starts_with("Admin API on ") {
            break;
        }
        banner.push(line.clone());
        if proxy.is_none() {
            if let Some(at) = line.find("http://") {
                let rest = &line[at + 7..];
                proxy = rest.split(['/', ' ']).next().and_then(|a| a.parse().ok());
            }
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = stderr.read_to_end(&mut sink).await;
    });
    Ok((
        child,
        proxy.expect("the proxy's address was printed"),
        banner,
    ))
}

/// One GET over a fresh connection; the raw answer (empty if the proxy
/// closed or reset the connection without one).
async fn raw_get(addr: std::net::SocketAddr, host: &str, extra: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET / HTTP/1.1\r\nhost: {host}\r\n{extra}connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// `--canary-weight 42949673`: far over 100%, so it must be refused like
/// `120` is. `percent_to_basis_points` multiplies the whole part by 100
/// in a u32 before the range check: the debug build panics, and a release
/// build (overflow wraps) takes it as 4 basis points (0.04%).
#[tokio::test]
async fn canary_weight_that_overflows_is_refused_not_a_panic() {
    let (status, stderr) = run_to_end(
        &one_route(
            "127.0.0.1:1",
            &["--canary", "127.0.0.1:2", "--canary-weight", "42949673"],
        ),
        Duration::from_secs(20),
    )
    .await
    .expect("refused at once, not started");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("over 100%"), "{stderr}");
}

/// A timeout so large that `Instant::now() + timeout` overflows passes
/// validation (`Validator::duration` checks only that it is positive), and
/// then every request panics its connection's task in
/// `fast::Deadline::set`/`DeadlineSpares::take` (a reset, no answer; with
/// the release profile's `panic = "abort"` the whole proxy dies). It must be
/// refused at start, or served.
#[tokio::test]
async fn huge_upstream_timeout_is_refused_or_served() {
    let upstream = support::upstream("stable").await;
    let upstream_addr = upstream.addr.to_string();
    let started = start(&one_route(
        &upstream_addr,
        &[
            "--workers",
            "1",
            "--upstream-timeout",
            "10000000000000000000s",
        ],
    ))
    .await;
    match started {
        Err((status, stderr)) => {
            assert!(!stderr.contains("panicked"), "{stderr}");
            assert!(!status.success(), "{stderr}");
        }
        Ok((_child, addr)) => {
            let answer = raw_get(addr, "example.com", "").await;
            assert!(
                answer.starts_with("HTTP/1.1 200"),
                "started, but the request got: {answer:?}"
            );
        }
    }
}

/// Once it has printed "Ctrl-C or SIGTERM stops it after in-flight
/// requests finish" it is serving, but the SIGTERM handler is installed
/// only afterwards (`wait_for_signal`, called after the prints in
/// `main.rs: run`): a SIGTERM in that window kills the process by the
/// signal's default action (no drain, exit by signal, not 0). The same
/// window holds for SIGHUP, whose default action also kills. A race, so it
/// is tried up to 200 times; the signal is sent the moment the line is read
/// (by a shell already waiting, with its `kill` builtin).
#[tokio::test]
async fn sigterm_right_after_the_ready_message_exits_zero() {
    for attempt in 0..200 {
        let mut child = tokio::process::Command::new(BIN)
            .args(one_route("127.0.0.1:9", &["--workers", "1"]))
            .env("SWITCHYARD_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn switchyard");
        let pid = child.id().expect("pid");
        let mut killer = tokio::process::Command::new("sh")
            .args(["-c", &format!("read line; kill -TERM {pid}")])
            .stdin(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn sh");
        let mut trigger = killer.stdin.take().expect("stdin");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
                .await
                .expect("printed in time")
                .expect("read")
                .expect("switchyard exited before it was ready");
            if line.starts_with("Ctrl-C or SIGTERM stops it") {
                trigger.write_all(b"go\n").await.expect("trigger");
                trigger.flush().await.expect("flush");
                break;
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .expect("exited in time")
            .expect("status");
        let _ = killer.wait().await;
        assert!(
            status.success(),
            "attempt {attempt}: SIGTERM after the ready message ended it with {status:?}"
        );
    }
}

/// Runs `check` on `contents` (as `name` in a directory of its own): it
/// must fail, with the file and `at` (`line:` or `line:column:`) in front
/// of the reason. Returns what it printed on stderr.
fn refused_at(name: &str, contents: &[u8], at: &str) -> String {
    let path = write(&temp_dir(name), name, contents);
    let (ok, stdout, stderr) = support::check_file(&path);
    assert!(!ok, "{name} accepted:\n{stdout}");
    let place = format!("{}:{at}", path.display());
    assert!(stderr.contains(&place), "{name}: not at {place}: {stderr}");
    stderr
}

const LISTENERS: &str = r#"  "listeners": [{"address": "127.0.0.1:8080"}],"#;
const ROUTES: &str =
    r#"  "routes": [{"name": "r", "split": {"baseline": "a", "weights": {"a": 10000}}}]"#;

/// A config whose `pools` object is `pools`, between a listener line and a
/// route line: the pools start on line 3.
fn with_pools(pools: &str) -> Vec<u8> {
    format!("{{\n{LISTENERS}\n  \"pools\": {pools},\n{ROUTES}\n}}\n").into_bytes()
}

/// JSON object keys given twice (a pool here; weights and header rules
/// likewise) are refused at the second: serde would keep only the last,
/// and the first pool would silently vanish.
#[test]
fn duplicate_keys_are_refused_with_their_line() {
    let pools = r#"{"a": {"endpoints": ["127.0.0.1:1"]},
            "a": {"endpoints": ["127.0.0.1:2"]}}"#;
    let stderr = refused_at("dup.json", &with_pools(pools), "4:");
    assert!(stderr.contains("given twice"), "{stderr}");
}

/// A file that ends early is placed at a 1-based column, at the top level.
#[test]
fn a_file_that_ends_early_gets_a_1_based_column() {
    refused_at("empty.json", b"", "1:1:");
    refused_at("open.json", b"{\n", "2:1: .:");
}

/// Non-UTF-8 bytes are placed at their line and column.
#[test]
fn non_utf8_bytes_are_reported_with_line_and_column() {
    let mut contents = with_pools(r#"{"a": {"endpoints": ["127.0.0.1:1"]}}"#);
    let endpoints = contents
        .windows(9)
        .position(|w| w == b"endpoints")
        .expect("the pool");
    contents[endpoints + 13] = 0xff;
    let stderr = refused_at("bin.json", &contents, "3:");
    assert!(stderr.contains("UTF-8"), "{stderr}");
}

/// An unknown field inside a weighted endpoint is named, at its line (an
/// untagged enum said only "data did not match any variant", a line on).
#[test]
fn an_unknown_field_inside_an_endpoint_is_named() {
    let pools = r#"{"a": {"endpoints": [
    {"address": "127.0.0.1:1", "wieght": 2}
  ]}}"#;
    let stderr = refused_at("deep.json", &with_pools(pools), "4:");
    assert!(stderr.contains("wieght"), "{stderr}");
}

/// An endpoint whose name does not resolve is placed at its line and
/// named by its JSON path, as every other config error is.
#[test]
fn an_endpoint_that_does_not_resolve_is_reported_with_its_line() {
    let pools = r#"{"a": {"endpoints": ["no-such-host.invalid:80"]}}"#;
    let stderr = refused_at("dns.json", &with_pools(pools), "3:");
    assert!(stderr.contains("no-such-host.invalid"), "{stderr}");
    assert!(stderr.contains("pools.a.endpoints[0]"), "{stderr}");
}

/// A header rule whose value is no valid field value (`"prod\n"`, as a
/// template with a trailing newline makes) passes `check`, and the table
/// build turns it into "any value" (`RouteTable::build_in`:
/// `HeaderValue::from_str(v).ok()`, None meaning present-with-any-value):
/// a request with `x-env: dev` takes the prod-only route. It must be
/// refused, or match nothing.
#[tokio::test]
async fn a_header_value_that_cannot_be_sent_does_not_become_a_wildcard() {
    let prod = support::upstream("prod").await;
    let other = support::upstream("other").await;
    let dir = temp_dir("hdr");
    let config = serde_json::json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {
            "prod": {"endpoints": [prod.addr.to_string()]},
            "other": {"endpoints": [other.addr.to_string()]}
        },
        "routes": [
            {"name": "prod", "match": {"headers": {"x-env": "prod\n"}},
             "split": {"baseline": "prod", "weights": {"prod": 10000}}},
            {"name": "rest", "split": {"baseline": "other", "weights": {"other": 10000}}}
        ]
    });
    let path = write(&dir, "hdr.json", config.to_string().as_bytes());
    let file = path.to_str().expect("utf-8 path");
    match start(&[
        "run",
        "--config",
        file,
        "--admin",
        "127.0.0.1:0",
        "--workers",
        "1",
    ])
    .await
    {
        Err((status, stderr)) => {
            assert!(!stderr.contains("panicked"), "{stderr}");
            assert!(!status.success(), "{stderr}");
        }
        Ok((_child, addr)) => {
            let answer = raw_get(addr, "example.com", "x-env: dev\r\n").await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            assert!(
                answer.ends_with("other"),
                "x-env: dev took the route for x-env: \"prod\\n\": {answer}"
            );
        }
    }
}

/// A bad one-route flag is reported as a position in a JSON text the user
/// never saw: `--upstream-timeout 5` gives "invalid command line: 41:24:
/// timeouts.response_header: …" (`one_route` validates a generated config
/// with `RawConfig::into_config` and prints its `ConfigError` as it is). It
/// must name the flag.
#[tokio::test]
async fn a_bad_flag_value_is_reported_by_its_flag() {
    let (status, stderr) = run_to_end(
        &one_route("127.0.0.1:1", &["--upstream-timeout", "5"]),
        Duration::from_secs(20),
    )
    .await
    .expect("refused at once");
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("--upstream-timeout"), "{stderr}");
}

/// A second SIGTERM during the drain stops the process at once, with a
/// failing status (an impatient Ctrl-C twice, or an orchestrator that will
/// not wait): the first one still drains, as tests/cli.rs shows.
#[tokio::test]
async fn a_second_sigterm_during_the_drain_stops_at_once() {
    let upstream = support::scripted_upstream(b"", support::After::Hang).await;
    let upstream_addr = upstream.addr.to_string();
    let (mut child, addr) = start(&one_route(
        &upstream_addr,
        &["--workers", "1", "--upstream-timeout", "60s"],
    ))
    .await
    .expect("started");
    // A request the upstream never answers keeps the drain going.
    let _in_flight = tokio::spawn(async move {
        let client = support::client();
        support::get(&client, addr, "/hang", &[]).await
    });
    let forwarded =
        support::eventually(Duration::from_secs(5), || !upstream.requests().is_empty()).await;
    assert!(forwarded, "the request reached the upstream");
    let pid = child.id().expect("pid").to_string();
    let term = || {
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
    };
    assert!(term().success());
    let draining = support::eventually(Duration::from_secs(5), || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
    assert!(draining, "still accepting after the first SIGTERM");
    assert!(term().success());
    // Far sooner than the 30 s drain (or the 60 s upstream timeout).
    let exit = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("stopped within 5 s of the second SIGTERM")
        .expect("exit status");
    assert!(!exit.success(), "a forced stop says so: {exit:?}");
}

/// `--workers 0` (and a count no machine runs) is refused by its flag,
/// rather than silently run with one worker.
#[tokio::test]
async fn a_worker_count_of_zero_is_refused() {
    for count in ["0", "100000"] {
        let (status, stderr) = run_to_end(
            &one_route("127.0.0.1:1", &["--workers", count]),
            Duration::from_secs(20),
        )
        .await
        .expect("refused at once");
        assert!(!status.success(), "--workers {count}: {stderr}");
        assert!(stderr.contains("--workers"), "{stderr}");
    }
}

/// The routing table printed at start names the port a `:0` listener got,
/// not port 0.
#[tokio::test]
async fn the_banner_shows_the_bound_port() {
    let (mut child, proxy, banner) = start_with_banner(&one_route("127.0.0.1:1", &[]))
        .await
        .expect("started");
    let listeners = banner
        .iter()
        .find(|line| line.starts_with("listeners: "))
        .expect("a listeners line");
    assert_eq!(*listeners, format!("listeners: {proxy}"), "{banner:?}");
    child.kill().await.expect("kill");
}

/// `run` refuses an endpoint that does not resolve as `check` does: placed
/// at its line in the file, or named by its flag, and said once.
#[tokio::test]
async fn run_places_an_endpoint_that_does_not_resolve() {
    let dir = temp_dir("run-dns");
    let pools = r#"{"a": {"endpoints": ["no-such-host.invalid:80"]}}"#;
    let file = write(&dir, "dns.json", &with_pools(pools));
    let file = file.to_str().expect("utf-8 path");
    let by_file = ["run", "--config", file, "--admin", "127.0.0.1:0"];
    let by_flag = one_route("127.0.0.1:1", &["--canary", "no-such-host.invalid:80"]);
    for (args, at) in [
        (&by_file[..], format!("{file}:3:")),
        (&by_flag, "--canary: ".into()),
    ] {
        let (status, stderr) = run_to_end(args, Duration::from_secs(20))
            .await
            .expect("refused at once");
        assert!(!status.success(), "{stderr}");
        assert!(stderr.contains(&at), "{at} in {stderr}");
        assert!(
            stderr.contains("no-such-host.invalid:80 does not resolve"),
            "{stderr}"
        );
        assert_eq!(
            stderr.matches("building the routing table").count(),
            0,
            "{stderr}"
        );
    }
}
