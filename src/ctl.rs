//! `switchyard ctl`: the admin API from the command line. Human-readable
//! tables by default, the server's JSON with `--json`; a refused call
//! exits non-zero with the server's message.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use switchyard_config::UpstreamTls;
use switchyard_proxy::tls::UpstreamTlsClient;

use crate::percent_to_basis_points;

/// `println!`, except that a closed standard output (`ctl status | head`)
/// ends the command quietly, as it ends other Unix tools, rather than in
/// a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(err) = writeln!(std::io::stdout(), $($arg)*) {
            if err.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            panic!("failed printing to stdout: {err}");
        }
    }};
}

/// What `ctl` can do.
#[derive(Subcommand)]
pub enum CtlCommand {
    /// List the routes with their weights and rollouts.
    Routes,
    /// Set a route's weights: `ctl weights api canary=25%` (the baseline
    /// takes the rest) or every pool: `stable=75% canary=25%`.
    Weights {
        /// The route.
        route: String,
        /// POOL=PERCENT pairs (`25%`, `2.5%`, or basis points without `%`: `bp:250`).
        #[arg(required = true)]
        pools: Vec<String>,
    },
    /// Start a rollout.
    Rollout {
        /// The route.
        route: String,
        /// A CodeDeploy-style preset (Canary10Percent5Minutes, Linear10PercentEvery1Minute, AllAtOnce, ...).
        #[arg(long, conflicts_with_all = ["steps", "strategy"])]
        preset: Option<String>,
        /// Canary steps: `5%:5m,25%:10m,100%` (a step without a time waits for resume).
        #[arg(long, conflicts_with = "strategy")]
        steps: Option<String>,
        /// all_at_once, linear, blue_green.
        #[arg(long)]
        strategy: Option<String>,
        /// linear: percent per step.
        #[arg(long)]
        step: Option<String>,
        /// linear: time between steps.
        #[arg(long)]
        interval: Option<String>,
        /// blue_green: how long the old pool stays warm.
        #[arg(long)]
        bake: Option<String>,
        /// The pool to roll out to (default: the split's one non-baseline pool).
        #[arg(long)]
        target: Option<String>,
    },
    /// Show a route's weights, rollout, and canary health: each canary's
    /// tests, the baseline's error rate, and the last verdict.
    Status {
        /// The route.
        route: String,
    },
    /// Stop a rollout's clock.
    Pause {
        /// The route.
        route: String,
    },
    /// Restart a rollout's clock, or pass a manual gate.
    Resume {
        /// The route.
        route: String,
    },
    /// Move all traffic to the rollout's target now.
    Promote {
        /// The route.
        route: String,
    },
    /// Move all traffic back to the baseline now.
    Abort {
        /// The route.
        route: String,
        /// Why, for the event log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Show the change log.
    Events {
        /// Keep printing new events as they happen.
        #[arg(long)]
        follow: bool,
        /// Only events after this id.
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
}

/// `switchyard ctl`'s arguments.
#[derive(Args)]
pub struct CtlArgs {
    /// The admin API's URL. (These options go before or after the command.)
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_ADMIN",
        default_value = "http://127.0.0.1:9901"
    )]
    admin: String,
    /// Print the server's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    tls: AdminTls,
    #[command(subcommand)]
    command: CtlCommand,
}

/// How `ctl` reaches an admin API served over HTTPS (`--admin https://…`).
#[derive(Args)]
pub struct AdminTls {
    /// CA certificates (PEM) to verify the admin API's certificate with
    /// (default: the webpki roots).
    #[arg(long, global = true, env = "SWITCHYARD_ADMIN_CA")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) for an admin API that requires one.
    #[arg(long, global = true, env = "SWITCHYARD_ADMIN_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, global = true, env = "SWITCHYARD_ADMIN_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
}

struct Admin {
    /// `scheme://host:port`, as given without a trailing `/`.
    base: String,
    /// `host:port` to connect to.
    authority: String,
    token: Option<String>,
    /// Set for `https`.
    tls: Option<UpstreamTlsClient>,
}

