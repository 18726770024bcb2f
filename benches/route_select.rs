//! The routing decision: route lookup on a table of 100 routes, pool choice,
//! the sticky bucket hash, and building and swapping a table.
//!
//! `cargo bench --bench route_select`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use serde_json::json;
use switchyard_proxy::route::sticky_bucket;
use switchyard_proxy::{RouteTable, Routes};

/// 100 routes: 60 exact hosts, 20 wildcard hosts, 20 path prefixes, each
/// with a 90/10 split, the way a shared ingress looks.
fn hundred_routes() -> switchyard_config::Config {
    let mut routes = Vec::new();
    for i in 0..60 {
        routes.push(
            json!({"name": format!("exact{i}"), "match": {"host": format!("svc{i}.example.com")},
            "split": {"baseline": "stable", "weights": {"stable": 9000, "canary": 1000}}}),
        );
    }
    for i in 0..20 {
        routes.push(
            json!({"name": format!("wild{i}"), "match": {"host": format!("*.zone{i}.example.net")},
            "split": {"baseline": "stable", "weights": {"stable": 9000, "canary": 1000}}}),
        );
    }
    for i in 0..20 {
        routes.push(
            json!({"name": format!("path{i}"), "match": {"path_prefix": format!("/api/v{i}/")},
            "split": {"baseline": "stable", "weights": {"stable": 9000, "canary": 1000}},
            "sticky": {"header": "x-user-id"}}),
        );
    }
    let config = json!({
        "listeners": [{"address": "127.0.0.1:8080"}],
        "pools": {
            "stable": {"endpoints": ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]},
            "canary": {"endpoints": ["127.0.0.1:9011"]},
        },
        "routes": routes,
    });
    switchyard_config::parse(&config.to_string()).expect("valid bench config")
}

fn route_pick(c: &mut Criterion) {
    let config = hundred_routes();
    let table = RouteTable::build(&config, 1).expect("table");
    let headers = HeaderMap::new();
    let mut group = c.benchmark_group("route_pick_100_routes");
    group.bench_function("exact_host_last_of_60", |b| {
        b.iter(|| {
            black_box(table.find_route(&Method::GET, black_box("svc59.example.com"), "/", &headers))
        })
    });
    group.bench_function("wildcard_host", |b| {
        b.iter(|| {
            black_box(table.find_route(
                &Method::GET,
                black_box("shop.zone19.example.net"),
                "/",
                &headers,
            ))
        })
    });
    group.bench_function("path_prefix_last_route", |b| {
        b.iter(|| {
            black_box(table.find_route(
                &Method::GET,
                black_box("unknown.org"),
                black_box("/api/v19/users"),
                &headers,
            ))
        })
    });
    group.finish();

    let route = table
        .find_route(&Method::GET, "svc3.example.com", "/", &headers)
        .expect("route");
    c.bench_function("choose_pool_weighted", |b| {
        b.iter(|| black_box(table.choose_pool(route, &headers).pool))
    });
    let sticky_route = table
        .find_route(&Method::GET, "x.org", "/api/v1/", &headers)
        .expect("route");
    let mut sticky_headers = HeaderMap::new();
    sticky_headers.insert("x-user-id", HeaderValue::from_static("user-1234567"));
    c.bench_function("choose_pool_sticky_header", |b| {
        b.iter(|| black_box(table.choose_pool(sticky_route, &sticky_headers).pool))
    });
    c.bench_function("pick_endpoint_round_robin", |b| {
        b.iter(|| black_box(table.pool(route.baseline).pick().addr))
    });
}

fn sticky(c: &mut Criterion) {
    c.bench_function("sticky_bucket_16_byte_key", |b| {
        b.iter(|| black_box(sticky_bucket(black_box(b"user-0123456789a"))))
    });
}

fn build_and_swap(c: &mut Criterion) {
    let config = hundred_routes();
    let routes = Routes::new(RouteTable::build(&config, 1).expect("table"));
    let mut version = 1;
    c.bench_function("table_build_and_swap_100_routes", |b| {
        b.iter(|| {
            version += 1;
            let table = RouteTable::build(&config, version).expect("table");
            black_box(routes.replace(table));
        })
    });
    c.bench_function("table_snapshot", |b| {
        b.iter(|| black_box(routes.snapshot().version()))
    });
}

criterion_group!(benches, route_pick, sticky, build_and_swap);
criterion_main!(benches);
