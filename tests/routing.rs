//! Routing through real sockets: weighted split, sticky buckets, override,
//! route matching, and table swaps under load.

use crate::support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::json;

#[tokio::test]
async fn canary_receives_its_weight() {
    let blue = support::upstream("blue").await;
    let green = support::upstream("green").await;
    let proxy = support::proxy(&support::split_config(
        &[(&blue, 9000), (&green, 1000)],
        json!({}),
    ));

    let seen = support::send_many(proxy.addr, "/", 10_000).await;

    // Binomial(10_000, 0.1): sd = 30, so 805..=1195 is ±6.5 sd, a chance
    // failure about once in 10^10 runs.
    let green_count = seen.get("green").copied().unwrap_or(0);
    assert!(
        (805..=1195).contains(&green_count),
        "green got {green_count}: {seen:?}"
    );
    assert_eq!(seen.values().sum::<usize>(), 10_000);
}

#[tokio::test]
async fn sticky_users_only_move_into_the_canary() {
    let stable = support::upstream("stable").await;
    let canary = support::upstream("canary").await;
    let sticky = json!({"sticky": {"header": "x-user-id"}});
    let proxy = support::proxy(&support::split_config(
        &[(&stable, 9000), (&canary, 1000)],
        sticky.clone(),
    ));
    let client = support::client();

    let mut before = HashSet::new();
    for id in 0..10_000 {
        let user = format!("user-{id}");
        let (_, _, body) = support::get(&client, proxy.addr, "/", &[("x-user-id", &user)]).await;
        if body == "canary" {
            before.insert(id);
        }
    }
    // Hash buckets behave like Binomial(10_000, 0.1): ±6.5 sd = ±195.
    assert!(
        (805..=1195).contains(&before.len()),
        "canary had {}",
        before.len()
    );

    proxy.routes.replace(support::table(
        &support::split_config(&[(&stable, 5000), (&canary, 5000)], sticky),
        2,
    ));
    let mut after = HashSet::new();
    for id in 0..10_000 {
        let user = format!("user-{id}");
        let (_, _, body) = support::get(&client, proxy.addr, "/", &[("x-user-id", &user)]).await;
        if body == "canary" {
            after.insert(id);
        }
    }
    let moved_out: Vec<_> = before.difference(&after).collect();
    assert!(moved_out.is_empty(), "users left the canary: {moved_out:?}");
    // Binomial(10_000, 0.5): sd = 50, ±6.5 sd = ±325.
    assert!(
        (4675..=5325).contains(&after.len()),
        "canary has {}",
        after.len()
    );

    // The same user, asked again, is still where it was.
    let (_, _, again) = support::get(&client, proxy.addr, "/", &[("x-user-id", "user-7")]).await;
    let expected = if after.contains(&7) {
        "canary"
    } else {
        "stable"
    };
    assert_eq!(again, expected);
}

#[tokio::test]
async fn sticky_cookie_is_set_once_and_then_honoured() {
    let stable = support::upstream("stable").await;
    let canary = support::upstream("canary").await;
    let proxy = support::proxy(&support::split_config(
        &[(&stable, 5000), (&canary, 5000)],
        json!({"sticky": {"cookie": "sy_id", "set_cookie": true}}),
    ));
    let client = support::client();

    for _ in 0..20 {
        let (_, headers, first) = support::get(&client, proxy.addr, "/", &[]).await;
        let set_cookie = headers["set-cookie"].to_str().expect("ascii").to_string();
        assert!(set_cookie.starts_with("sy_id="), "{set_cookie}");
        assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
        let cookie = set_cookie.split(';').next().expect("pair").to_string();
        for _ in 0..5 {
            let (_, headers, body) =
                support::get(&client, proxy.addr, "/", &[("cookie", &cookie)]).await;
            assert_eq!(body, first, "cookie {cookie} changed pool");
            assert!(headers.get("set-cookie").is_none(), "cookie set again");
        }
    }
    // An empty id is no id: a new one is set (every such client would
    // otherwise share one bucket).
    let (_, headers, _) = support::get(&client, proxy.addr, "/", &[("cookie", "sy_id=")]).await;
    let set_cookie = headers
        .get("set-cookie")
        .map(|v| v.to_str().expect("ascii"));
    assert!(
        set_cookie.is_some_and(|c| c.starts_with("sy_id=") && !c.starts_with("sy_id=;")),
        "{set_cookie:?}"
    );
}