impl Admin {
    fn new(base: &str, tls: AdminTls) -> anyhow::Result<Admin> {
        let base = base.trim_end_matches('/').to_string();
        let uri: http::Uri = base
            .parse()
            .with_context(|| format!("--admin {base:?} is not a URL"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => bail!("--admin {base:?}: the scheme must be http or https"),
        };
        let authority = uri
            .authority()
            .with_context(|| format!("--admin {base:?} names no host"))?;
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = format!("{}:{port}", authority.host());
        if !https && (tls.cacert.is_some() || tls.cert.is_some()) {
            bail!("--cacert, --cert and --key are for an https:// admin URL");
        }
        let tls = https
            .then(|| {
                let config = UpstreamTls {
                    server_name: None,
                    ca_file: tls.cacert,
                    client_cert: tls.cert.zip(tls.key),
                    origin: "ctl".into(),
                };
                UpstreamTlsClient::build("admin", &config, &authority)
            })
            .transpose()?;
        Ok(Admin {
            base,
            authority,
            // Trimmed as the server trims its own (a token file's newline).
            token: std::env::var("SWITCHYARD_ADMIN_TOKEN")
                .ok()
                .map(|token| token.trim().to_string())
                .filter(|token| !token.is_empty()),
            tls,
        })
    }

    /// Sends `request` on a new connection (one call, one connection).
    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let stream = tokio::net::TcpStream::connect(&self.authority).await?;
        let _ = stream.set_nodelay(true);
        match &self.tls {
            None => send_on(TokioIo::new(stream), request).await,
            Some(tls) => {
                let stream = tls.connect(stream).await.context("TLS handshake")?;
                send_on(TokioIo::new(stream), request).await
            }
        }
    }
}

async fn send_on<T>(
    io: T,
    request: Request<Full<Bytes>>,
) -> anyhow::Result<hyper::Response<hyper::body::Incoming>>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(connection);
    Ok(sender.send_request(request).await?)
}

impl Admin {
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        self.send_if(method, path, body, None).await
    }

    /// [`Admin::send`] with an `If-Match` version, if given.
    async fn send_if(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        version: Option<u64>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.authority);
        if let Some(version) = version {
            request = request.header(http::header::IF_MATCH, format!("\"{version}\""));
        }
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let bytes = match body {
            Some(body) => {
                request = request.header("content-type", "application/json");
                Bytes::from(body.to_string())
            }
            None => Bytes::new(),
        };
        self.exchange(request.body(Full::new(bytes))?)
            .await
            .with_context(|| format!("calling the admin API at {}", self.base))
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        self.call_if(method, path, body, None).await
    }

    /// [`Admin::call`] with an `If-Match` version, if given.
    async fn call_if(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        version: Option<u64>,
    ) -> anyhow::Result<Value> {
        let response = self.send_if(method, path, body, version).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let parsed = serde_json::from_slice::<Value>(&bytes).ok();
        if status.is_success() && parsed.as_ref().is_none_or(|v| !v.is_object()) {
            bail!(
                "{} did not answer like Switchyard's admin API ({status}, a body that is not a JSON object): is it the admin address?",
                self.base
            );
        }
        let value = parsed.unwrap_or_else(|| json!({"raw": String::from_utf8_lossy(&bytes)}));
        if !status.is_success() {
            let message = value["error"]["message"]
                .as_str()
                .map_or_else(|| value.to_string(), str::to_string);
            bail!("{status}: {message}");
        }
        Ok(value)
    }
}

/// Runs one `ctl` command against the admin API.
pub fn run(args: CtlArgs) -> anyhow::Result<()> {
    let CtlArgs {
        admin,
        json: json_output,
        tls,
        command,
    } = args;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let admin = Admin::new(&admin, tls)?;
    runtime.block_on(execute(&admin, json_output, command))
}

