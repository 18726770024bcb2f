//! Claims of `README.md` checked against the real binary: those a
//! newcomer tries first (the config example, `check`'s output, the admin
//! tour), and those a review found false and which were
//! fixed (in the code, or in the text when the text was wrong).

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;

use http::Method;
use rcgen::{CertificateParams, KeyPair};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchyard-readme-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The n-th (0-based) fenced block of `README.md` whose fence line is
/// exactly "```" followed by `lang`.
fn readme_block(lang: &str, n: usize) -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let fence = format!("```{lang}");
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in readme.lines() {
        match &mut current {
            None if line == fence => current = Some(Vec::new()),
            Some(_) if line.starts_with("```") => {
                blocks.push(current.take().expect("open").join("\n"))
            }
            Some(lines) => lines.push(line),
            None => {}
        }
    }
    blocks.into_iter().nth(n).expect("the README block")
}

/// Drops `// ...` comments (the README's JSONC), as the README's "The
/// format is JSON" asks a reader to do.
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => line[..at].trim_end(),
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A self-signed certificate for `name`, valid between the two dates.
fn certificate(
    dir: &Path,
    file: &str,
    name: &str,
    not_before: (i32, u8, u8),
    not_after: (i32, u8, u8),
) -> (PathBuf, PathBuf) {
    let mut params = CertificateParams::new(vec![name.to_string()]).expect("params");
    params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("certificate");
    let (cert_file, key_file) = (
        dir.join(format!("{file}.pem")),
        dir.join(format!("{file}.key")),
    );
    std::fs::write(&cert_file, cert.pem()).expect("write cert");
    std::fs::write(&key_file, key.serialize_pem()).expect("write key");
    (cert_file, key_file)
}

fn write_json(dir: &Path, name: &str, value: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(value).expect("json")).expect("write");
    path
}

// ---------------------------------------------------------------------
// Discrepancies (these fail)
// ---------------------------------------------------------------------

/// README, TLS: `switchyard check` refuses "a certificate that is expired
/// or not yet valid", a pool's client certificate included: it checked
/// only the certificates Switchyard serves, so the proxy started and every
/// handshake with an upstream requiring the certificate failed (502).
#[test]
fn check_refuses_an_expired_upstream_client_certificate() {
    let dir = temp_dir("expired-client");
    let (expired_cert, expired_key) = certificate(
        &dir,
        "expired",
        "proxy.internal",
        (2020, 1, 1),
        (2021, 1, 1),
    );
    let (future_cert, future_key) =
        certificate(&dir, "future", "proxy.internal", (2090, 1, 1), (2091, 1, 1));
    let config = |cert: &Path, key: &Path| {
        json!({
            "listeners": [{"address": "127.0.0.1:18080"}],
            "pools": {"stable": {
                "endpoints": ["127.0.0.1:18443"],
                "tls": {"server_name": "api.internal", "cert_file": cert, "key_file": key}
            }},
            "routes": [{"name": "api", "split": {"baseline": "stable", "weights": {"stable": 10000}}}]
        })
    };
    let mut wrongly_accepted = Vec::new();
    for (name, cert, key) in [
        ("expired.json", &expired_cert, &expired_key),
        ("not-yet-valid.json", &future_cert, &future_key),
    ] {
        let path = write_json(&dir, name, &config(cert, key));
        let (ok, stdout, stderr) = support::check_file(&path);
        if ok {
            wrongly_accepted.push(format!("{name}: {}", stdout.lines().last().unwrap_or("")));
        } else {
            assert!(stderr.contains("pools.stable.tls"), "{name}: {stderr}");
        }
    }
    assert!(
        wrongly_accepted.is_empty(),
        "switchyard check accepted certificates outside their validity: {wrongly_accepted:#?}"
    );
}

/// README: `ctl`'s `--admin URL`, `--json` and TLS options work on either
/// side of the command (`switchyard ctl routes --json`); they were taken
/// only before it ("unexpected argument '--json' found").
#[tokio::test]
async fn ctl_options_work_after_the_subcommand() {
    let (_child, _proxy, admin) = support::start_demo(&[]).await;
    let url = format!("http://{admin}");
    let run = |args: &[&str]| {
        Command::new(BIN)
            .arg("ctl")
            .args(args)
            .env_remove("SWITCHYARD_ADMIN")
            .env_remove("SWITCHYARD_ADMIN_TOKEN")
            .output()
            .expect("run ctl")
    };
    // The form that works, for contrast.
    let before = run(&["--admin", &url, "--json", "routes"]);
    assert!(
        before.status.success(),
        "{}",
        String::from_utf8_lossy(&before.stderr)
    );
    let mut refused = Vec::new();
    for args in [
        vec!["--admin", url.as_str(), "routes", "--json"],
        vec!["routes", "--admin", url.as_str(), "--json"],
        vec!["status", "default", "--admin", url.as_str()],
    ] {
        let output = run(&args);
        if !output.status.success() {
            refused.push(format!(
                "switchyard ctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .next()
                    .unwrap_or("")
            ));
        }
    }
    assert!(refused.is_empty(), "{refused:#?}");
}

