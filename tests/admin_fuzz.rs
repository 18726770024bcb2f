//! A seeded fuzz of the admin API and of the config parser, through the
//! real `switchyard` binary, real sockets and real files: every refused
//! call is a 4xx with a JSON error and changes nothing, every
//! acknowledged one survives kill -9, every refused config names its line
//! and column on one line. The two `campaign_*` tests are the fuzzers
//! (fixed seed, `FUZZ_SEED` for another, a time budget; a failure prints
//! the seed, the step and the input); the others are the bugs they found,
//! fixed.
use crate::support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{json, Value};
use support::{admin_call, check_file, put_config};

// ---------------------------------------------------------------- helpers

/// xorshift64*: small, deterministic, good enough to pick inputs.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A fresh directory of this test's own.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "switchyard-admin-fuzz-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Three routes over three pools; nothing needs to listen on the endpoints
/// (the admin API is what is exercised).
fn base_config() -> Value {
    json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {
            "blue": {"endpoints": ["127.0.0.1:1"]},
            "green": {"endpoints": ["127.0.0.1:2"]},
            "red": {"endpoints": ["127.0.0.1:3"]}
        },
        "routes": [
            {"name": "web", "split": {"baseline": "blue", "weights": {"blue": 9000, "green": 1000}}},
            {"name": "three", "split": {"baseline": "blue", "weights": {"blue": 8000, "green": 1000, "red": 1000}}},
            {"name": "a.b", "match": {"path_prefix": "/x"},
             "split": {"baseline": "green", "weights": {"blue": 0, "green": 10000}}}
        ]
    })
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).expect("serializes")
}

/// `switchyard run` on `file` with its state in `state`, admin on a free
/// port, one worker.
async fn start(file: &Path, state: &Path) -> (tokio::process::Child, SocketAddr) {
    let (child, _proxy, admin) = support::start_binary(&[
        "run",
        "--config",
        file.to_str().expect("utf-8 path"),
        "--admin",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--state-dir",
        state.to_str().expect("utf-8 path"),
    ])
    .await;
    (child, admin)
}

const JSON: (&str, &str) = ("content-type", "application/json");

/// What a refused call must leave as it was: the routes (version, weights,
/// baselines, rollouts, without the clock's `remaining_ms`) and the events.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    routes: Value,
    events: usize,
    last_event: u64,
}

impl Snapshot {
    fn version(&self) -> u64 {
        self.routes["version"].as_u64().expect("version")
    }
    fn route(&self, name: &str) -> Option<&Value> {
        self.routes["routes"]
            .as_array()
            .expect("routes")
            .iter()
            .find(|r| r["name"] == name)
    }
}

async fn snapshot(admin: SocketAddr) -> Snapshot {
    let (status, _, body) = admin_call(admin, Method::GET, "/v1/routes", &[], "").await;
    assert_eq!(status, 200, "{body}");
    let mut routes: Value = serde_json::from_str(&body).expect("JSON");
    for route in routes["routes"].as_array_mut().expect("routes") {
        let route = route.as_object_mut().expect("object");
        for static_field in ["pools", "override", "match", "sticky"] {
            route.remove(static_field);
        }
        if let Some(rollout) = route.get_mut("rollout").and_then(Value::as_object_mut) {
            rollout.remove("remaining_ms");
        }
    }
    let (status, _, body) = admin_call(admin, Method::GET, "/v1/events", &[], "").await;
    assert_eq!(status, 200, "{body}");
    let events: Value = serde_json::from_str(&body).expect("JSON");
    let events = events["events"].as_array().expect("events");
    Snapshot {
        routes,
        events: events.len(),
        last_event: events.last().map_or(0, |e| e["id"].as_u64().expect("id")),
    }
}

/// `error: FILE:LINE:COLUMN: rest` as `switchyard check` prints it, with
/// the byte offset LINE:COLUMN names in `text` (None when it is outside).
fn parse_check_error(file: &Path, stderr: &str, text: &[u8]) -> Result<(usize, String), String> {
    let stderr = stderr.trim_end();
    if stderr.lines().count() != 1 {
        return Err(format!("not exactly one line: {stderr:?}"));
    }
    let prefix = format!("error: {}:", file.display());
    let rest = stderr
        .strip_prefix(&prefix)
        .ok_or_else(|| format!("does not start with {prefix:?}: {stderr:?}"))?;
    let mut parts = rest.splitn(3, ':');
    let line: usize = parts
        .next()
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| format!("no line: {stderr:?}"))?;
    let column: usize = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no column: {stderr:?}"))?;
    let reason = parts.next().unwrap_or_default().trim().to_string();
    let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    if line == 0 || line > lines.len() || column == 0 || column > lines[line - 1].len() + 1 {
        return Err(format!(
            "{line}:{column} is outside the file ({} lines): {stderr:?}",
            lines.len()
        ));
    }
    let offset = lines[..line - 1].iter().map(|l| l.len() + 1).sum::<usize>() + column - 1;
    Ok((offset, reason))
}

// ------------------------------------------------------------ bug proofs

