//! Endpoint health and load balancing, from a review: a pinned pool
//! avoids its down endpoints; a reload that shortens a check's interval
//! takes effect at once; an interim 1xx before the final status passes a
//! check; the in-flight count follows a request moved to another endpoint
//! and survives a table swap, as does the round robin's place; failures
//! during an ejection start no new run; an endpoint removed and added back
//! starts up. Each failed on the code it was written against; all go
//! through real loopback sockets (the proxy in-process, real upstreams
//! started by the test). Tables are swapped with `Routes::replace`, as a
//! reload does.

use crate::support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use switchyard_proxy::route::EndpointEntry;
use switchyard_proxy::Routes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream whose `/healthz` answers with a status the test sets (as
/// a raw reply, optionally preceded by `interim`); every other request
/// is answered 200 with the upstream's name, keep-alive.
#[derive(Clone)]
struct Checked {
    addr: SocketAddr,
    health: Arc<AtomicU16>,
    checks: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
}

async fn checked_upstream(name: &'static str, interim: &'static [u8]) -> Checked {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let checked = Checked {
        addr: listener.local_addr().expect("addr"),
        health: Arc::new(AtomicU16::new(200)),
        checks: Arc::new(AtomicUsize::new(0)),
        served: Arc::new(AtomicUsize::new(0)),
    };
    let state = checked.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let state = state.clone();
            tokio::spawn(async move {
                loop {
                    let head = support::read_head(&mut stream).await;
                    if head.is_empty() {
                        return;
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let path = head.split(' ').nth(1).unwrap_or_default().to_string();
                    if path == "/healthz" {
                        state.checks.fetch_add(1, Ordering::SeqCst);
                        let status = state.health.load(Ordering::SeqCst);
                        let mut reply = interim.to_vec();
                        reply.extend_from_slice(
                            format!(
                                "HTTP/1.1 {status} Status\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            )
                            .as_bytes(),
                        );
                        let _ = stream.write_all(&reply).await;
                        return;
                    }
                    state.served.fetch_add(1, Ordering::SeqCst);
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{name}",
                        name.len()
                    );
                    if stream.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    checked
}

/// An upstream that reads requests and never answers them: each request
/// stays in flight until the proxy gives up or the test ends.
#[derive(Clone)]
struct Holding {
    addr: SocketAddr,
    received: Arc<AtomicUsize>,
}

async fn holding_upstream() -> Holding {
    let received = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&received);
    let addr = support::raw_upstream(move |mut stream| {
        let count = Arc::clone(&count);
        async move {
            if !support::read_head(&mut stream).await.is_empty() {
                count.fetch_add(1, Ordering::SeqCst);
            }
            let mut sink = [0u8; 1024];
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        }
    })
    .await;
    Holding { addr, received }
}

/// A closed port: connecting to it is refused.
fn dead_addr() -> SocketAddr {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    dead.local_addr().expect("addr")
}

/// Sends a GET on a new client connection and keeps the connection open
/// (unread) so that the request stays in flight.
async fn send_and_hold(proxy: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    stream
        .write_all(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    stream
}

fn now_ms() -> u64 {
    switchyard_proxy::stats::ms_of(std::time::Instant::now())
}

/// The live table's endpoint `addr` of pool `pool`, read with `f`.
fn with_endpoint<T>(
    routes: &Routes,
    pool: &str,
    addr: SocketAddr,
    f: impl FnOnce(&EndpointEntry) -> T,
) -> T {
    let table = routes.snapshot();
    let pool = table
        .pools()
        .iter()
        .find(|p| &*p.name == pool)
        .expect("pool in the table");
    let endpoint = pool
        .endpoints
        .iter()
        .find(|e| e.addr == addr)
        .expect("endpoint in the pool");
    f(endpoint)
}

fn in_flight(routes: &Routes, pool: &str, addr: SocketAddr) -> u32 {
    with_endpoint(routes, pool, addr, |e| e.in_flight.load(Ordering::SeqCst))
}

async fn bodies(addr: SocketAddr, n: usize, headers: &[(&str, &str)]) -> Vec<String> {
    let client = support::client();
    let mut out = Vec::new();
    for _ in 0..n {
        let (status, _, body) = support::get(&client, addr, "/", headers).await;
        assert_eq!(status, 200, "{body}");
        out.push(body);
    }
    out
}

// ---------------------------------------------------------------------
// 1. A tester's override pins a pool, but then any endpoint of it is
//    used, even one its health checks took out while others are up.
// ---------------------------------------------------------------------

#[tokio::test]
async fn a_pinned_pool_still_avoids_its_down_endpoints() {
    let stable = support::upstream("stable").await;
    let sick = checked_upstream("sick", b"").await;
    let well = checked_upstream("well", b"").await;
    sick.health.store(503, Ordering::SeqCst);
    let proxy = support::proxy(&json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {
            "pinstable": {"endpoints": [stable.addr.to_string()]},
            "pincanary": {
                "endpoints": [sick.addr.to_string(), well.addr.to_string()],
                "health_check": {"path": "/healthz", "interval": "200ms", "timeout": "200ms", "rise": 1, "fall": 1},
            },
        },
        "routes": [{"name": "pinned", "split": {"baseline": "pinstable", "weights": {"pinstable": 5000, "pincanary": 5000}}}],
    }));
    let down = support::eventually(Duration::from_secs(5), || {
        with_endpoint(&proxy.routes, "pincanary", sick.addr, |e| {
            e.health.is_down(now_ms())
        })
    })
    .await;
    assert!(down, "the failing endpoint was never checked down");

    // Unpinned, the down endpoint gets nothing.
    let unpinned = bodies(proxy.addr, 20, &[]).await;
    assert!(!unpinned.contains(&"sick".to_string()), "{unpinned:?}");

    // Pinned to its pool, which has an endpoint up: the tester should see
    // what the pool's live endpoints do, never a checked-down one.
    let pinned = bodies(proxy.addr, 20, &[("x-switchyard-pool", "pincanary")]).await;
    let to_sick = pinned.iter().filter(|b| *b == "sick").count();
    assert_eq!(
        to_sick, 0,
        "pinned requests reached the checked-down endpoint {to_sick} of 20 times: {pinned:?}"
    );
}

// ---------------------------------------------------------------------
// 2. A reload that shortens a health check's interval waits out the old
//    interval before the next check.
// ---------------------------------------------------------------------

fn checked_pool_config(pool: &str, addr: SocketAddr, check: Value) -> Value {
    json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {pool: {"endpoints": [addr.to_string()], "health_check": check}},
        "routes": [{"name": pool, "split": {"baseline": pool, "weights": {pool: 10000}}}],
        "timeouts": {"drain": "2s", "connect": "2s", "response_header": "5s"},
    })
}

#[tokio::test]
async fn a_reload_that_shortens_the_check_interval_takes_effect_quickly() {
    let up = checked_upstream("interval", b"").await;
    let slow =
        json!({"path": "/healthz", "interval": "60s", "timeout": "1s", "rise": 1, "fall": 1});
    let proxy = support::proxy(&checked_pool_config("ivl", up.addr, slow));
    assert!(
        support::eventually(Duration::from_secs(5), || up.checks.load(Ordering::SeqCst)
            >= 1)
        .await,
        "the first check never came"
    );

    // The operator makes the checks much more frequent; the endpoint
    // starts failing them.
    up.health.store(503, Ordering::SeqCst);
    let fast =
        json!({"path": "/healthz", "interval": "200ms", "timeout": "200ms", "rise": 1, "fall": 1});
    proxy.routes.replace(support::table(
        &checked_pool_config("ivl", up.addr, fast),
        2,
    ));

    let checked_again = support::eventually(Duration::from_secs(5), || {
        up.checks.load(Ordering::SeqCst) >= 3
    })
    .await;
    let down = with_endpoint(&proxy.routes, "ivl", up.addr, |e| {
        e.health.is_checked_down()
    });
    assert!(
        checked_again && down,
        "5 s after a reload to a 200ms interval: {} checks in all, endpoint down: {down} \
         (the next check still waits for the old 60 s interval)",
        up.checks.load(Ordering::SeqCst)
    );
}

// ---------------------------------------------------------------------
// 3. A 1xx interim answer (103 Early Hints) is taken as the check's
//    status, so a healthy endpoint fails its checks.
// ---------------------------------------------------------------------

#[tokio::test]
async fn an_interim_103_before_a_200_passes_the_health_check() {
    let hinted = checked_upstream(
        "hinted",
        b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n",
    )
    .await;
    let plain = checked_upstream("plain", b"").await;
    let check =
        json!({"path": "/healthz", "interval": "200ms", "timeout": "200ms", "rise": 1, "fall": 2});
    let proxy = support::proxy(&json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"hints": {"endpoints": [hinted.addr.to_string(), plain.addr.to_string()], "health_check": check}},
        "routes": [{"name": "hints", "split": {"baseline": "hints", "weights": {"hints": 10000}}}],
    }));
    assert!(
        support::eventually(Duration::from_secs(5), || hinted
            .checks
            .load(Ordering::SeqCst)
            >= 4)
        .await,
        "the checks never came"
    );
    let down = with_endpoint(&proxy.routes, "hints", hinted.addr, |e| {
        e.health.is_checked_down()
    });
    let seen = bodies(proxy.addr, 10, &[]).await;
    assert!(
        !down && seen.contains(&"hinted".to_string()),
        "an endpoint answering `103` then `200 OK` to its checks: checked down {down}, \
         served {seen:?}"
    );
}