#[tokio::test]
async fn override_header_pins_the_pool() {
    let stable = support::upstream("stable").await;
    let canary = support::upstream("canary").await;
    let proxy = support::proxy(&support::split_config(
        &[(&stable, 10_000), (&canary, 0)],
        json!({}),
    ));
    let client = support::client();
    for _ in 0..50 {
        let (_, _, body) =
            support::get(&client, proxy.addr, "/", &[("x-switchyard-pool", "canary")]).await;
        assert_eq!(body, "canary");
    }
    // A name that is not in the split is ignored, not an error.
    let (status, _, body) =
        support::get(&client, proxy.addr, "/", &[("x-switchyard-pool", "nope")]).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "stable"));
}

#[tokio::test]
async fn disabled_override_is_ignored_and_custom_cookie_works() {
    let stable = support::upstream("stable").await;
    let canary = support::upstream("canary").await;
    let off = support::proxy(&support::split_config(
        &[(&stable, 10_000), (&canary, 0)],
        json!({"override": false}),
    ));
    let cookie = support::proxy(&support::split_config(
        &[(&stable, 10_000), (&canary, 0)],
        json!({"override": {"cookie": "pool"}}),
    ));
    let client = support::client();
    for _ in 0..50 {
        let (_, _, body) =
            support::get(&client, off.addr, "/", &[("x-switchyard-pool", "canary")]).await;
        assert_eq!(body, "stable");
        let (_, _, body) =
            support::get(&client, cookie.addr, "/", &[("cookie", "a=b; pool=canary")]).await;
        assert_eq!(body, "canary");
        // The default header is not the source any more.
        let (_, _, body) = support::get(
            &client,
            cookie.addr,
            "/",
            &[("x-switchyard-pool", "canary")],
        )
        .await;
        assert_eq!(body, "stable");
    }
}