/// `If-Match` is compared strongly (RFC 9110 §13.1.1): the same
/// characters. `"01"` and `"+1"` matched version 1 (parsed as numbers).
#[tokio::test]
async fn if_match_is_compared_as_a_tag_not_as_a_number() {
    let dir = temp_dir("if-match");
    let file = dir.join("config.json");
    std::fs::write(&file, pretty(&base_config())).expect("write");
    let (_child, admin) = start(&file, &dir.join("state")).await;

    let (status, headers, _) = admin_call(admin, Method::GET, "/v1/routes/web", &[], "").await;
    assert_eq!(status, 200);
    let etag = headers["etag"].to_str().expect("etag").to_string();
    let version = etag.trim_matches('"').to_string();
    for tag in [format!("\"0{version}\""), format!("\"+{version}\"")] {
        let before = snapshot(admin).await;
        let (status, _, body) = admin_call(
            admin,
            Method::PUT,
            "/v1/routes/web/weights",
            &[JSON, ("if-match", &tag)],
            r#"{"weights": {"blue": 5000, "green": 5000}}"#,
        )
        .await;
        let after = snapshot(admin).await;
        assert_eq!(
            status,
            StatusCode::PRECONDITION_FAILED,
            "If-Match: {tag} against ETag {etag} was taken as a match: {body}"
        );
        assert_eq!(after, before, "a stale call changed the state");
    }
}

/// `PUT /v1/config` with an `admin` section the next start would refuse
/// (TLS files that cannot load; an address reachable from other hosts
/// without a token) was acknowledged and written: the proxy then did not
/// come back after a restart. Refused now, the file and table untouched.
#[tokio::test]
async fn put_config_refuses_admin_tls_that_cannot_load() {
    let dir = temp_dir("admin-tls");
    let file = dir.join("config.json");
    std::fs::write(&file, pretty(&base_config())).expect("write");
    let (_child, admin) = start(&file, &dir.join("state")).await;
    let on_disk = std::fs::read_to_string(&file).expect("read");
    let before = snapshot(admin).await;

    let mut config = base_config();
    config["admin"] = json!({"tls": {
        "cert_file": dir.join("missing-cert.pem"),
        "key_file": dir.join("missing-key.pem"),
    }});
    let (status, body) = put_config(admin, pretty(&config)).await;
    let (check_ok, _, check_err) = check_file(&file);
    assert!(
        (400..500).contains(&status),
        "PUT /v1/config answered {status} {body}; `switchyard check` on the file it wrote: ok={check_ok} {check_err}"
    );
    assert_eq!(std::fs::read_to_string(&file).expect("read"), on_disk);
    assert_eq!(snapshot(admin).await.routes, before.routes);
}

/// The same for an admin address reachable from other hosts when the
/// process has no token and takes its admin address from the file (no
/// `--admin`): the next start would refuse it. A loopback one is taken
/// (for the next start).
#[tokio::test]
async fn put_config_refuses_an_exposed_admin_address_without_a_token() {
    let dir = temp_dir("admin-exposed");
    let file = dir.join("config.json");
    let mut config = base_config();
    config["admin"] = json!({"address": format!("127.0.0.1:{}", support::free_port())});
    std::fs::write(&file, pretty(&config)).expect("write");
    let file_arg = file.to_str().expect("utf-8 path");
    let (_child, _, admin) =
        support::start_binary(&["run", "--config", file_arg, "--workers", "1"]).await;
    let on_disk = std::fs::read_to_string(&file).expect("read");
    let before = snapshot(admin).await;
    config["admin"] = json!({"address": "0.0.0.0:9"});
    let (status, body) = put_config(admin, pretty(&config)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "admin", "{body}");
    assert_eq!(std::fs::read_to_string(&file).expect("read"), on_disk);
    assert_eq!(snapshot(admin).await.routes, before.routes);
    config["admin"] = json!({"address": format!("127.0.0.1:{}", support::free_port())});
    let (status, body) = put_config(admin, pretty(&config)).await;
    assert_eq!(status, 200, "{body}");
}

/// A `PUT /v1/config` body that is not UTF-8 is refused at its first bad
/// byte's line and column, as the same bytes in the file are (it said
/// only "the config is not UTF-8").
#[tokio::test]
async fn put_config_that_is_not_utf8_names_line_and_column() {
    let dir = temp_dir("utf8");
    let file = dir.join("config.json");
    std::fs::write(&file, pretty(&base_config())).expect("write");
    let (_child, admin) = start(&file, &dir.join("state")).await;

    let body = b"{\n  \"listeners\": [\xff]\n}".to_vec();
    let bad_file = dir.join("bad.json");
    std::fs::write(&bad_file, &body).expect("write");
    let (ok, _, check_err) = check_file(&bad_file);
    assert!(!ok);
    assert!(check_err.contains(":2:17:"), "{check_err}");

    let request = http::Request::put(format!("http://{admin}/v1/config"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .expect("request");
    let (status, answer) = support::exchange(&support::client(), request).await;
    assert_eq!(status, 400, "{answer}");
    let answer: Value = serde_json::from_str(&answer).expect("JSON");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("2:17"),
        "no line and column in the refusal (`check` says {:?}): {answer}",
        check_err.trim()
    );
}

/// `match.headers` rules whose names differ only in case (`X-Env` and
/// `x-env`) were both taken, so the route matched only requests carrying
/// both values; refused as a rule given twice.
#[test]
fn header_rules_differing_only_in_case_are_refused() {
    let dir = temp_dir("header-case");
    let file = dir.join("config.json");
    let text = r#"{
  "listeners": [{"address": "127.0.0.1:0"}],
  "pools": {"a": {"endpoints": ["127.0.0.1:1"]}},
  "routes": [{"name": "r",
              "match": {"headers": {"X-Env": "prod", "x-env": "dev"}},
              "split": {"baseline": "a", "weights": {"a": 10000}}}]
}"#;
    std::fs::write(&file, text).expect("write");
    let (ok, stdout, stderr) = check_file(&file);
    assert!(!ok, "accepted:\n{stdout}");
    let (offset, reason) = parse_check_error(&file, &stderr, text.as_bytes()).expect("format");
    let line = text[..offset].matches('\n').count() + 1;
    assert_eq!(line, 5, "{reason}");
}