// ---------------------------------------------------------------------
// 4. After a connect failure the request moves to another endpoint, but
//    its in-flight count stays on the endpoint that refused it.
// ---------------------------------------------------------------------

#[tokio::test]
async fn the_in_flight_count_follows_a_request_moved_to_another_endpoint() {
    let dead = dead_addr();
    let live = holding_upstream().await;
    let proxy = support::proxy(&json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"p2cmove": {
            "endpoints": [dead.to_string(), live.addr.to_string()],
            "policy": "least_outstanding",
            "outlier_detection": {"consecutive_failures": 0},
        }},
        "routes": [{"name": "p2cmove", "split": {"baseline": "p2cmove", "weights": {"p2cmove": 10000}}}],
        "timeouts": {"connect": "2s", "response_header": "30s", "drain": "1s"},
    }));
    let mut held = Vec::new();
    for n in 1..=8 {
        held.push(send_and_hold(proxy.addr).await);
        // Every request ends on the live endpoint, directly or moved there.
        assert!(
            support::eventually(Duration::from_secs(5), || live
                .received
                .load(Ordering::SeqCst)
                >= n)
            .await,
            "request {n} never reached the live endpoint"
        );
    }
    let on_live = in_flight(&proxy.routes, "p2cmove", live.addr);
    let on_dead = in_flight(&proxy.routes, "p2cmove", dead);
    assert_eq!(
        (on_live, on_dead),
        (8, 0),
        "8 requests in flight on the live endpoint; least-outstanding counts \
         {on_live} there and {on_dead} on the endpoint that refused the connection"
    );
    drop(held);
}