#[tokio::test]
async fn routes_match_host_path_method_and_headers_in_order() {
    let api = support::upstream("api").await;
    let wild = support::upstream("wild").await;
    let admin = support::upstream("admin").await;
    let beta = support::upstream("beta").await;
    let fallback = support::upstream("fallback").await;
    let pool = |u: &support::Upstream| json!({"endpoints": [u.addr.to_string()]});
    let route = |name: &str, m: serde_json::Value, to: &str| json!({"name": name, "match": m, "split": {"baseline": to, "weights": {to: 10000}}});
    let config = json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"api": pool(&api), "wild": pool(&wild), "admin": pool(&admin),
                  "beta": pool(&beta), "fallback": pool(&fallback)},
        "routes": [
            route("beta", json!({"headers": {"x-beta": "1"}}), "beta"),
            route("admin", json!({"host": "api.example.com", "path_prefix": "/admin", "methods": ["POST"]}), "admin"),
            route("api", json!({"host": "api.example.com"}), "api"),
            route("wild", json!({"host": "*.example.com"}), "wild"),
            route("exact", json!({"path_exact": "/only"}), "fallback"),
        ],
    });
    let proxy = support::proxy(&config);
    let client = support::client();
    let ask =
        |host: &'static str, path: &'static str, extra: Option<(&'static str, &'static str)>| {
            let client = client.clone();
            let addr = proxy.addr;
            async move {
                let mut headers = vec![("host", host)];
                headers.extend(extra);
                support::get(&client, addr, path, &headers).await
            }
        };
    assert_eq!(
        ask("api.example.com", "/admin/x", None).await.2,
        "api",
        "GET is not POST"
    );
    assert_eq!(ask("API.Example.com:8080", "/v1", None).await.2, "api");
    // A fully qualified name's trailing dot names the same host.
    assert_eq!(ask("api.example.com.", "/v1", None).await.2, "api");
    assert_eq!(ask("shop.example.com", "/", None).await.2, "wild");
    assert_eq!(ask("other.org", "/only", None).await.2, "fallback");
    assert_eq!(ask("other.org", "/", Some(("x-beta", "1"))).await.2, "beta");
    let (status, _, body) = ask("other.org", "/only/not", None).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("no route matches host \"other.org\""),
        "{body}"
    );

    let request = http::Request::post(format!("http://{}/admin/users", proxy.addr))
        .header("host", "api.example.com")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .expect("request");
    let (_, body) = support::exchange(&client, request).await;
    assert_eq!(body, "admin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_under_load_fail_no_request_and_never_mix_tables() {
    // Table A sends everything to a_canary, table B to b_stable. The other
    // two endpoints have weight 0 in their own table, so a request that
    // mixed one table's weights with the other's pools would reach them.
    let a_stable = support::upstream("a_stable").await;
    let a_canary = support::upstream("a_canary").await;
    let b_stable = support::upstream("b_stable").await;
    let b_canary = support::upstream("b_canary").await;
    let config = |stable: &support::Upstream, canary: &support::Upstream, canary_bp: i64| {
        json!({
            "listeners": [{"address": "127.0.0.1:0"}],
            "pools": {
                "stable": {"endpoints": [stable.addr.to_string()]},
                "canary": {"endpoints": [canary.addr.to_string()]},
            },
            "routes": [{"name": "web", "split": {"baseline": "stable",
                "weights": {"stable": 10000 - canary_bp, "canary": canary_bp}}}],
        })
    };
    let table_a = config(&a_stable, &a_canary, 10_000);
    let table_b = config(&b_stable, &b_canary, 0);
    let proxy = support::proxy(&table_a);

    let answered = Arc::new(AtomicUsize::new(0));
    let swapping = Arc::new(AtomicBool::new(true));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let answered = answered.clone();
        let swapping = swapping.clone();
        let addr = proxy.addr;
        clients.push(tokio::spawn(async move {
            let client = support::client();
            let mut bodies = Vec::new();
            while swapping.load(Ordering::Relaxed) || bodies.len() < 100 {
                let (status, _, body) = support::get(&client, addr, "/", &[]).await;
                assert_eq!(status, 200, "failed during swaps: {body}");
                bodies.push(body);
                answered.fetch_add(1, Ordering::Relaxed);
            }
            bodies
        }));
    }

    let routes = proxy.routes.clone();
    let swapper_answered = answered.clone();
    let swapper = tokio::task::spawn_blocking(move || {
        for swap in 0..1_000u64 {
            // Pace swaps by traffic, not by time: each waits for a few
            // more answers, so swaps land among requests in flight.
            let mark = swapper_answered.load(Ordering::Relaxed);
            while swapper_answered.load(Ordering::Relaxed) < mark + 3 {
                std::thread::yield_now();
            }
            let next = if swap % 2 == 0 { &table_b } else { &table_a };
            routes.replace(support::table(next, swap + 2));
        }
    });
    swapper.await.expect("swapper");
    swapping.store(false, Ordering::Relaxed);

    let mut total = 0;
    let mut seen = std::collections::HashMap::new();
    for client in clients {
        for body in client.await.expect("client") {
            total += 1;
            *seen.entry(body).or_insert(0usize) += 1;
        }
    }
    assert!(total >= 3_000, "only {total} requests");
    let allowed: HashSet<&str> = ["a_canary", "b_stable"].into();
    for body in seen.keys() {
        assert!(
            allowed.contains(body.as_str()),
            "a response came from {body}: {seen:?}"
        );
    }
    assert!(
        seen.contains_key("a_canary") && seen.contains_key("b_stable"),
        "{seen:?}"
    );
}