/// A key with a control byte (a pool named `"a\nb"`) split the one-line
/// `FILE:LINE:COLUMN: path: reason` error over two lines; the path now
/// quotes such a key as JSON (`pools["a\nb"]`).
#[test]
fn an_error_about_a_key_with_a_newline_is_one_line() {
    let dir = temp_dir("newline-key");
    let file = dir.join("config.json");
    let text = r#"{
  "listeners": [{"address": "127.0.0.1:0"}],
  "pools": {"a\nb": {"endpoints": ["127.0.0.1:1"]}},
  "routes": [{"name": "r", "split": {"baseline": "a\nb", "weights": {"a\nb": 10000}}}]
}"#;
    std::fs::write(&file, text).expect("write");
    let (ok, _, stderr) = check_file(&file);
    assert!(!ok);
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "the error is not one line: {stderr:?}"
    );
}

/// Whether an error's line and message place a mutation right.
type LocationCheck = Box<dyn Fn(usize, &str) -> bool>;

// ------------------------------------------------------ campaign: admin

/// One random admin call: method, path, headers, body, and what a 2xx
/// must have done.
struct Call {
    method: Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// For a PUT of weights: the weights a 2xx must show, per pool given.
    asked_weights: Option<(String, serde_json::Map<String, Value>)>,
    /// For a PUT /v1/config: the text a 2xx must have written.
    config_text: Option<String>,
    /// A change the API acknowledges by bumping the version.
    mutating: bool,
}

/// Mostly real routes (some percent-encoded), so that calls get through to
/// the state machine; the rest unknown or broken.
const ROUTES: &[&str] = &[
    "web", "web", "web", "three", "three", "a.b", "a.b", "a%2Eb", "%77eb", "nope", "", "web%2F",
    "we%20b", "%zz", "%C3%A9",
];
const POOLS: &[&str] = &["blue", "green", "red", "nope"];

fn random_weight(rng: &mut Rng) -> Value {
    let weights = [
        json!(0),
        json!(1),
        json!(500),
        json!(1000),
        json!(5000),
        json!(10000),
        json!(10001),
        json!(-1),
        json!(25.5),
        json!(12.345),
        json!(0.01),
        json!(100.0),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1e300),
        json!("10"),
        json!(null),
        json!([]),
        json!({}),
        json!(true),
    ];
    rng.pick(&weights).clone()
}

fn random_weights_body(rng: &mut Rng) -> (Vec<u8>, Option<serde_json::Map<String, Value>>) {
    let k = rng.below(10);
    if k < 5 {
        // Often valid: a share of 10,000 over a few pools.
        let mut pools = vec!["blue", "green", "red"];
        let n = 1 + rng.below(3);
        let mut chosen = Vec::new();
        for _ in 0..n {
            let i = rng.below(pools.len());
            chosen.push(pools.remove(i));
        }
        let percent = rng.chance(30);
        let mut left = 10_000i64;
        let mut weights = serde_json::Map::new();
        for (i, pool) in chosen.iter().enumerate() {
            let w = if i + 1 == chosen.len() {
                left
            } else {
                (*rng.pick(&[0i64, 100, 1000, 2500, 5000])).min(left)
            };
            left -= w;
            let value = if percent {
                json!(w as f64 / 100.0)
            } else {
                json!(w)
            };
            weights.insert(pool.to_string(), value);
        }
        let body = json!({ "weights": weights }).to_string();
        return (body.into_bytes(), Some(weights));
    }
    if k < 8 {
        let mut weights = serde_json::Map::new();
        for _ in 0..rng.below(4) {
            weights.insert(rng.pick(POOLS).to_string(), random_weight(rng));
        }
        let body = json!({ "weights": weights }).to_string();
        return (body.into_bytes(), Some(weights));
    }
    let odd: [&[u8]; 14] = [
        b"",
        b"{",
        b"{\"weights\":",
        b"null",
        b"[]",
        b"{\"weights\": {\"blue\": 10000}, \"x\": 1}",
        b"{\"weights\": {\"blue\": 5000, \"blue\": 5000}}",
        b"{\"weights\": {\"blue\": 10000}} {}",
        b"{\"weights\": {\"blue\": 1e400}}",
        b"\xff\xfe",
        b"{\"weights\": {\"blue\": 10000}}\x00",
        b"{\"weights\": {\"b\xc3\": 10000}}",
        b"{\"weights\": {\"blue\": 9999.999999}}",
        b"{\"weights\": {\"blue\": 10000, \"green\": -0}}",
    ];
    let body = rng.pick(&odd).to_vec();
    if rng.chance(10) {
        // Deeply nested.
        let depth = 200 + rng.below(2000);
        let mut deep = b"{\"weights\": ".to_vec();
        deep.extend(std::iter::repeat_n(b'[', depth));
        deep.extend(std::iter::repeat_n(b']', depth));
        deep.push(b'}');
        return (deep, None);
    }
    (body, None)
}