// ---------------------------------------------------------------------
// Claims verified true (these pass)
// ---------------------------------------------------------------------

/// README, "A config file": the format block, comments removed, is a
/// valid config, and `check` prints its route as the README's table does.
#[test]
fn the_readme_config_example_checks_once_comments_are_removed() {
    let dir = temp_dir("example");
    let text = strip_comments(&readme_block("jsonc", 0));
    let path = dir.join("readme.json");
    std::fs::write(&path, text).expect("write");
    let (ok, stdout, stderr) = support::check_file(&path);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("routes (first match wins):"), "{stdout}");
    assert!(
        stdout.contains("-> canary 5.00%, stable 95.00% (baseline)"),
        "{stdout}"
    );
}

/// README: `switchyard check examples/canary.json` prints
/// "1. api          any request   ... -> canary 5.00%, stable 95.00% (baseline)"
/// and "examples/canary.json: ok"; a bad sum is
/// "error: broken.json:8:18: routes[0].split.weights: weights sum to 9999
/// basis points, expected 10000 (100%)".
#[test]
fn check_output_matches_the_readme() {
    let output = Command::new(BIN)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["check", "examples/canary.json"])
        .output()
        .expect("check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(stdout.contains(
        "  1. api          any request                              -> canary 5.00%, stable 95.00% (baseline)"
    ), "{stdout}");
    assert!(stdout.ends_with("examples/canary.json: ok\n"), "{stdout}");

    let dir = temp_dir("broken");
    let broken = "{\n  \"listeners\": [{\"address\": \"127.0.0.1:8080\"}],\n  \"pools\": {\"a\": {\"endpoints\": [\"127.0.0.1:1\"]}},\n  \"routes\": [{\n    \"name\": \"r\",\n    \"split\": {\n      \"baseline\": \"a\",\n      \"weights\": {\"a\": 9999}\n    }\n  }]\n}\n";
    std::fs::write(dir.join("broken.json"), broken).expect("write");
    let output = Command::new(BIN)
        .current_dir(&dir)
        .args(["check", "broken.json"])
        .env("SWITCHYARD_LOG", "warn")
        .output()
        .expect("check");
    assert!(!output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "error: broken.json:8:18: routes[0].split.weights: weights sum to 9999 basis points, expected 10000 (100%)\n"
    );
}

/// README, five-minute tour: the ETag, the two weight bodies (basis
/// points and percentages), the error body, a stale If-Match is 412.
#[tokio::test]
async fn the_admin_tour_answers_as_the_readme_shows() {
    let (_child, _proxy, admin) = support::start_demo(&[]).await;
    let (status, headers, _) =
        support::admin_call(admin, Method::GET, "/v1/routes/default", &[], "").await;
    assert_eq!(status, 200);
    assert_eq!(headers["etag"], "\"1\"");
    let json = ("content-type", "application/json");
    let (status, _, _) = support::admin_call(
        admin,
        Method::PUT,
        "/v1/routes/default/weights",
        &[json, ("if-match", "\"1\"")],
        r#"{"weights": {"blue": 7500, "green": 2500}}"#,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, body) = support::admin_call(
        admin,
        Method::PUT,
        "/v1/routes/default/weights",
        &[json],
        r#"{"weights": {"blue": 90.5, "green": 9.5}}"#,
    )
    .await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["weights"], json!({"blue": 9050, "green": 950}));
    let (status, _, body) = support::admin_call(
        admin,
        Method::PUT,
        "/v1/routes/default/weights",
        &[json],
        r#"{"weights": {"blue": 9000, "green": 900}}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        r#"{"error":{"code":"weights_do_not_sum","field":"weights","message":"route \"default\": weights sum to 9900 basis points, expected 10000 (100%)"}}"#
    );
    let (status, _, _) = support::admin_call(
        admin,
        Method::PUT,
        "/v1/routes/default/weights",
        &[json, ("if-match", "\"1\"")],
        r#"{"weights": {"blue": 10000, "green": 0}}"#,
    )
    .await;
    assert_eq!(status, 412);
}

/// README, admin API: "a request head over 64 KiB (...) or 100 fields
/// gets a JSON `431` (`head_too_large`)" — and `admin/openapi.json` says
/// so too (the 431 was once answered and documented nowhere, then
/// documented as empty after it had become JSON).
#[tokio::test]
async fn an_oversized_admin_request_head_gets_the_documented_431() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_child, _proxy, admin) = support::start_demo(&[]).await;
    let mut stream = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect");
    let head = format!(
        "GET /v1/routes HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "a".repeat(512 * 1024)
    );
    // The server may answer and close before it has read everything.
    let _ = stream.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("the admin API answers an oversized head");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 431"), "{text:?}");
    assert!(
        text.contains("application/json") && text.contains(r#""code":"head_too_large""#),
        "{text:?}"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let openapi = std::fs::read_to_string(root.join("admin/openapi.json")).expect("openapi");
    assert!(
        readme.contains("gets a JSON `431`\n(`head_too_large`)"),
        "the README does not name the 431"
    );
    assert!(
        openapi.contains("431 head_too_large"),
        "openapi.json does not name the 431"
    );
}
