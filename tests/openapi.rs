//! `admin/openapi.json` and the admin router agree: every operation the
//! document names is served, every other method on its paths is 405, and
//! paths it does not name are 404.

use crate::support;

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

async fn call(admin: SocketAddr, method: &Method, path: &str) -> (u16, Option<String>) {
    let body = match (method.as_str(), path) {
        ("PUT", p) if p.ends_with("/weights") => {
            json!({"weights": {"stable": 5000, "canary": 5000}})
        }
        ("POST", p) if p.ends_with("/rollout") => {
            json!({"strategy": "canary", "steps": [{"weight": 100}]})
        }
        _ => Value::Null,
    };
    let mut request = Request::builder()
        .method(method.clone())
        .uri(format!("http://{admin}{path}"));
    let bytes = if body.is_null() {
        Bytes::new()
    } else {
        request = request.header("content-type", "application/json");
        Bytes::from(body.to_string())
    };
    let response = support::client()
        .request(request.body(Full::new(bytes)).expect("request"))
        .await
        .expect("response");
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_string();
    if content_type == "text/event-stream" || content_type.starts_with("text/plain") {
        return (status, None);
    }
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let value: Value = serde_json::from_slice(&body).expect("JSON");
    (status, value["error"]["code"].as_str().map(str::to_string))
}

#[tokio::test]
async fn the_document_and_the_router_agree() {
    let spec: Value =
        serde_json::from_str(include_str!("../admin/openapi.json")).expect("openapi.json parses");
    let stable = support::upstream("stable").await;
    let canary = support::upstream("canary").await;
    let setup = support::admin_setup(
        &support::split_config(&[(&stable, 9000), (&canary, 1000)], json!({})),
        None,
    );
    let all = [
        Method::GET,
        Method::PUT,
        Method::POST,
        Method::DELETE,
        Method::PATCH,
    ];
    let paths = spec["paths"].as_object().expect("paths");
    assert!(paths.len() >= 12, "the document lost paths");
    for (template, operations) in paths {
        let path = template.replace("{route}", "web");
        for method in &all {
            let documented = operations
                .get(method.as_str().to_ascii_lowercase())
                .is_some();
            let (status, code) = call(setup.admin, method, &path).await;
            if documented {
                assert!(
                    !matches!(code.as_deref(), Some("not_found" | "method_not_allowed")),
                    "{method} {template} is documented but not routed ({status} {code:?})"
                );
            } else {
                assert_eq!(
                    (status, code.as_deref()),
                    (405, Some("method_not_allowed")),
                    "{method} {template} is routed but not documented"
                );
            }
        }
    }
    for undocumented in [
        "/v2/routes",
        "/v1/routes/web/unknown",
        "/v1/routes/web/rollout/skip",
        "/",
    ] {
        let (status, code) = call(setup.admin, &Method::GET, undocumented).await;
        assert_eq!(
            (status, code.as_deref()),
            (404, Some("not_found")),
            "{undocumented}"
        );
    }
}