fn random_rollout_body(rng: &mut Rng) -> Vec<u8> {
    // Pauses of a minute or more: no step falls due (and no gate event is
    // recorded) while the campaign runs.
    let pauses = ["5m", "1h", "0s", "x", "400d", "1m", "-1m", " 2m "];
    let mut steps = Vec::new();
    for _ in 0..rng.below(5) {
        let mut step =
            json!({"weight": *rng.pick(&[0i64, 500, 1000, 2500, 5000, 10000, 10001, -5])});
        if rng.chance(60) {
            step["pause"] = json!(rng.pick(&pauses));
        }
        steps.push(step);
    }
    let specs = [
        json!({"strategy": "all_at_once"}),
        json!({"preset": *rng.pick(&["AllAtOnce", "Canary10Percent5Minutes", "Canary10Percent15Minutes",
            "Linear10PercentEvery1Minute", "Linear10PercentEvery3Minutes", "Bogus", ""])}),
        json!({"strategy": "linear", "step": *rng.pick(&[1000i64, 2500, 0, -1, 10000, 10001, 3333]),
            "interval": rng.pick(&pauses)}),
        json!({"strategy": "canary", "steps": steps}),
        json!({"strategy": "blue_green", "bake": rng.pick(&pauses)}),
        json!({"strategy": "blue_green"}),
        json!({"strategy": "linear"}),
        json!({"strategy": "nope"}),
        json!({}),
        json!({"preset": "AllAtOnce", "strategy": "canary"}),
        json!({"preset": "AllAtOnce", "interval": "1m"}),
        json!({"strategy": "canary", "bake": "1m", "steps": [{"weight": 100}]}),
        json!({"strategy": "canary", "steps": [{"weight": 100, "pause": "5m", "x": 1}]}),
    ];
    let mut spec = rng.pick(&specs).clone();
    if rng.chance(30) {
        spec["target"] = json!(rng.pick(POOLS));
    }
    if rng.chance(5) {
        return rng
            .pick(&[&b""[..], b"{", b"null", b"{\"strategy\": 5}", b"[1]"])
            .to_vec();
    }
    spec.to_string().into_bytes()
}

fn random_config_body(rng: &mut Rng) -> String {
    let mut config = base_config();
    match rng.below(12) {
        0 => config["routes"][0]["split"]["weights"] = json!({"blue": 5000, "green": 5000}),
        1 => {
            config["routes"].as_array_mut().expect("routes").remove(1);
        }
        2 => {
            config["routes"][0]["split"]["weights"] =
                json!({"blue": 5000, "green": 2500, "red": 2500})
        }
        3 => config["routes"][0]["split"]["baseline"] = json!("green"),
        4 => config["routes"][0]["name"] = json!("web2"),
        5 => config["pools"]["green"]["endpoints"] = json!(["127.0.0.1:9"]),
        6 => config["routes"][2]["split"]["weights"] = json!({"blue": -1, "green": 10001}),
        7 => config["bogus"] = json!(1),
        8 => {
            let copy = config["routes"][0].clone();
            config["routes"].as_array_mut().expect("routes").push(copy);
        }
        9 => config["timeouts"] = json!({"connect": "0s"}),
        10 => config["pools"]["red"]["endpoints"] = json!(["no-such-host.invalid:80"]),
        _ => {}
    }
    let mut text = pretty(&config);
    if rng.chance(10) {
        text.truncate(rng.below(text.len()));
    }
    text
}

fn random_if_match(rng: &mut Rng, version: u64) -> Option<String> {
    if rng.chance(50) {
        return None;
    }
    // Leading zeros and `+` are left out: see
    // `if_match_is_compared_as_a_tag_not_as_a_number`.
    let tags = [
        format!("\"{version}\""),
        format!("\"{}\"", version.saturating_sub(1)),
        format!("\"{}\"", version + 1),
        format!("W/\"{version}\""),
        "*".to_string(),
        format!("\"0\", \"{version}\""),
        format!("\"{version}\" ,\"x\""),
        "garbage".to_string(),
        format!("{version}"),
        "\"\"".to_string(),
        format!(" \"{version}\" "),
    ];
    Some(rng.pick(&tags).clone())
}