async fn execute(admin: &Admin, json_output: bool, command: CtlCommand) -> anyhow::Result<()> {
    let show = |value: &Value, human: &dyn Fn(&Value)| {
        if json_output {
            say!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        } else {
            human(value);
        }
    };
    match command {
        CtlCommand::Routes => {
            let routes = admin.call(Method::GET, "/v1/routes", None).await?;
            show(&routes, &print_routes);
        }
        CtlCommand::Weights { route, pools } => {
            let current = admin
                .call(Method::GET, &format!("/v1/routes/{route}"), None)
                .await?;
            let weights = parse_weights(&current, &pools)?;
            // The weights were worked out from what was read: a change made
            // in between is not overwritten blindly (412 instead).
            let after = admin
                .call_if(
                    Method::PUT,
                    &format!("/v1/routes/{route}/weights"),
                    Some(json!({"weights": weights})),
                    current["version"].as_u64(),
                )
                .await?;
            show(&after, &|v| {
                print_routes(&json!({"version": v["version"], "routes": [v]}))
            });
        }
        CtlCommand::Rollout {
            route,
            preset,
            steps,
            strategy,
            step,
            interval,
            bake,
            target,
        } => {
            let mut spec = serde_json::Map::new();
            if let Some(preset) = preset {
                spec.insert("preset".into(), json!(preset));
            } else if let Some(steps) = steps {
                spec.insert("strategy".into(), json!("canary"));
                spec.insert("steps".into(), parse_steps(&steps)?);
            } else if let Some(strategy) = strategy {
                spec.insert("strategy".into(), json!(strategy));
                if let Some(step) = step {
                    let bp = percent_to_basis_points(&step).context("--step")?;
                    spec.insert("step".into(), json!(bp));
                }
                if let Some(interval) = interval {
                    spec.insert("interval".into(), json!(interval));
                }
                if let Some(bake) = bake {
                    spec.insert("bake".into(), json!(bake));
                }
            } else {
                bail!("give --preset, --steps or --strategy");
            }
            if let Some(target) = target {
                spec.insert("target".into(), json!(target));
            }
            let status = admin
                .call(
                    Method::POST,
                    &format!("/v1/routes/{route}/rollout"),
                    Some(Value::Object(spec)),
                )
                .await?;
            show(&status, &print_rollout);
        }
        CtlCommand::Status { route } => {
            let health = admin
                .call(Method::GET, &format!("/v1/routes/{route}/health"), None)
                .await?;
            show(&health, &print_health);
        }
        CtlCommand::Pause { route } => {
            let status = admin
                .call(
                    Method::POST,
                    &format!("/v1/routes/{route}/rollout/pause"),
                    None,
                )
                .await?;
            show(&status, &print_rollout);
        }
        CtlCommand::Resume { route } => {
            let status = admin
                .call(
                    Method::POST,
                    &format!("/v1/routes/{route}/rollout/resume"),
                    None,
                )
                .await?;
            show(&status, &print_rollout);
        }
        CtlCommand::Promote { route } => {
            let status = admin
                .call(
                    Method::POST,
                    &format!("/v1/routes/{route}/rollout/promote"),
                    None,
                )
                .await?;
            show(&status, &print_rollout);
        }
        CtlCommand::Abort { route, reason } => {
            let body = reason.map(|r| json!({"reason": r}));
            let status = admin
                .call(
                    Method::POST,
                    &format!("/v1/routes/{route}/rollout/abort"),
                    body,
                )
                .await?;
            show(&status, &print_rollout);
        }
        CtlCommand::Events {
            follow: false,
            since,
        } => {
            let events = admin
                .call(Method::GET, &format!("/v1/events?since={since}"), None)
                .await?;
            show(&events, &|v| {
                for event in v["events"].as_array().into_iter().flatten() {
                    print_event(event);
                }
            });
        }
        CtlCommand::Events {
            follow: true,
            since,
        } => {
            let response = admin
                .send(
                    Method::GET,
                    &format!("/v1/events/stream?since={since}"),
                    None,
                )
                .await?;
            if !response.status().is_success() {
                bail!("{}: cannot follow events", response.status());
            }
            let mut body = response.into_body();
            let mut pending = String::new();
            while let Some(frame) = body.frame().await {
                let Ok(data) = frame?.into_data() else {
                    continue;
                };
                pending.push_str(&String::from_utf8_lossy(&data));
                while let Some(end) = pending.find("\n\n") {
                    let message: String = pending.drain(..end + 2).collect();
                    if let Some(data) = message.lines().find_map(|l| l.strip_prefix("data: ")) {
                        let event: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                        if json_output {
                            say!("{event}");
                        } else {
                            print_event(&event);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// `canary=25%` (pools not named keep their weights, the baseline takes
/// the rest) or every pool given.
fn parse_weights(route: &Value, pools: &[String]) -> anyhow::Result<BTreeMap<String, u32>> {
    let mut weights = BTreeMap::new();
    for pair in pools {
        let (pool, value) = pair
            .split_once('=')
            .with_context(|| format!("{pair:?} is not POOL=PERCENT"))?;
        let bp = match value.strip_prefix("bp:") {
            Some(bp) => bp
                .parse::<u32>()
                .ok()
                .filter(|bp| *bp <= 10_000)
                .with_context(|| format!("{pair}: {value:?} is not basis points (0 to 10000)"))?,
            None => percent_to_basis_points(value).with_context(|| pair.to_string())?,
        };
        weights.insert(pool.to_string(), bp);
    }
    let baseline = route["baseline"]
        .as_str()
        .context("the admin API's answer names no baseline for the route")?
        .to_string();
    if !weights.contains_key(&baseline) {
        // Pools not named keep their weights; the baseline takes the rest.
        let current = route["weights"].as_object().into_iter().flatten();
        for (pool, weight) in current {
            if *pool != baseline && !weights.contains_key(pool) {
                let weight = weight.as_u64().and_then(|w| u32::try_from(w).ok());
                weights.insert(pool.clone(), weight.unwrap_or(0));
            }
        }
        let given: u32 = weights.values().sum();
        if given > 10_000 {
            bail!("the weights of the pools other than the baseline add up to more than 100%");
        }
        weights.insert(baseline, 10_000 - given);
    }
    Ok(weights)
}

/// `5%:5m,25%:10m,100%` → canary steps.
fn parse_steps(text: &str) -> anyhow::Result<Value> {
    let mut steps = Vec::new();
    for part in text.split(',') {
        let (weight, pause) = match part.split_once(':') {
            Some((weight, pause)) => (weight, Some(pause)),
            None => (part, None),
        };
        let mut step = json!({
            "weight": percent_to_basis_points(weight).with_context(|| format!("step {part:?}"))?
        });
        if let Some(pause) = pause {
            step["pause"] = json!(pause);
        }
        steps.push(step);
    }
    Ok(Value::Array(steps))
}

fn percent(bp: &Value) -> String {
    let bp = bp.as_u64().unwrap_or(0);
    format!("{}.{:02}%", bp / 100, bp % 100)
}

fn print_routes(value: &Value) {
    say!("version {}", value["version"]);
    say!(
        "{:<16} {:<40} {:<14} ROLLOUT",
        "ROUTE",
        "WEIGHTS",
        "BASELINE"
    );
    for route in value["routes"].as_array().into_iter().flatten() {
        let weights: Vec<String> = route["weights"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(pool, bp)| format!("{pool}={}", percent(bp)))
            .collect();
        let rollout = match &route["rollout"] {
            Value::Null => "-".to_string(),
            r => format!(
                "{} {} step {}/{}",
                r["strategy"].as_str().unwrap_or("?"),
                r["state"].as_str().unwrap_or("?"),
                r["step"],
                r["steps"]
            ),
        };
        say!(
            "{:<16} {:<40} {:<14} {rollout}",
            route["name"].as_str().unwrap_or("?"),
            weights.join(" "),
            route["baseline"].as_str().unwrap_or("?"),
        );
    }
}

fn print_rollout(value: &Value) {
    let rollout = &value["rollout"];
    if rollout.is_null() {
        say!(
            "route {}: no rollout",
            value["route"].as_str().unwrap_or("?")
        );
        return;
    }
    say!(
        "route {}: {} rollout to {} is {}, step {}/{} at {}",
        value["route"].as_str().unwrap_or("?"),
        rollout["strategy"].as_str().unwrap_or("?"),
        rollout["target"].as_str().unwrap_or("?"),
        rollout["state"].as_str().unwrap_or("?"),
        rollout["step"],
        rollout["steps"],
        percent(&rollout["weight"]),
    );
    if let Some(ms) = rollout["remaining_ms"].as_u64() {
        let secs = ms as f64 / 1000.0;
        match rollout["state"].as_str() {
            Some("paused") => say!("  {secs:.1}s of the step left when resumed"),
            _ => say!("  next step in {secs:.1}s"),
        }
    }
    if let Some(reason) = rollout["reason"].as_str() {
        say!("  {reason}");
    }
}

fn print_health(value: &Value) {
    let route = value["route"].as_str().unwrap_or("?");
    let weights: Vec<String> = value["weights"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(pool, bp)| format!("{pool}={}", percent(bp)))
        .collect();
    say!(
        "route {route} (version {}): {}",
        value["version"],
        weights.join(" ")
    );
    print_rollout(&json!({"route": route, "rollout": value["rollout"]}));
    for (pool, live) in value["pools"].as_object().into_iter().flatten() {
        let rate = live["error_rate"]
            .as_f64()
            .map_or("-".to_string(), |r| format!("{:.2}%", r * 100.0));
        let p99 = live["p99_ms"]
            .as_f64()
            .map_or("-".to_string(), |ms| format!("{ms:.1} ms"));
        say!(
            "  pool {pool}: errors {rate} ({} of {} over 60 s), p99 {p99}, endpoints {} of {} up",
            live["errors_60s"],
            live["requests_60s"],
            live["endpoints_up"],
            live["endpoints"],
        );
    }
    if value["baseline_failing"] == true {
        say!("  the baseline is failing too: the canary is judged against its raised rate");
    }
    for (pool, status) in value["canaries"].as_object().into_iter().flatten() {
        let rate = |n: &Value| {
            n.as_f64()
                .map_or("-".to_string(), |r| format!("{:.2}%", r * 100.0))
        };
        say!(
            "  canary {pool}: allowed error rate {} (baseline {} of {} over 60 s, 5 s rate {})",
            rate(&status["p0"]),
            status["baseline_errors"],
            status["baseline_requests"],
            rate(&status["baseline_rate_short"]),
        );
        for arm in status["arms"].as_array().into_iter().flatten() {
            say!(
                "    {:<12} S {:>5.1} / {}  ({} of {} since clear)",
                arm["arm"].as_str().unwrap_or("?"),
                arm["s"].as_f64().unwrap_or(0.0),
                status["threshold"],
                arm["canary_events"],
                arm["canary_requests"],
            );
        }
    }
    match &value["last_verdict"] {
        Value::Null => say!("  last verdict: none"),
        verdict => {
            // A latency verdict may rest on requests that had no answer.
            let unanswered = match verdict["canary_unanswered"].as_u64() {
                Some(n) if n > 0 => format!("; {n} of them unanswered"),
                _ => String::new(),
            };
            say!(
                "  last verdict: fell back from {} on {} (S {:.1}, {} of {} canary requests bad{unanswered})",
                verdict["pool"].as_str().unwrap_or("?"),
                verdict["arm"].as_str().unwrap_or("?"),
                verdict["s"].as_f64().unwrap_or(0.0),
                verdict["canary_events"],
                verdict["canary_requests"],
            )
        }
    }
}

fn print_event(event: &Value) {
    let weights = |w: &Value| {
        w.as_object()
            .map(|m| {
                m.iter()
                    .map(|(p, bp)| format!("{p}={}", percent(bp)))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    say!(
        "#{} {} {:<18} {:<10} by {}: {} {}{}",
        event["id"],
        event["time"].as_str().unwrap_or("?"),
        event["kind"].as_str().unwrap_or("?"),
        event["route"].as_str().unwrap_or("-"),
        event["who"].as_str().unwrap_or("?"),
        event["reason"].as_str().unwrap_or(""),
        weights(&event["old_weights"]),
        if event["new_weights"].is_null() {
            String::new()
        } else {
            format!(" -> {}", weights(&event["new_weights"]))
        },
    );
}