// ---------------------------------------------------------------------
// 5. A table swap forgets every endpoint's requests in flight: the
//    least-outstanding policy then sees a loaded endpoint as idle.
// ---------------------------------------------------------------------

fn p2c_config(pool: &str, addrs: &[SocketAddr], version_note: &str) -> Value {
    json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {pool: {
            "endpoints": addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "policy": "least_outstanding",
        }},
        "routes": [{"name": pool, "split": {"baseline": pool, "weights": {pool: 10000}},
                    "match": {"headers": {"x-note": null}}},
                   {"name": format!("{pool}-{version_note}"), "split": {"baseline": pool, "weights": {pool: 10000}}}],
        "timeouts": {"connect": "2s", "response_header": "30s", "drain": "1s"},
    })
}

#[tokio::test]
async fn requests_in_flight_are_still_counted_after_a_table_swap() {
    let busy = holding_upstream().await;
    let idle = support::upstream("idle").await;
    let proxy = support::proxy(&p2c_config("p2cswap", &[busy.addr, idle.addr], "v1"));
    // Load the busy endpoint: requests stay in flight there. (P2C sends
    // some to the idle one, which answers at once.)
    let mut held = Vec::new();
    while busy.received.load(Ordering::SeqCst) < 6 {
        let before = busy.received.load(Ordering::SeqCst);
        held.push(send_and_hold(proxy.addr).await);
        support::eventually(Duration::from_millis(300), || {
            busy.received.load(Ordering::SeqCst) > before
        })
        .await;
    }
    let loaded = busy.received.load(Ordering::SeqCst) as u32;
    assert_eq!(in_flight(&proxy.routes, "p2cswap", busy.addr), loaded);

    // A reload that changes nothing about this pool (another route's
    // name): the same endpoints, the same requests still in flight.
    proxy.routes.replace(support::table(
        &p2c_config("p2cswap", &[busy.addr, idle.addr], "v2"),
        2,
    ));
    let after = in_flight(&proxy.routes, "p2cswap", busy.addr);
    assert_eq!(
        after, loaded,
        "{loaded} requests are in flight on the busy endpoint, but after a table swap \
         least-outstanding counts {after}"
    );
    drop(held);
}