fn random_call(rng: &mut Rng, version: u64) -> Call {
    let route = rng.pick(ROUTES).to_string();
    let mut headers = Vec::new();
    if let Some(tag) = random_if_match(rng, version) {
        headers.push(("if-match".to_string(), tag));
    }
    let types = [
        Some("application/json"),
        Some("application/json"),
        Some("application/json"),
        Some("application/json"),
        Some("application/json"),
        Some("application/json"),
        Some("application/json"),
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        Some("APPLICATION/JSON"),
        Some("text/plain"),
        Some("application/jsonx"),
        None,
    ];
    if let Some(content_type) = rng.pick(&types) {
        headers.push(("content-type".to_string(), content_type.to_string()));
    }
    let mut call = Call {
        method: Method::GET,
        path: String::new(),
        headers,
        body: Vec::new(),
        asked_weights: None,
        config_text: None,
        mutating: false,
    };
    match rng.below(100) {
        0..35 => {
            call.method = rng
                .pick(&[
                    Method::PUT,
                    Method::PUT,
                    Method::PUT,
                    Method::PUT,
                    Method::PUT,
                    Method::POST,
                    Method::PATCH,
                ])
                .clone();
            call.path = format!("/v1/routes/{route}/weights");
            let (body, asked) = random_weights_body(rng);
            call.body = body;
            call.asked_weights = asked.map(|w| (route.clone(), w));
            call.mutating = true;
        }
        35..60 => {
            call.method = Method::POST;
            call.path = format!("/v1/routes/{route}/rollout");
            call.body = random_rollout_body(rng);
            call.mutating = true;
        }
        60..85 => {
            let action = rng.pick(&["pause", "resume", "promote", "abort", "bogus"]);
            call.method = rng
                .pick(&[
                    Method::POST,
                    Method::POST,
                    Method::POST,
                    Method::POST,
                    Method::POST,
                    Method::PUT,
                    Method::GET,
                ])
                .clone();
            call.path = format!("/v1/routes/{route}/rollout/{action}");
            call.body = rng
                .pick(&[
                    &b""[..],
                    b"",
                    b"{\"reason\": \"x\"}",
                    b"{\"reason\": 5}",
                    b"{\"x\": 1}",
                    b"nope",
                ])
                .to_vec();
            call.mutating = true;
        }
        85..93 => {
            call.method = Method::PUT;
            call.path = "/v1/config".to_string();
            let text = random_config_body(rng);
            call.body = text.clone().into_bytes();
            call.config_text = Some(text);
            call.mutating = true;
        }
        _ => {
            call.method = rng
                .pick(&[
                    Method::GET,
                    Method::DELETE,
                    Method::OPTIONS,
                    Method::POST,
                    Method::PUT,
                    Method::HEAD,
                ])
                .clone();
            call.path = rng
                .pick(&[
                    "/v1/routes",
                    "/v1/routes/web",
                    "/v1/events?since=x",
                    "/v1/events?since=99999999999999999999",
                    "/v1/config",
                    "/nope",
                    "/v1/routes/web/health",
                    "/metrics",
                    "/healthz",
                    "/v1/routes/%zz",
                    "/v1/routes/web/rollout",
                ])
                .to_string();
            call.body = rng.pick(&[&b""[..], b"{}", b"x"]).to_vec();
            call.mutating = call.method != Method::GET && call.method != Method::HEAD;
        }
    }
    call
}

