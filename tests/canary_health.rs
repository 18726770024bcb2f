//! Automatic fallback, end to end: two upstreams whose error rate and
//! latency change at run time (seeded randomness), an open-loop load at a
//! fixed rate through the real proxy, and the fallback time measured from
//! the moment the canary turns bad to the fallback event — cross-checked by
//! when the canary stopped receiving requests.

use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// An upstream whose error probability (parts per million) and added
/// latency can be changed while it runs.
#[derive(Clone)]
struct Chaos {
    name: String,
    addr: SocketAddr,
    error_ppm: Arc<AtomicU32>,
    delay_ms: Arc<AtomicU32>,
    served: Arc<AtomicUsize>,
    /// When it last answered, in ms since the test started.
    last_ms: Arc<AtomicU64>,
}

async fn chaos_upstream(name: &str, seed: u64, epoch: Instant) -> Chaos {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let chaos = Chaos {
        name: name.to_string(),
        addr: listener.local_addr().expect("addr"),
        error_ppm: Arc::new(AtomicU32::new(0)),
        delay_ms: Arc::new(AtomicU32::new(0)),
        served: Arc::new(AtomicUsize::new(0)),
        last_ms: Arc::new(AtomicU64::new(0)),
    };
    let rng = Arc::new(Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)));
    let state = chaos.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let state = state.clone();
            let rng = rng.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_request: Request<Incoming>| {
                    let state = state.clone();
                    let rng = rng.clone();
                    async move {
                        let fail = {
                            let mut rng = rng.lock().expect("rng");
                            rng.random_range(0..1_000_000) < state.error_ppm.load(Ordering::Relaxed)
                        };
                        let delay = state.delay_ms.load(Ordering::Relaxed);
                        if delay > 0 {
                            // The upstream's simulated service time, not a wait for an event.
                            tokio::time::sleep(Duration::from_millis(u64::from(delay))).await;
                        }
                        state.served.fetch_add(1, Ordering::Relaxed);
                        state
                            .last_ms
                            .store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                        let mut response =
                            Response::new(Full::new(Bytes::from(state.name.clone())));
                        if fail {
                            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    chaos
}

struct Scenario {
    route: String,
    setup: support::AdminSetup,
    stable: Chaos,
    canary: Chaos,
    epoch: Instant,
}

/// Scenarios run one at a time: each drives 1,000 requests a second
/// through a debug build, and timing claims need the CPU to themselves.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A route of its own per scenario: the data plane's counters are
/// process-wide, keyed by route and pool, and tests run side by side.
async fn scenario(route: &str, canary_bp: i64, seed: u64) -> Scenario {
    scenario_with(route, canary_bp, seed, json!(null)).await
}

/// A scenario whose route has `canary_health` settings.
async fn scenario_with(route: &str, canary_bp: i64, seed: u64, health: Value) -> Scenario {
    let epoch = Instant::now();
    let stable = chaos_upstream("stable", seed, epoch).await;
    let canary = chaos_upstream("canary", seed + 1, epoch).await;
    let config = json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"stable": {"endpoints": [stable.addr.to_string()]},
                  "canary": {"endpoints": [canary.addr.to_string()]}},
        "routes": [{"name": route, "split": {"baseline": "stable",
            "weights": {"stable": 10_000 - canary_bp, "canary": canary_bp}}}],
    });
    let mut config = config;
    if !health.is_null() {
        config["routes"][0]["canary_health"] = health;
    }
    Scenario {
        route: route.to_string(),
        setup: support::admin_setup(&config, None),
        stable,
        canary,
        epoch,
    }
}