// ---------------------------------------------------------------------
// 6. Round robin starts over at the first endpoint on every table swap,
//    so swaps (any reload, any weight change) skew the pool.
// ---------------------------------------------------------------------

fn rr_config(pool: &str, a: SocketAddr, b: SocketAddr, canary_bp: i64) -> Value {
    json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {
            pool: {"endpoints": [a.to_string(), b.to_string()]},
            format!("{pool}-other"): {"endpoints": [a.to_string()]},
        },
        "routes": [{"name": pool, "split": {"baseline": pool, "weights": {pool: 10000}}},
                   {"name": format!("{pool}-other"), "match": {"path_prefix": "/other"},
                    "split": {"baseline": format!("{pool}-other"),
                              "weights": {format!("{pool}-other"): 10000 - canary_bp, pool: canary_bp}}}],
        "timeouts": {"drain": "2s", "connect": "2s", "response_header": "5s"},
    })
}

#[tokio::test]
async fn round_robin_keeps_its_place_across_table_swaps() {
    let a = support::upstream("a").await;
    let b = support::upstream("b").await;
    let proxy = support::proxy(&rr_config("rrswap", a.addr, b.addr, 0));
    let client = support::client();
    let mut seen = Vec::new();
    for i in 0..10u64 {
        let (status, _, body) = support::get(&client, proxy.addr, "/", &[]).await;
        assert_eq!(status, 200);
        seen.push(body);
        // A weight change on another route: this pool is unchanged.
        proxy.routes.replace(support::table(
            &rr_config("rrswap", a.addr, b.addr, (i as i64 + 1) * 100),
            i + 2,
        ));
    }
    let to_a = seen.iter().filter(|s| *s == "a").count();
    assert_eq!(
        to_a, 5,
        "a pool of two equal endpoints, one request between table swaps: {seen:?}"
    );
}

// ---------------------------------------------------------------------
// 7. Failures that land while an endpoint is already ejected keep
//    counting, so once back it is ejected again after a single failure.
// ---------------------------------------------------------------------

#[tokio::test]
async fn an_endpoint_back_from_ejection_needs_a_new_run_of_failures() {
    let hang = holding_upstream().await;
    let good = support::upstream("good").await;
    let proxy = support::proxy(&json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"rerun": {
            "endpoints": [hang.addr.to_string(), good.addr.to_string()],
            "outlier_detection": {"consecutive_failures": 2, "base_ejection": "1500ms",
                                  "max_ejection": "1m", "max_ejected_percent": 50},
        }},
        "routes": [{"name": "rerun", "split": {"baseline": "rerun", "weights": {"rerun": 10000}}}],
        "timeouts": {"connect": "2s", "response_header": "400ms", "drain": "1s"},
    }));
    // Eight requests at once: round robin sends four to the endpoint that
    // never answers; the four time out together.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            support::get(&support::client(), addr, "/", &[])
                .await
                .0
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.expect("task"));
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 504).count(),
        4,
        "{statuses:?}"
    );
    let ejected = with_endpoint(&proxy.routes, "rerun", hang.addr, |e| {
        e.health.is_ejected(now_ms())
    });
    assert!(ejected, "two timeouts in a row eject the endpoint");

    // Wait out the ejection.
    assert!(
        support::eventually(Duration::from_secs(5), || {
            !with_endpoint(&proxy.routes, "rerun", hang.addr, |e| {
                e.health.is_ejected(now_ms())
            })
        })
        .await
    );
    // One failure, the first since it came back.
    let client = support::client();
    let before = hang.received.load(Ordering::SeqCst);
    while hang.received.load(Ordering::SeqCst) == before {
        support::get(&client, proxy.addr, "/", &[]).await;
    }
    let ejected_again = with_endpoint(&proxy.routes, "rerun", hang.addr, |e| {
        e.health.is_ejected(now_ms())
    });
    assert!(
        !ejected_again,
        "with consecutive_failures 2, one failure after the ejection ended ejected the endpoint \
         again (the failures that landed while it was out still counted)"
    );
}

