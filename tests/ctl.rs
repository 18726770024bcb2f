//! `switchyard ctl` against the real binary: tables, `--json`, the server's
//! message and a non-zero exit on a refused call, and `events --follow`
//! over the Server-Sent Events stream; bad arguments, an answer that is
//! not the admin API's, and a token file's newline.

use crate::support;

use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn ctl(admin: SocketAddr, args: &[&str]) -> Output {
    std::process::Command::new(BIN)
        .arg("ctl")
        .arg("--admin")
        .arg(format!("http://{admin}"))
        .args(args)
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .output()
        .expect("run ctl")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "ctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn start() -> (tokio::process::Child, SocketAddr, SocketAddr) {
    support::start_demo(&[]).await
}

#[tokio::test]
async fn ctl_sets_weights_runs_rollouts_and_reports_errors() {
    let (_child, proxy, admin) = start().await;

    let routes = stdout(&ctl(admin, &["routes"]));
    assert!(routes.contains("blue=90.00% green=10.00%"), "{routes}");

    let set = stdout(&ctl(admin, &["weights", "default", "green=25%"]));
    assert!(set.contains("blue=75.00% green=25.00%"), "{set}");
    let seen = support::send_many(proxy, "/", 400).await;
    let green = seen
        .iter()
        .filter(|(b, _)| b.contains("green"))
        .map(|(_, n)| n)
        .sum::<usize>();
    // Binomial(400, 0.25): sd ≈ 8.7; 45..=155 is over ±6 sd.
    assert!((45..=155).contains(&green), "{seen:?}");

    let json: Value =
        serde_json::from_str(&stdout(&ctl(admin, &["--json", "routes"]))).expect("json");
    assert_eq!(json["routes"][0]["weights"]["green"], 2500);

    let refused = ctl(admin, &["weights", "default", "green=120%"]);
    assert!(!refused.status.success());
    let refused = ctl(admin, &["weights", "default", "purple=5%"]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("400") && message.contains("purple"),
        "{message}"
    );

    let started = stdout(&ctl(
        admin,
        &["rollout", "default", "--steps", "5%:10m,50%"],
    ));
    assert!(
        started.contains("canary rollout to green is running, step 1/3 at 5.00%"),
        "{started}"
    );
    let paused = stdout(&ctl(admin, &["pause", "default"]));
    assert!(paused.contains("is paused"), "{paused}");
    // A paused step's clock is stopped: no countdown to a next step.
    assert!(
        paused.contains("of the step left when resumed") && !paused.contains("next step in"),
        "{paused}"
    );
    let busy = ctl(admin, &["weights", "default", "green=30%"]);
    assert!(!busy.status.success(), "weights changed during a rollout");
    // Pausing does not free the weights: the advice names what does.
    let busy = String::from_utf8_lossy(&busy.stderr);
    assert!(
        busy.contains("409")
            && busy.contains("promote or abort it first")
            && !busy.contains("pause,"),
        "{busy}"
    );
    let aborted = stdout(&ctl(admin, &["abort", "default", "--reason", "smoke test"]));
    assert!(
        aborted.contains("is aborted") && aborted.contains("smoke test"),
        "{aborted}"
    );
    let status = stdout(&ctl(admin, &["status", "default"]));
    assert!(status.contains("aborted"), "{status}");
    assert!(status.contains("last verdict: none"), "{status}");
    // Each pool's live error rate and p99 over the last 60 s, refreshed
    // every second: the blue pool served about 300 of the 400 requests.
    let served_of = |line: &str| -> u64 {
        line.split("(0 of ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let blue_line = |status: &str| {
        status
            .lines()
            .find(|l| l.trim_start().starts_with("pool blue:"))
            .map(str::to_string)
    };
    let status = support::poll_for(
        Duration::from_secs(5),
        || async { stdout(&ctl(admin, &["status", "default"])) },
        |s| blue_line(s).is_some_and(|l| !l.contains("p99 -") && served_of(&l) >= 250),
    )
    .await;
    let line = blue_line(&status).expect("a line for pool blue");
    assert!((250..=350).contains(&served_of(&line)), "{line}");
    assert!(line.contains("errors 0.00%"), "{line}");
    assert!(line.contains(" ms, endpoints 1 of 1 up"), "{line}");
    let preset = stdout(&ctl(
        admin,
        &["rollout", "default", "--preset", "Canary10Percent5Minutes"],
    ));
    assert!(preset.contains("step 1/2 at 10.00%"), "{preset}");
    let promoted = stdout(&ctl(admin, &["promote", "default"]));
    assert!(
        promoted.contains("completed") && promoted.contains("100.00%"),
        "{promoted}"
    );

    let events = stdout(&ctl(admin, &["events"]));
    for kind in [
        "weights",
        "rollout_started",
        "rollout_paused",
        "rollout_aborted",
        "rollout_promoted",
    ] {
        assert!(events.contains(kind), "{kind} missing: {events}");
    }
}

#[tokio::test]
async fn events_follow_streams_changes_as_they_happen() {
    let (_child, _proxy, admin) = start().await;
    let mut follower = tokio::process::Command::new(BIN)
        .args([
            "ctl",
            "--admin",
            &format!("http://{admin}"),
            "--json",
            "events",
            "--follow",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("follow");
    let mut lines = BufReader::new(follower.stdout.take().expect("stdout")).lines();
    for (i, weight) in ["20%", "30%"].iter().enumerate() {
        stdout(&ctl(
            admin,
            &["weights", "default", &format!("green={weight}")],
        ));
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("an event arrived in time")
            .expect("read")
            .expect("follower ended");
        let event: Value = serde_json::from_str(&line).expect("event JSON");
        assert_eq!(event["kind"], "weights");
        assert_eq!(event["id"], i as u64 + 1);
        assert_eq!(
            event["new_weights"]["green"],
            if i == 0 { 2000 } else { 3000 }
        );
    }
}

/// A bad percentage given to `ctl weights` or `ctl rollout --steps` is
/// refused, and the message names what was refused (it blamed
/// `--canary-weight`, a flag of `switchyard run` the operator never typed).
#[tokio::test]
async fn ctl_names_the_argument_it_refuses() {
    let (_child, _proxy, admin) = start().await;
    for args in [
        &["weights", "default", "green=abc"][..],
        &["weights", "default", "green=12.345%"][..],
        &["rollout", "default", "--steps", "5%:5m,abc"][..],
    ] {
        let output = ctl(admin, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} accepted");
        assert!(
            !stderr.contains("--canary-weight"),
            "ctl {args:?} blames a flag it does not have: {stderr}"
        );
    }
}

/// `--admin` pointed at something that is not the admin API (the proxy's
/// own listener, one port off) answers 200 with a page that is not JSON.
/// ctl took that as success: `ctl weights` "set" the weights, printed an
/// empty table and exited 0, and nothing changed.
#[tokio::test]
async fn ctl_refuses_an_answer_that_is_not_the_admin_api() {
    let (_child, proxy, admin) = start().await;
    let output = ctl(proxy, &["weights", "default", "green=25%"]);
    let (_, _, route) = support::get(&support::client(), admin, "/v1/routes/default", &[]).await;
    let route: Value = serde_json::from_str(&route).expect("json");
    assert_eq!(route["weights"]["green"], 1000, "the weights did change");
    assert!(
        !output.status.success(),
        "ctl exited 0 though no weight was set; stdout:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// The server trims the token it is given (`--admin-token-file`, or
/// `SWITCHYARD_ADMIN_TOKEN`), so a token file or a Kubernetes Secret
/// with a final newline works for it; ctl sent the same variable as it
/// was, and a newline made every call fail before it was sent.
#[tokio::test]
async fn ctl_takes_the_token_as_the_server_does() {
    let dir = support::pki::temp_dir("ctl-token");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret\n").expect("token");
    let (_child, _proxy, admin) =
        support::start_demo(&["--admin-token-file", token_file.to_str().expect("utf-8")]).await;
    let output = std::process::Command::new(BIN)
        .args(["ctl", "--admin", &format!("http://{admin}"), "routes"])
        .env("SWITCHYARD_ADMIN_TOKEN", "s3cret\n")
        .output()
        .expect("run ctl");
    assert!(
        output.status.success(),
        "the token the server accepts, from the same file, fails in ctl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Basis points over 10,000 are refused: two large values given to `ctl
/// weights` without the baseline overflowed their sum, and (in a debug
/// build, as tests run it) ctl panicked with exit code 101.
#[tokio::test]
async fn ctl_refuses_huge_basis_points_without_panicking() {
    let (_child, _proxy, admin) = start().await;
    let output = ctl(
        admin,
        &["weights", "default", "green=bp:4294967295", "blue2=bp:1"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        !stderr.contains("panicked"),
        "exit {:?}: {stderr}",
        output.status.code()
    );
}

/// An admin API over mutual TLS (`--admin-tls-cert`, `--admin-client-ca`)
/// is reached with `--admin https://…`, `--cacert`, `--cert` and `--key`,
/// as curl does (ctl spoke plain HTTP only). Without the client
/// certificate, or trusting another CA, the call fails with a non-zero
/// exit.
#[tokio::test]
async fn ctl_reaches_an_admin_api_over_mutual_tls() {
    use support::pki::{temp_dir, write_leaf, Ca};
    let dir = temp_dir("ctl-mtls");
    let ca = Ca::new("admin CA");
    let clients = Ca::new("operators CA");
    let (cert, key) = write_leaf(&dir, "admin", &ca.leaf(&["localhost"]));
    let (my_cert, my_key) = write_leaf(&dir, "me", &clients.leaf(&["operator"]));
    let (ca_file, clients_file) = (dir.join("ca.pem"), dir.join("clients.pem"));
    std::fs::write(&ca_file, ca.pem()).expect("write");
    std::fs::write(&clients_file, clients.pem()).expect("write");
    let other_ca = dir.join("other.pem");
    std::fs::write(&other_ca, Ca::new("other").pem()).expect("write");
    let path = |p: &std::path::Path| p.to_str().expect("utf-8 path").to_string();
    let (_child, _proxy, admin) = support::start_demo(&[
        "--admin-tls-cert",
        &path(&cert),
        "--admin-tls-key",
        &path(&key),
        "--admin-client-ca",
        &path(&clients_file),
    ])
    .await;
    let url = format!("https://localhost:{}", admin.port());
    let ctl_tls = |extra: &[String]| {
        std::process::Command::new(BIN)
            .args(["ctl", "--admin", &url])
            .args(extra)
            .args(["weights", "default", "green=20%"])
            .env_remove("SWITCHYARD_ADMIN_TOKEN")
            .output()
            .expect("run ctl")
    };
    let flags = |ca: &std::path::Path, with_cert: bool| {
        let mut flags = vec!["--cacert".to_string(), path(ca)];
        if with_cert {
            flags.extend([
                "--cert".into(),
                path(&my_cert),
                "--key".into(),
                path(&my_key),
            ]);
        }
        flags
    };
    for (what, extra) in [
        ("no client certificate", flags(&ca_file, false)),
        ("another CA trusted", flags(&other_ca, true)),
    ] {
        let output = ctl_tls(&extra);
        assert!(!output.status.success(), "{what}: ctl succeeded");
    }
    let output = ctl_tls(&flags(&ca_file, true));
    let out = stdout(&output);
    assert!(out.contains("green=20.00%"), "{out}");
}

/// `ctl weights ROUTE pool=N%` on a route of three pools changes the named
/// pool and the baseline only: a pool not named keeps its weight (it went
/// to 0 without a word, its share to the baseline).
#[tokio::test]
async fn ctl_weights_keeps_the_pools_not_named() {
    let blue = support::upstream("blue").await;
    let green = support::upstream("green").await;
    let red = support::upstream("red").await;
    let dir = support::pki::temp_dir("ctl-three-pools");
    let file = dir.join("config.json");
    let config = support::split_config(&[(&blue, 7000), (&green, 2000), (&red, 1000)], json!({}));
    std::fs::write(&file, config.to_string()).expect("config");
    let (_child, _proxy, admin) = support::start_on_config(&file).await;
    let out = stdout(&ctl(admin, &["weights", "web", "green=25%"]));
    assert!(out.contains("blue=65.00% green=25.00% red=10.00%"), "{out}");
    let output = ctl(admin, &["weights", "web", "green=95%"]);
    assert!(
        !output.status.success(),
        "over 100% with red's 10% accepted"
    );
}

/// A reader that stops early (`ctl status | head -1`) ends the command
/// quietly, with success, as it ends other Unix tools; it panicked on the
/// broken pipe.
#[tokio::test]
async fn ctl_output_into_a_closed_pipe_ends_quietly() {
    let (_child, _proxy, admin) = start().await;
    let mut child = std::process::Command::new(BIN)
        .args([
            "ctl",
            "--admin",
            &format!("http://{admin}"),
            "status",
            "default",
        ])
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ctl");
    // Closed before ctl has asked the admin API, so before it prints.
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("ctl ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
}