/// Waits up to `limit` for a fallback; returns how long it took.
async fn time_to_fallback(s: &Scenario, since: Instant, limit: Duration) -> Option<Duration> {
    while since.elapsed() < limit + Duration::from_secs(2) {
        if !support::fallbacks(s.setup.admin).await.is_empty() {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Runs `duration` of traffic and asserts that nothing fell back.
async fn assert_no_fallback_for(s: &Scenario, duration: Duration) {
    let start = Instant::now();
    while start.elapsed() < duration {
        let found = support::fallbacks(s.setup.admin).await;
        assert!(
            found.is_empty(),
            "fell back on noise after {:?}: {found:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_canary_fails_completely_fallback_within_a_second() {
    let _serial = SERIAL.lock().await;
    let s = scenario("t2", 500, 2).await;
    let load = support::open_loop(s.setup.proxy, 1000);
    // Warm up: both pools healthy for 3 s, so the baseline has a history.
    assert_no_fallback_for(&s, Duration::from_secs(3)).await;
    let broke = Instant::now();
    let broke_ms = s.epoch.elapsed().as_millis() as u64;
    s.canary.error_ppm.store(1_000_000, Ordering::Relaxed);
    let took = time_to_fallback(&s, broke, Duration::from_secs(1)).await;
    let took = took.expect("no fallback at all");
    assert!(
        took <= Duration::from_millis(1000),
        "fallback took {took:?}: {:?}; {} requests sent",
        support::fallbacks(s.setup.admin).await,
        load.sent.load(Ordering::Relaxed)
    );
    // Cross-check: the canary stopped getting requests by then.
    let served = s.canary.served.load(Ordering::Relaxed);
    assert_no_fallback_then_quiet(&s, served).await;
    let last = s.canary.last_ms.load(Ordering::Relaxed);
    assert!(
        last.saturating_sub(broke_ms) <= 1_100,
        "canary still served {} ms after the break",
        last - broke_ms
    );
    let event = support::fallbacks(s.setup.admin).await.remove(0);
    assert_eq!(
        event["new_weights"],
        json!({"stable": 10000, "canary": 0}),
        "{event}"
    );
    assert!(
        event["reason"]
            .as_str()
            .is_some_and(|r| r.contains("errors")),
        "{event}"
    );
    assert_eq!(load.failed.load(Ordering::Relaxed), 0);
}

/// After a fallback the canary gets no more requests.
async fn assert_no_fallback_then_quiet(s: &Scenario, served: usize) {
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_millis(500) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = s.canary.served.load(Ordering::Relaxed);
        // Requests already in flight at the swap may still land.
        assert!(
            now <= served + 20,
            "the canary still receives traffic after the fallback"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t3_both_pools_at_one_percent_never_fall_back() {
    let _serial = SERIAL.lock().await;
    let s = scenario("t3", 500, 3).await;
    s.stable.error_ppm.store(10_000, Ordering::Relaxed);
    s.canary.error_ppm.store(10_000, Ordering::Relaxed);
    let load = support::open_loop(s.setup.proxy, 1000);
    assert_no_fallback_for(&s, Duration::from_secs(20)).await;
    assert!(
        load.sent.load(Ordering::Relaxed) > 15_000,
        "the load did not keep its rate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t8_shared_outage_is_not_blamed_on_the_canary() {
    let _serial = SERIAL.lock().await;
    let s = scenario("t8", 500, 8).await;
    let _load = support::open_loop(s.setup.proxy, 1000);
    assert_no_fallback_for(&s, Duration::from_secs(3)).await;
    s.stable.error_ppm.store(400_000, Ordering::Relaxed);
    s.canary.error_ppm.store(400_000, Ordering::Relaxed);
    assert_no_fallback_for(&s, Duration::from_secs(10)).await;
    let (_, _, status) = support::get(
        &support::client(),
        s.setup.admin,
        &format!("/v1/routes/{}/health", s.route),
        &[],
    )
    .await;
    let status: Value = serde_json::from_str(&status).expect("health JSON");
    assert_eq!(status["baseline_failing"], true, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_canary_fails_half_its_requests_fallback_within_1_5_s() {
    let _serial = SERIAL.lock().await;
    let s = scenario("t1", 500, 1).await;
    let _load = support::open_loop(s.setup.proxy, 1000);
    assert_no_fallback_for(&s, Duration::from_secs(3)).await;
    let broke = Instant::now();
    s.canary.error_ppm.store(500_000, Ordering::Relaxed);
    let took = time_to_fallback(&s, broke, Duration::from_millis(1500))
        .await
        .expect("no fallback at all");
    assert!(
        took <= Duration::from_millis(1500),
        "fallback took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t5_low_traffic_canary_failure_is_caught_within_10_s() {
    let _serial = SERIAL.lock().await;
    let s = scenario("t5", 1000, 5).await;
    let _load = support::open_loop(s.setup.proxy, 20);
    assert_no_fallback_for(&s, Duration::from_secs(3)).await;
    let broke = Instant::now();
    s.canary.error_ppm.store(1_000_000, Ordering::Relaxed);
    let took = time_to_fallback(&s, broke, Duration::from_secs(10))
        .await
        .expect("no fallback at all");
    assert!(took <= Duration::from_secs(10), "fallback took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t9_a_slow_canary_falls_back_on_latency_within_5_s() {
    let _serial = SERIAL.lock().await;
    let s = scenario("t9", 1000, 9).await;
    // Both pools take about 20 ms; the baseline's p99 sets the bar (slow
    // is over max(1.5 × p99, p99 + 10 ms)). At 20 ms rather than 10, the
    // scheduling jitter of a busy machine (a few ms on the baseline's p99)
    // cannot lift the bar up to the slowed canary's 3 × latency.
    s.stable.delay_ms.store(20, Ordering::Relaxed);
    s.canary.delay_ms.store(20, Ordering::Relaxed);
    let _load = support::open_loop(s.setup.proxy, 500);
    assert_no_fallback_for(&s, Duration::from_secs(4)).await;
    let broke = Instant::now();
    s.canary.delay_ms.store(60, Ordering::Relaxed);
    let took = time_to_fallback(&s, broke, Duration::from_secs(5))
        .await
        .expect("no fallback at all");
    assert!(took <= Duration::from_secs(5), "fallback took {took:?}");
    let event = support::fallbacks(s.setup.admin).await.remove(0);
    assert_eq!(event["evidence"]["arm"], "latency", "{event}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t9b_a_slowdown_both_pools_share_is_not_blamed_on_the_canary() {
    let _serial = SERIAL.lock().await;
    let s = scenario("t9b", 1000, 19).await;
    s.stable.delay_ms.store(10, Ordering::Relaxed);
    s.canary.delay_ms.store(10, Ordering::Relaxed);
    let _load = support::open_loop(s.setup.proxy, 500);
    assert_no_fallback_for(&s, Duration::from_secs(4)).await;
    s.stable.delay_ms.store(30, Ordering::Relaxed);
    s.canary.delay_ms.store(30, Ordering::Relaxed);
    assert_no_fallback_for(&s, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t4_both_pools_at_three_percent_never_fall_back() {
    let _serial = SERIAL.lock().await;
    let s = scenario("t4", 1000, 4).await;
    s.stable.error_ppm.store(30_000, Ordering::Relaxed);
    s.canary.error_ppm.store(30_000, Ordering::Relaxed);
    let load = support::open_loop(s.setup.proxy, 1000);
    assert_no_fallback_for(&s, Duration::from_secs(60)).await;
    assert!(
        load.sent.load(Ordering::Relaxed) > 45_000,
        "the load did not keep its rate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t6_low_traffic_with_one_percent_errors_never_falls_back() {
    let _serial = SERIAL.lock().await;
    let s = scenario("t6", 1000, 6).await;
    s.stable.error_ppm.store(10_000, Ordering::Relaxed);
    s.canary.error_ppm.store(10_000, Ordering::Relaxed);
    let _load = support::open_loop(s.setup.proxy, 20);
    assert_no_fallback_for(&s, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t7_a_small_regression_is_caught_within_30_s() {
    let _serial = SERIAL.lock().await;
    let s = scenario("t7", 1000, 7).await;
    s.stable.error_ppm.store(10_000, Ordering::Relaxed);
    s.canary.error_ppm.store(10_000, Ordering::Relaxed);
    let _load = support::open_loop(s.setup.proxy, 1000);
    assert_no_fallback_for(&s, Duration::from_secs(5)).await;
    let broke = Instant::now();
    s.canary.error_ppm.store(50_000, Ordering::Relaxed);
    let took = time_to_fallback(&s, broke, Duration::from_secs(30))
        .await
        .expect("no fallback at all");
    assert!(took <= Duration::from_secs(30), "fallback took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t8b_shared_error_bursts_never_fall_back() {
    let _serial = SERIAL.lock().await;
    let s = scenario("t8b", 1000, 18).await;
    let _load = support::open_loop(s.setup.proxy, 1000);
    let start = Instant::now();
    // 2-s bursts of 20% errors in both pools together, every 10 s.
    while start.elapsed() < Duration::from_secs(60) {
        assert_no_fallback_for(&s, Duration::from_secs(8)).await;
        s.stable.error_ppm.store(200_000, Ordering::Relaxed);
        s.canary.error_ppm.store(200_000, Ordering::Relaxed);
        assert_no_fallback_for(&s, Duration::from_secs(2)).await;
        s.stable.error_ppm.store(0, Ordering::Relaxed);
        s.canary.error_ppm.store(0, Ordering::Relaxed);
    }
    assert_no_fallback_for(&s, Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_weight_change_under_shared_noise_does_not_fall_back() {
    let _serial = SERIAL.lock().await;
    let s = scenario("t10", 500, 10).await;
    s.stable.error_ppm.store(10_000, Ordering::Relaxed);
    s.canary.error_ppm.store(10_000, Ordering::Relaxed);
    let _load = support::open_loop(s.setup.proxy, 1000);
    assert_no_fallback_for(&s, Duration::from_secs(30)).await;
    let request = Request::put(format!("http://{}/v1/routes/t10/weights", s.setup.admin))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            json!({"weights": {"stable": 8000, "canary": 2000}}).to_string(),
        )))
        .expect("request");
    let response = support::client().request(request).await.expect("response");
    assert_eq!(response.status(), 200);
    assert_no_fallback_for(&s, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_error_slo_falls_back_even_when_the_baseline_fails_as_much() {
    let _serial = SERIAL.lock().await;
    let s = scenario_with("slo", 1000, 11, json!({"max_error_rate": 0.02})).await;
    let _load = support::open_loop(s.setup.proxy, 1000);
    assert_no_fallback_for(&s, Duration::from_secs(3)).await;
    // A shared 20% outage: relative to the baseline the canary is fine,
    // but the route's SLO says 2%.
    let broke = Instant::now();
    s.stable.error_ppm.store(200_000, Ordering::Relaxed);
    s.canary.error_ppm.store(200_000, Ordering::Relaxed);
    let took = time_to_fallback(&s, broke, Duration::from_secs(5))
        .await
        .expect("the SLO did not fire");
    assert!(took <= Duration::from_secs(5), "took {took:?}");
    let event = support::fallbacks(s.setup.admin).await.remove(0);
    assert_eq!(event["evidence"]["arm"], "slo_errors", "{event}");
}