// ---------------------------------------------------------------------
// 8. An endpoint removed by a reload and added back later is still
//    ejected from before: a fixed endpoint gets nothing for minutes.
// ---------------------------------------------------------------------

fn readd_config(pool: &str, addrs: &[String]) -> Value {
    json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {pool: {
            "endpoints": addrs,
            "outlier_detection": {"consecutive_failures": 2, "base_ejection": "5m", "max_ejected_percent": 50},
        }},
        "routes": [{"name": pool, "split": {"baseline": pool, "weights": {pool: 10000}}}],
        "timeouts": {"drain": "2s", "connect": "2s", "response_header": "5s"},
    })
}

#[tokio::test]
async fn an_endpoint_added_back_by_a_reload_starts_up() {
    let good = support::upstream("good").await;
    // Reserve a port, and free it: connections to it are refused.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let broken = reserved.local_addr().expect("addr");
    drop(reserved);
    let both = [broken.to_string(), good.addr.to_string()];
    let proxy = support::proxy(&readd_config("readd", &both));
    let client = support::client();
    for _ in 0..10 {
        let (status, _, _) = support::get(&client, proxy.addr, "/", &[]).await;
        assert_eq!(status, 200);
    }
    assert!(with_endpoint(&proxy.routes, "readd", broken, |e| e
        .health
        .is_ejected(now_ms())));

    // The operator takes it out of the pool, fixes it, and puts it back.
    let old = proxy.routes.replace(support::table(
        &readd_config("readd", &[good.addr.to_string()]),
        2,
    ));
    // Once no request holds the old table: until then the endpoint's
    // state lives on with it, and a table built meanwhile takes it over
    // (a worker may not yet have dropped the table of the answer the test
    // just read).
    let gone = support::eventually(Duration::from_secs(10), || Arc::strong_count(&old) == 1).await;
    assert!(gone, "the old table is still held");
    drop(old);
    let listener = TcpListener::bind(broken)
        .await
        .expect("the port is free again");
    let fixed_hits = Arc::new(AtomicUsize::new(0));
    let hits = fixed_hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let hits = hits.clone();
            tokio::spawn(async move {
                loop {
                    if support::read_head(&mut stream).await.is_empty() {
                        return;
                    }
                    hits.fetch_add(1, Ordering::SeqCst);
                    if stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfixed")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    proxy
        .routes
        .replace(support::table(&readd_config("readd", &both), 3));
    let seen = bodies(proxy.addr, 10, &[]).await;
    let still_ejected = with_endpoint(&proxy.routes, "readd", broken, |e| {
        e.health.is_ejected(now_ms())
    });
    assert!(
        seen.contains(&"fixed".to_string()),
        "an endpoint added back by a reload got none of 10 requests: {seen:?} \
         (still ejected from before it was removed: {still_ejected})"
    );
}

/// A client connection that stays open on hyper's path does not hold the
/// table it started under: after a swap, the old table (and the endpoint
/// state only it has) goes once its requests are done, so an endpoint a
/// reload removed starts anew when it is added back.
#[tokio::test]
async fn an_open_connection_does_not_hold_an_old_table() {
    let upstream = support::upstream("app").await;
    let config = support::pool_config("app", upstream.addr, json!({}));
    let proxy = support::proxy(&config);
    let old = Arc::downgrade(&proxy.routes.snapshot());
    // `TE: trailers` takes hyper's path; the connection stays open.
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nte: trailers\r\n\r\n")
        .await
        .expect("write");
    let answer = support::read_response(&mut stream, &mut Vec::new(), false).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    proxy.routes.replace(support::table(&config, 2));
    let released = support::poll_for(
        Duration::from_secs(5),
        || async { old.strong_count() },
        |count| *count == 0,
    )
    .await;
    assert_eq!(released, 0, "the old table is still held");
    drop(stream);
}