/// Sends `call` as is (bytes, not text).
async fn send(admin: SocketAddr, call: &Call) -> (StatusCode, String) {
    let mut request = http::Request::builder()
        .method(call.method.clone())
        .uri(format!("http://{admin}{}", call.path));
    for (name, value) in &call.headers {
        request = request.header(name, value);
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::from(
            call.body.clone(),
        )))
        .expect("request");
    let response =
        tokio::time::timeout(Duration::from_secs(15), support::client().request(request))
            .await
            .expect("an answer within 15 s")
            .expect("an answer");
    let status = response.status();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The basis points a weights body asks for (integers as they are,
/// decimals as percentages).
fn basis_points(value: &Value) -> i64 {
    match value.as_i64() {
        Some(bp) => bp,
        None => (value.as_f64().expect("a number") * 100.0).round() as i64,
    }
}

/// The route names a path's segment stands for, as the API decodes it.
fn decoded_route(route: &str) -> String {
    match route {
        "a%2Eb" => "a.b".into(),
        "%77eb" => "web".into(),
        other => other.into(),
    }
}

/// Random admin calls against the real binary, with kill -9 and restarts
/// on the same `--state-dir`. After each call: no 5xx; a 4xx has a JSON
/// error naming the problem and changed nothing (routes, version,
/// rollouts, events, config file); a 2xx change bumped the version and set
/// what was asked. After each restart everything acknowledged is back and
/// the version did not go down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_admin_api() {
    const BUDGET: Duration = Duration::from_secs(25);
    const MAX_CALLS: usize = 1500;
    // A fixed seed; `FUZZ_SEED` explores others.
    let seed_value = support::fuzz_env("FUZZ_SEED", 0x5EED_AD41);
    let mut rng = Rng::new(seed_value);
    let dir = temp_dir("campaign-admin");
    let file = dir.join("config.json");
    let state = dir.join("state");
    std::fs::write(&file, pretty(&base_config())).expect("write");
    let (mut child, mut admin) = start(&file, &state).await;
    let started = Instant::now();
    let (mut calls, mut restarts) = (0, 0);
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut log: Vec<String> = Vec::new();
    let fail = |log: &[String], step: usize, what: String| -> ! {
        let tail: Vec<&String> = log.iter().rev().take(8).collect();
        panic!("seed {seed_value:#x}, step {step}: {what}\nlast calls (newest first):\n{tail:#?}");
    };
    while calls < MAX_CALLS && started.elapsed() < BUDGET {
        let before = snapshot(admin).await;
        let file_before = std::fs::read_to_string(&file).expect("read");
        let call = random_call(&mut rng, before.version());
        let described = format!(
            "{} {} {:?} {:?}",
            call.method,
            call.path,
            call.headers,
            String::from_utf8_lossy(&call.body[..call.body.len().min(300)])
        );
        log.push(described.clone());
        let (status, body) = send(admin, &call).await;
        let after = snapshot(admin).await;
        let file_after = std::fs::read_to_string(&file).expect("read");
        let step = calls;
        calls += 1;
        *statuses.entry(status.as_u16()).or_default() += 1;
        if status.is_server_error() {
            fail(&log, step, format!("{status} for {described}: {body}"));
        }
        if status.is_client_error() {
            if call.method != Method::HEAD {
                let error: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let named = error["error"]["code"]
                    .as_str()
                    .is_some_and(|c| !c.is_empty())
                    && error["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty());
                if !named {
                    fail(
                        &log,
                        step,
                        format!("{status} without a JSON error: {body:?}"),
                    );
                }
            }
            // A refused PUT /v1/config that failed on the table build or
            // the listeners records a `config_rejected` event (README); the
            // table must still be untouched.
            let rejected_config = call.config_text.is_some() && body.contains("invalid_config")
                || body.contains("listener_unavailable")
                || body.contains("build_failed");
            let same = if rejected_config {
                after.routes == before.routes
            } else {
                after == before
            };
            if !same {
                fail(
                    &log,
                    step,
                    format!(
                        "{status} {body}\nchanged the state:\nbefore {before:#?}\nafter {after:#?}"
                    ),
                );
            }
            if file_after != file_before {
                fail(
                    &log,
                    step,
                    format!("{status} {body}: the config file changed"),
                );
            }
        } else if status.is_success() && call.mutating && call.method != Method::GET {
            if after.version() != before.version() + 1 {
                fail(
                    &log,
                    step,
                    format!(
                        "{status}: version {} -> {}",
                        before.version(),
                        after.version()
                    ),
                );
            }
            if after.last_event <= before.last_event {
                fail(&log, step, format!("{status}: no event recorded"));
            }
            if let Some((route, asked)) = &call.asked_weights {
                let shown = &after
                    .route(&decoded_route(route))
                    .expect("the changed route")["weights"];
                for (pool, weight) in shown.as_object().expect("weights") {
                    let want = asked.get(pool).map_or(0, basis_points);
                    if weight.as_i64() != Some(want) {
                        fail(
                            &log,
                            step,
                            format!("asked {asked:?}, the route shows {shown}"),
                        );
                    }
                }
            }
            if let Some(text) = &call.config_text {
                if &file_after != text {
                    fail(&log, step, "a 2xx PUT /v1/config left another file".into());
                }
            }
        }
        if rng.chance(2) {
            // kill -9, then the same state directory.
            let acknowledged = snapshot(admin).await;
            child.kill().await.expect("kill -9");
            let (next, next_admin) = start(&file, &state).await;
            child = next;
            admin = next_admin;
            restarts += 1;
            let back = snapshot(admin).await;
            let mut a = acknowledged.routes.clone();
            let mut b = back.routes.clone();
            a["version"] = Value::Null;
            b["version"] = Value::Null;
            if a != b {
                fail(
                    &log,
                    step,
                    format!("after kill -9 and restart:\nbefore {a:#}\nafter {b:#}"),
                );
            }
            if back.version() < acknowledged.version() || back.last_event < acknowledged.last_event
            {
                fail(
                    &log,
                    step,
                    format!("after a restart: {acknowledged:?} became {back:?}"),
                );
            }
        }
    }
    eprintln!(
        "campaign_admin_api: seed {seed_value:#x}, {calls} calls, {restarts} restarts (kill -9), {:?}, statuses {statuses:?}",
        started.elapsed()
    );
    assert!(calls >= 50, "only {calls} calls in the budget");
}

// ----------------------------------------------------- campaign: config

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Seg {
    Key(String),
    Index(usize),
}

/// Pretty JSON with the byte span of every value (an object member's span
/// starts at its key).
fn print_with_spans(value: &Value) -> (String, Vec<(Vec<Seg>, usize, usize)>) {
    fn go(
        value: &Value,
        path: &mut Vec<Seg>,
        depth: usize,
        out: &mut String,
        spans: &mut Vec<(Vec<Seg>, usize, usize)>,
        start: usize,
    ) {
        let indent = |out: &mut String, depth: usize| {
            out.push('\n');
            out.push_str(&"  ".repeat(depth));
        };
        match value {
            Value::Object(map) => {
                out.push('{');
                for (i, (key, child)) in map.iter().enumerate() {
                    indent(out, depth + 1);
                    let key_start = out.len();
                    out.push_str(&serde_json::to_string(key).expect("key"));
                    out.push_str(": ");
                    path.push(Seg::Key(key.clone()));
                    go(child, path, depth + 1, out, spans, key_start);
                    path.pop();
                    if i + 1 < map.len() {
                        out.push(',');
                    }
                }
                if !map.is_empty() {
                    indent(out, depth);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, child) in items.iter().enumerate() {
                    indent(out, depth + 1);
                    path.push(Seg::Index(i));
                    let item_start = out.len();
                    go(child, path, depth + 1, out, spans, item_start);
                    path.pop();
                    if i + 1 < items.len() {
                        out.push(',');
                    }
                }
                if !items.is_empty() {
                    indent(out, depth);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
        spans.push((path.clone(), start, out.len()));
    }
    let mut out = String::new();
    let mut spans = Vec::new();
    go(value, &mut Vec::new(), 0, &mut out, &mut spans, 0);
    (out, spans)
}

fn all_paths(value: &Value, path: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    if !path.is_empty() {
        out.push(path.clone());
    }
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                path.push(Seg::Key(key.clone()));
                all_paths(child, path, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                all_paths(child, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn at_mut<'a>(value: &'a mut Value, path: &[Seg]) -> &'a mut Value {
    path.iter().fold(value, |v, seg| match seg {
        Seg::Key(k) => &mut v[k.as_str()],
        Seg::Index(i) => &mut v[*i],
    })
}

/// The path in an error (`routes[0].split.weights.stable`) as segments.
fn parse_error_path(text: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    if text == "." {
        return out;
    }
    for part in text.split('.') {
        let (key, indexes) = part
            .split_once('[')
            .map_or((part, ""), |(k, rest)| (k, rest));
        if !key.is_empty() {
            out.push(Seg::Key(key.to_string()));
        }
        for index in indexes.split('[') {
            if let Ok(i) = index.trim_end_matches(']').parse() {
                out.push(Seg::Index(i));
            }
        }
    }
    out
}

fn odd_value(rng: &mut Rng) -> Value {
    let values = [
        json!(null),
        json!(true),
        json!(0),
        json!(-1),
        json!(1.5),
        json!(10001),
        json!(9999),
        json!(5000),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1e308),
        json!(""),
        json!("x"),
        json!("0s"),
        json!("-1s"),
        json!("1000000d"),
        json!("1h"),
        json!("a b"),
        json!("::1:80"),
        json!("[::1]:0"),
        json!("256.0.0.1:80"),
        json!("*."),
        json!("*.*.x"),
        json!("é"),
        json!("127.0.0.1:0"),
        json!("localhost:99999"),
        json!("round_robin"),
        json!("5xx"),
        json!([]),
        json!({}),
        json!([1]),
        json!({"x": 1}),
    ];
    rng.pick(&values).clone()
}

/// One JSON-level mutation: the mutated config and the path it touched.
fn mutate_json(rng: &mut Rng, base: &Value) -> (Value, Vec<Seg>, String) {
    let mut config = base.clone();
    let mut paths = Vec::new();
    all_paths(&config, &mut Vec::new(), &mut paths);
    let path = rng.pick(&paths).clone();
    let (parent_path, last) = path.split_at(path.len() - 1);
    let last = last[0].clone();
    let parent = at_mut(&mut config, parent_path);
    let what = match rng.below(6) {
        0 | 1 => {
            let value = odd_value(rng);
            let what = format!("set {path:?} = {value}");
            *at_mut(parent, std::slice::from_ref(&last)) = value;
            what
        }
        2 => {
            match (&mut *parent, &last) {
                (Value::Object(map), Seg::Key(k)) => {
                    map.remove(k);
                }
                (Value::Array(items), Seg::Index(i)) => {
                    items.remove(*i);
                }
                _ => unreachable!(),
            }
            format!("drop {path:?}")
        }
        3 => {
            match (&mut *parent, &last) {
                (Value::Object(map), Seg::Key(k)) => {
                    let copy = map[k].clone();
                    map.insert(format!("{k}2"), copy);
                }
                (Value::Array(items), Seg::Index(i)) => {
                    let copy = items[*i].clone();
                    items.push(copy);
                }
                _ => unreachable!(),
            }
            format!("duplicate {path:?}")
        }
        4 => {
            let target = at_mut(parent, std::slice::from_ref(&last));
            match target {
                Value::Object(map) => {
                    map.insert("bogus_field".into(), json!(1));
                }
                other => *other = json!({"bogus": 1}),
            }
            format!("unknown field at {path:?}")
        }
        _ => {
            let target = at_mut(parent, std::slice::from_ref(&last));
            match target {
                Value::Object(map) => map.clear(),
                Value::Array(items) => items.clear(),
                other => *other = json!(""),
            }
            format!("empty {path:?}")
        }
    };
    (config, path, what)
}

/// The README's example, with its comments taken out.
fn readme_example() -> Value {
    let readme = include_str!("../README.md");
    let start = readme.find("```jsonc\n").expect("the README's example") + 9;
    let end = start + readme[start..].find("```").expect("its end");
    let text: String = readme[start..end]
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    serde_json::from_str(&text).expect("the README's example is JSON once uncommented")
}

/// Mutated configs (JSON-level and byte-level) of the examples and the
/// README's: `switchyard check` either accepts (and the binary then starts
/// on the file and answers a request), or prints exactly one
/// `FILE:LINE:COLUMN: ...` line that points inside the file, at or next to
/// the mutation. Never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_config_parser() {
    const BUDGET: Duration = Duration::from_secs(25);
    const MAX_CASES: usize = 1500;
    // A fixed seed; `FUZZ_SEED` explores others.
    let seed_value = support::fuzz_env("FUZZ_SEED", 0xC0DE_F00D);
    let mut rng = Rng::new(seed_value);
    let dir = temp_dir("campaign-config");
    let examples = ["canary.json", "blue-green.json", "multi-route.json"];
    let mut bases: Vec<(String, Value)> = examples
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(format!("examples/{name}")).expect("example");
            (name.to_string(), serde_json::from_str(&text).expect("JSON"))
        })
        .collect();
    bases.push(("README".to_string(), readme_example()));
    let mut byte_bases: Vec<(String, Vec<u8>)> = examples
        .iter()
        .map(|name| {
            (
                name.to_string(),
                std::fs::read(format!("examples/{name}")).expect("example"),
            )
        })
        .collect();
    byte_bases.push(("README".into(), pretty(&readme_example()).into_bytes()));
    let inserts: [&[u8]; 24] = [
        b"\xff",
        b"\xc3",
        b"\xe2\x82",
        b"\x00",
        b",",
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"",
        b":",
        b"0",
        b"-",
        b"e",
        b" ",
        b"\n",
        b"\r\n",
        b"//c\n",
        b"/*",
        b"\t",
        b"\\",
        b"\xef\xbb\xbf",
        b"1e999",
        b"\xc3\xa9",
    ];
    let started = Instant::now();
    let (mut cases, mut accepted, mut served) = (0, 0, 0);
    let file = dir.join("mutant.json");
    while cases < MAX_CASES && started.elapsed() < BUDGET {
        let case = cases;
        cases += 1;
        let json_level = rng.chance(55);
        let (text, check_location): (Vec<u8>, LocationCheck);
        let what;
        let mut mutant_value = None;
        if json_level {
            let (name, base) = rng.pick(&bases).clone();
            let (config, path, how) = mutate_json(&mut rng, &base);
            let (printed, spans) = print_with_spans(&config);
            what = format!("{name}: {how}");
            let span_of = move |p: &[Seg]| {
                spans
                    .iter()
                    .find(|(q, _, _)| q.as_slice() == p)
                    .map(|(_, s, e)| (*s, *e))
            };
            let parent = path[..path.len() - 1].to_vec();
            let printed_len = printed.len();
            check_location = Box::new(move |offset, reason| {
                // At the mutated value, in the object or array that holds
                // it, or (a cross-reference: an unknown pool, a name used
                // twice) at the path the error names.
                let (s, e) = span_of(&parent).unwrap_or((0, printed_len));
                if offset + 60 >= s && offset <= e + 1 {
                    return true;
                }
                let named = reason.split(": ").next().unwrap_or_default();
                span_of(&parse_error_path(named))
                    .is_some_and(|(s, e)| offset + 1 >= s && offset <= e)
            });
            text = printed.into_bytes();
            mutant_value = Some(config);
        } else {
            let (name, base) = rng.pick(&byte_bases).clone();
            let k = rng.below(base.len());
            let mut bytes = base.clone();
            let how = match rng.below(4) {
                0 => {
                    bytes.truncate(k);
                    format!("truncated at {k}")
                }
                1 => {
                    let insert = rng.pick(&inserts);
                    bytes.splice(k..k, insert.iter().copied());
                    format!("inserted {:?} at {k}", String::from_utf8_lossy(insert))
                }
                2 => {
                    let n = (1 + rng.below(4)).min(bytes.len() - k);
                    bytes.drain(k..k + n);
                    format!("deleted {n} bytes at {k}")
                }
                _ => {
                    let byte = rng.next() as u8;
                    bytes[k] = byte;
                    format!("byte {k} set to {byte:#04x}")
                }
            };
            what = format!("{name}: {how}");
            check_location = Box::new(move |offset, reason| {
                offset.abs_diff(k) <= 60
                    // Part of a pool's name deleted: the reference to it is
                    // what is unknown.
                    || reason.contains("unknown pool")
                    || reason.contains("twice")
            });
            text = bytes;
        }
        std::fs::write(&file, &text).expect("write");
        let (ok, stdout, stderr) = check_file(&file);
        let show = || {
            format!(
                "seed {seed_value:#x}, case {case}: {what}\ninput:\n{}\nstdout: {stdout}\nstderr: {stderr}",
                String::from_utf8_lossy(&text)
            )
        };
        assert!(!stderr.contains("panicked"), "a panic: {}", show());
        if ok {
            assert!(
                stdout.contains("routes (first match wins):"),
                "no table: {}",
                show()
            );
            accepted += 1;
            // The binary must start on an accepted file and answer (its
            // listeners moved to a free port, the admin API to the
            // command line's).
            let serve = served < 4 && !what.starts_with("README");
            if let Some(mut config) = mutant_value.filter(|_| serve) {
                config["listeners"] = json!([{"address": "127.0.0.1:0"}]);
                if let Some(map) = config.as_object_mut() {
                    map.remove("admin");
                }
                let runnable = dir.join("runnable.json");
                std::fs::write(&runnable, pretty(&config)).expect("write");
                if check_file(&runnable).0 {
                    served += 1;
                    let (mut child, proxy, _admin, captured) =
                        support::start_on_config_capturing(&runnable).await;
                    let mut stream = tokio::net::TcpStream::connect(proxy)
                        .await
                        .expect("connect");
                    let mut buf = Vec::new();
                    let answer = support::get_on(&mut stream, &mut buf).await;
                    assert!(
                        (200..600).contains(&answer.status),
                        "{}: no HTTP answer",
                        show()
                    );
                    child.kill().await.expect("kill");
                    let stderr = captured.lock().expect("lock").clone();
                    assert!(!stderr.contains("panicked"), "{}\nrun: {stderr}", show());
                }
            }
            continue;
        }
        let (offset, reason) = match parse_check_error(&file, &stderr, &text) {
            Ok(found) => found,
            Err(why) => panic!("{why}\n{}", show()),
        };
        assert!(
            check_location(offset, &reason),
            "the error points at byte {offset} ({:?}), away from the mutation: {}",
            String::from_utf8_lossy(
                &text[offset.saturating_sub(20)..(offset + 20).min(text.len())]
            ),
            show()
        );
    }
    eprintln!(
        "campaign_config_parser: seed {seed_value:#x}, {cases} cases, {accepted} accepted, {served} served, {:?}",
        started.elapsed()
    );
    assert!(cases >= 100, "only {cases} cases in the budget");
}
