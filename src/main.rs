//! The `switchyard` binary: command line, logging, and wiring of the config,
//! the routing table and the data plane.

mod ctl;
mod demo;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use switchyard_admin::watch::{watch_certificates, CertificateWatch};
use switchyard_admin::{AdminApi, ControlPlane, StateStore};
use switchyard_config::raw::{
    RawCertificate, RawEndpoint, RawListener, RawListenerTls, RawPool, RawRoute, RawSplit,
    RawTimeouts,
};
use switchyard_config::{AdminTls, CertificateFiles, Config, RawConfig};
use switchyard_proxy::tls::TlsTerminator;
use switchyard_proxy::{Listen, RouteTable, Server};

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A reverse proxy that makes releases safe"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy: on a config file, on one route given by flags, or
    /// with no arguments on the embedded demo (two upstreams split 90/10).
    Run(Box<RunArgs>),
    /// Validate a config file and print the routing table it would build.
    Check {
        /// The config file (JSON).
        file: PathBuf,
    },
    /// Talk to a running Switchyard's admin API (token from SWITCHYARD_ADMIN_TOKEN).
    Ctl(Box<ctl::CtlArgs>),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Config file (JSON). Without it and without --stable, the embedded demo runs.
    #[arg(long, conflicts_with_all = ["stable", "canary", "canary_weight", "listen", "upstream_timeout", "tls_cert"])]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Stable pool endpoints: HOST:PORT[,HOST:PORT...].
    #[arg(long, value_delimiter = ',')]
    stable: Vec<String>,
    /// Canary pool endpoints: HOST:PORT[,HOST:PORT...].
    #[arg(long, value_delimiter = ',', requires = "stable")]
    canary: Vec<String>,
    /// Share of requests for the canary, in percent (0-100, two decimals).
    #[arg(long, requires = "canary")]
    canary_weight: Option<String>,
    /// How long to wait for an upstream's response head (2s, 500ms).
    #[arg(long)]
    upstream_timeout: Option<String>,
    /// Serve HTTPS with this certificate chain (PEM), for the one-route mode.
    #[arg(long, requires_all = ["tls_key", "stable"])]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Worker threads (default: the number of cores).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
    /// Admin API address (default: the config's `admin.address`, else
    /// 127.0.0.1:9901). On a non-loopback address a token is required.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Serve the admin API over TLS with this certificate chain (PEM).
    #[arg(long, requires = "admin_tls_key")]
    admin_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --admin-tls-cert.
    #[arg(long, requires = "admin_tls_cert")]
    admin_tls_key: Option<PathBuf>,
    /// Require admin clients to present a certificate issued by a CA in
    /// this PEM file (mutual TLS).
    #[arg(long, requires = "admin_tls_cert")]
    admin_client_ca: Option<PathBuf>,
    /// File holding the admin bearer token (or set SWITCHYARD_ADMIN_TOKEN).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Directory for the runtime state (weights set through the API) and
    /// the audit log. Without it, admin changes do not survive a restart.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Start from a clean state when the state file is corrupt.
    #[arg(long)]
    reset_state: bool,
    /// Bytes past which the audit log (STATE_DIR/events.jsonl) is rotated
    /// to events.jsonl.1, replacing the one before.
    #[arg(long, default_value_t = switchyard_admin::events::DEFAULT_AUDIT_LIMIT,
          value_parser = clap::value_parser!(u64).range(4096..))]
    audit_log_max_bytes: u64,
    /// Requests the canary must serve at a rollout step before the step
    /// may move on (0: none); with less traffic the rollout holds.
    #[arg(long, default_value_t = 100)]
    min_step_requests: u64,
    /// Count nothing per request: no request, error or latency series and
    /// no canary health (no automatic fallback, no rollout gates). For
    /// measuring what counting costs, not for production.
    #[arg(long)]
    no_request_metrics: bool,
    /// Log each request answered, one JSON object a line, to this file
    /// (`/dev/stdout` for the console); wins over the config's
    /// `access_log`. SIGUSR1 opens it again, after log rotation.
    #[arg(long, value_name = "PATH")]
    access_log: Option<std::path::PathBuf>,
}

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_ADMIN: &str = "127.0.0.1:9901";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { file } => check(&file),
        Command::Run(args) => run(*args),
        Command::Ctl(args) => ctl::run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(file: &Path) -> anyhow::Result<()> {
    let config = load(file)?;
    if let Err(err) = RouteTable::build(&config, 1) {
        // An endpoint that does not resolve: placed at its line.
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if let Some(placed) = switchyard_admin::build_error_at(&config, &text, &err) {
            bail!("{}:{placed}", file.display());
        }
        return Err(anyhow::Error::new(err).context(format!("{}", file.display())));
    }
    let terminators = tls_terminators(&config).with_context(|| format!("{}", file.display()))?;
    let admin = match &config.admin.tls {
        Some(tls) => Some(admin_terminator(tls).with_context(|| format!("{}", file.display()))?),
        None => None,
    };
    print!("{config}");
    for (addr, terminator) in &terminators {
        print_certificates(&addr.to_string(), terminator);
    }
    if let Some(terminator) = &admin {
        print_certificates("admin", terminator);
    }
    println!("{}: ok", file.display());
    Ok(())
}

/// One line per certificate: its file, names, and days left.
fn print_certificates(label: &str, terminator: &TlsTerminator) {
    for summary in terminator.summaries().iter() {
        println!(
            "  tls {label}: {} names {}{}, expires in {} days",
            summary.cert_file.display(),
            if summary.names.is_empty() {
                "none".to_string()
            } else {
                summary.names.join(", ")
            },
            if summary.is_default { " (default)" } else { "" },
            summary.days_left()
        );
    }
}

/// Loads a config file; a bad one is reported as `file:line:column: path: reason`.
fn load(file: &Path) -> anyhow::Result<Config> {
    switchyard_config::load(file).map_err(|err| match err {
        switchyard_config::ConfigError::Read { .. } => anyhow::Error::new(err),
        other => anyhow::anyhow!("{}:{other}", file.display()),
    })
}

/// `config` with the addresses its listeners are bound to (a port 0 is
/// shown as the port it got), for the banner.
fn with_bound_ports(config: &Config, bound: &[SocketAddr]) -> Config {
    let mut shown = config.clone();
    for (given, actual) in shown.listeners.iter_mut().zip(bound) {
        for tls in shown.tls.iter_mut().filter(|tls| tls.address == *given) {
            tls.address = *actual;
        }
        *given = *actual;
    }
    shown
}

fn run(mut args: RunArgs) -> anyhow::Result<()> {
    // Before anything listens: a SIGTERM that comes as soon as the proxy
    // serves must drain it, not kill it.
    let mut signals = Signals::install()?;
    // One name for the config file from here on, whoever reads it (the
    // start, SIGHUP, the watch, `PUT /v1/config`): the paths it names are
    // taken from its directory, and a relative one read two ways made the
    // same file look changed.
    if let Some(file) = args.config.as_mut().filter(|f| f.is_relative()) {
        if let Ok(cwd) = std::env::current_dir() {
            // The directory as the shell names it (`$PWD`, symlinks kept,
            // as `pwd -L`) when it is the same one: a release switch of a
            // symlinked working directory is then watched.
            let logical = std::env::var_os("PWD")
                .map(std::path::PathBuf::from)
                .filter(|pwd| pwd.is_absolute())
                .filter(|pwd| std::fs::canonicalize(pwd).ok() == std::fs::canonicalize(&cwd).ok());
            *file = logical.unwrap_or(cwd).join(&*file);
        }
    }
    let workers = args.workers.map(usize::from).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let (config, demo) = if let Some(file) = &args.config {
        (load(file)?, false)
    } else if !args.stable.is_empty() {
        (one_route(&args)?, false)
    } else {
        let addrs = demo::start(&["blue", "green"])?;
        let raw = split_config(
            args.listen
                .map_or_else(|| DEFAULT_LISTEN.to_string(), |a| a.to_string()),
            vec![addrs[0].to_string()],
            vec![addrs[1].to_string()],
            ("blue", "green"),
            1000,
            None,
        );
        (raw.into_config().context("the embedded default")?, true)
    };

    let token = admin_token(&args)?;
    // The flag wins over the config file, which wins over the default.
    let admin_addr = admin_address(args.admin, &config.admin);
    exposed_without_token(token.is_some(), admin_addr).map_err(anyhow::Error::msg)?;
    let (store, state) = StateStore::open(args.state_dir.as_deref(), args.reset_state)
        .context("loading the runtime state")?;
    let store = store.with_audit_limit(args.audit_log_max_bytes);
    if args.state_dir.is_none() {
        tracing::warn!(
            "no --state-dir: weights set through the admin API will not survive a restart"
        );
    }
    let access_log = args
        .access_log
        .clone()
        .or_else(|| config.access_log.clone());
    if let Some(path) = &access_log {
        switchyard_proxy::access_log::set(Some(path))
            .with_context(|| format!("opening the access log {}", path.display()))?;
    }
    if args.no_request_metrics {
        tracing::warn!("--no-request-metrics: requests are not counted; canary health is off");
        switchyard_proxy::stats::set_counting(false);
    }
    let plane = match ControlPlane::start(config.clone(), args.config.clone(), store, state) {
        Ok(plane) => plane,
        // An endpoint that does not resolve: placed at its line, as
        // `check` places it.
        Err(switchyard_admin::AdminError::Build(err)) => {
            let placed = args.config.as_ref().and_then(|file| {
                let text = std::fs::read_to_string(file).ok()?;
                let placed = switchyard_admin::build_error_at(&config, &text, &err)?;
                Some(format!("{}:{placed}", file.display()))
            });
            match (placed, &err) {
                (Some(placed), _) => bail!("{placed}"),
                // One route from flags: its pools are named after them.
                (
                    None,
                    switchyard_proxy::ForwardError::Resolve {
                        pool,
                        address,
                        source,
                    },
                ) if args.config.is_none() && !args.stable.is_empty() => {
                    bail!("--{pool}: {address} does not resolve: {source}")
                }
                (None, _) => {
                    return Err(anyhow::Error::new(err).context("building the routing table"))
                }
            }
        }
        Err(err) => return Err(anyhow::Error::new(err)),
    };
    let terminators = tls_terminators(&config)?;
    let listen: Vec<Listen> = config
        .listeners
        .iter()
        .map(|addr| {
            let tls = terminators
                .iter()
                .find(|(tls_addr, _)| tls_addr == addr)
                .map(|(_, terminator)| Arc::clone(terminator));
            (*addr, tls)
        })
        .collect();
    let server = Server::start_with_tls(plane.routes(), &listen, workers).context("starting")?;
    plane.set_listener_hook(listener_hook(&server, &plane, &config, &terminators)?);
    plane.set_admin_check(admin_check(&args, token.is_some()));
    if let Some(path) = &args.access_log {
        plane.pin_access_log(path.clone());
    }
    let scheme = if listen[0].1.is_some() {
        "https"
    } else {
        "http"
    };
    // The listeners and the hook hold the terminators from here: one a
    // reload replaces goes (and its expiry series with it).
    drop((listen, terminators));
    if let Some(file) = &args.config {
        switchyard_admin::watch::watch_config(Arc::clone(&plane), file)
            .context("watching the config file")?;
    }
    let admin_tls = admin_tls(&args, &config)?;
    let _admin_watch = watch_certificates(Arc::clone(&plane), admin_tls.iter().cloned().collect())
        .context("watching the admin listener's certificate files")?;
    let admin_scheme = if admin_tls.is_some() { "https" } else { "http" };
    let api = AdminApi::new(Arc::clone(&plane), token);
    // Without counting, a gate would see no traffic and hold for good.
    let min_step_requests = match args.no_request_metrics {
        true => 0,
        false => args.min_step_requests,
    };
    api.board().set_min_step_requests(min_step_requests);
    let admin = switchyard_admin::server::start_with_tls(admin_addr, api, admin_tls)
        .context("starting the admin API")?;
    let addr = server.local_addrs()[0];
    if demo {
        println!("Switchyard is running the embedded demo on http://{addr}");
        println!("  two demo upstreams, blue (90%) and green (10%), answer with their name:");
        println!("    curl http://{addr}/");
        println!("    curl -H 'x-switchyard-pool: green' http://{addr}/   # pin a pool");
        println!("  your own upstreams: switchyard run --stable HOST:PORT --canary HOST:PORT --canary-weight 10");
        println!("  a config file:      switchyard run --config examples/canary.json");
    } else {
        println!("Switchyard is listening on {scheme}://{addr}");
        print!("{}", with_bound_ports(&config, &server.local_addrs()));
    }
    println!("Admin API on {admin_scheme}://{admin}/v1/routes");
    println!("Ctrl-C or SIGTERM stops it after in-flight requests finish.");

    signals.wait(|| async {
        match &args.config {
            Some(file) => {
                let _ = plane.reload(file, "sighup").await;
            }
            None => tracing::info!("SIGHUP: no config file to reload"),
        }
    })?;
    tracing::info!("shutting down: draining in-flight requests (a second signal stops at once)");
    signals.force_on_next();
    plane.set_draining();
    server.shutdown();
    tracing::info!("stopped");
    Ok(())
}

/// A TLS listener's terminator in use, and the watch on its files.
struct Watched {
    settings: switchyard_config::ListenerTls,
    terminator: Arc<TlsTerminator>,
    _watch: Option<CertificateWatch>,
}

/// How a reload rebinds the listeners. TLS listeners whose settings did
/// not change keep their terminator and its certificate watch; new or
/// changed ones load theirs, watched from the commit on; the watches of
/// listeners that are gone end.
fn listener_hook(
    server: &Server,
    plane: &Arc<ControlPlane>,
    config: &Config,
    terminators: &[(SocketAddr, Arc<TlsTerminator>)],
) -> anyhow::Result<switchyard_admin::ListenerHook> {
    let listeners = server.listeners();
    // The plane holds the hook: a weak reference, not a cycle.
    let weak = Arc::downgrade(plane);
    let mut known = Vec::new();
    for settings in &config.tls {
        let Some((_, terminator)) = terminators.iter().find(|(a, _)| *a == settings.address) else {
            continue;
        };
        let watch = watch_certificates(Arc::clone(plane), vec![Arc::clone(terminator)])
            .with_context(|| format!("watching the certificate files of {}", settings.address))?;
        known.push(Watched {
            settings: settings.clone(),
            terminator: Arc::clone(terminator),
            _watch: Some(watch),
        });
    }
    let known = Arc::new(std::sync::Mutex::new(known));
    Ok(Box::new(move |config: &Config| {
        let mut listen: Vec<Listen> = Vec::with_capacity(config.listeners.len());
        let mut in_use = Vec::new();
        {
            let current = known.lock().unwrap_or_else(|e| e.into_inner());
            for addr in &config.listeners {
                let Some(settings) = config.tls.iter().find(|t| t.address == *addr) else {
                    listen.push((*addr, None));
                    continue;
                };
                let terminator = match current.iter().find(|w| w.settings == *settings) {
                    Some(watched) => Arc::clone(&watched.terminator),
                    None => Arc::new(TlsTerminator::load(settings).map_err(|err| {
                        format!("listener {addr}: loading its certificates: {err:#}")
                    })?),
                };
                in_use.push((settings.clone(), Arc::clone(&terminator)));
                listen.push((*addr, Some(terminator)));
            }
        }
        let prepared = listeners
            .prepare(&listen)
            .map_err(|err| format!("{err}; the listeners stay as they were"))?;
        let (known, weak) = (Arc::clone(&known), weak.clone());
        let commit: switchyard_admin::ListenerCommit = Box::new(move || {
            prepared.commit();
            let mut known = known.lock().unwrap_or_else(|e| e.into_inner());
            let mut old = std::mem::take(&mut *known);
            for (settings, terminator) in in_use {
                if let Some(at) = old
                    .iter()
                    .position(|w| Arc::ptr_eq(&w.terminator, &terminator))
                {
                    known.push(old.swap_remove(at));
                    continue;
                }
                let watch = weak.upgrade().and_then(|plane| {
                    watch_certificates(plane, vec![Arc::clone(&terminator)])
                        .map_err(|err| {
                            tracing::warn!(error = %err, listener = %settings.address, "cannot watch a listener's certificate files");
                        })
                        .ok()
                });
                known.push(Watched {
                    settings,
                    terminator,
                    _watch: watch,
                });
            }
            // What is left in `old` is no longer in use: its watches end.
        });
        Ok(commit)
    }))
}

/// Loads the certificates of every TLS listener; each error names the
/// file and where the config lists it.
fn tls_terminators(config: &Config) -> anyhow::Result<Vec<(SocketAddr, Arc<TlsTerminator>)>> {
    config
        .tls
        .iter()
        .map(|listener| {
            let terminator = TlsTerminator::load(listener).with_context(|| {
                format!("loading the certificates of listener {}", listener.address)
            })?;
            Ok((listener.address, Arc::new(terminator)))
        })
        .collect()
}

/// The admin listener's TLS: from `--admin-tls-cert`, `--admin-tls-key`
/// and `--admin-client-ca` when given, else from the config's `admin.tls`.
fn admin_tls(args: &RunArgs, config: &Config) -> anyhow::Result<Option<Arc<TlsTerminator>>> {
    let from_flags = match (&args.admin_tls_cert, &args.admin_tls_key) {
        (Some(cert_file), Some(key_file)) => Some(AdminTls {
            certificate: CertificateFiles {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
                names: Vec::new(),
                is_default: true,
                origin: "--admin-tls-cert".to_string(),
            },
            client_ca_file: args.admin_client_ca.clone(),
        }),
        _ => None,
    };
    let Some(tls) = from_flags.or_else(|| config.admin.tls.clone()) else {
        return Ok(None);
    };
    Ok(Some(Arc::new(admin_terminator(&tls)?)))
}

fn admin_terminator(tls: &AdminTls) -> anyhow::Result<TlsTerminator> {
    let origin = tls.certificate.origin.clone();
    let client_ca = tls
        .client_ca_file
        .as_deref()
        .map(|file| (origin.as_str(), file));
    TlsTerminator::new(
        "admin",
        std::slice::from_ref(&tls.certificate),
        &["http/1.1"],
        client_ca,
    )
    .context("setting up TLS for the admin API")
}

/// Where the admin API listens: the flag, else the config's, else the default.
fn admin_address(flag: Option<SocketAddr>, admin: &switchyard_config::AdminListener) -> SocketAddr {
    flag.or(admin.address)
        .unwrap_or_else(|| DEFAULT_ADMIN.parse().expect("a valid default address"))
}

/// Refuses an admin API reachable from other hosts without a token.
fn exposed_without_token(has_token: bool, addr: SocketAddr) -> Result<(), String> {
    if has_token || addr.ip().is_loopback() {
        return Ok(());
    }
    Err(format!(
        "the admin API on {addr} is reachable from other hosts: give it a token \
         (--admin-token-file or SWITCHYARD_ADMIN_TOKEN) or listen on loopback"
    ))
}

/// Checks a reloaded config's admin section as the next start would take
/// it (with these flags and token): a section the start would refuse is
/// refused now, rather than written and found at the restart.
fn admin_check(args: &RunArgs, has_token: bool) -> switchyard_admin::AdminCheck {
    let (flag, tls_from_flags) = (args.admin, args.admin_tls_cert.is_some());
    Box::new(move |admin| {
        exposed_without_token(has_token, admin_address(flag, admin))?;
        match (&admin.tls, tls_from_flags) {
            (Some(tls), false) => admin_terminator(tls)
                .map(drop)
                .map_err(|err| format!("{err:#}")),
            _ => Ok(()),
        }
    })
}

/// The admin token from `--admin-token-file` or `SWITCHYARD_ADMIN_TOKEN`.
fn admin_token(args: &RunArgs) -> anyhow::Result<Option<String>> {
    let token = match &args.admin_token_file {
        Some(file) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("reading the admin token file {}", file.display()))?,
        ),
        None => std::env::var("SWITCHYARD_ADMIN_TOKEN").ok(),
    };
    match token.map(|t| t.trim().to_string()) {
        Some(t) if t.is_empty() => bail!("the admin token is empty"),
        other => Ok(other),
    }
}

/// SIGTERM, SIGINT and SIGHUP, caught from when they are installed (until
/// then, each would end the process at once).
struct Signals {
    runtime: tokio::runtime::Runtime,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the signal runtime")?;
        let entered = runtime.enter();
        let term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let usr1 = signal(SignalKind::user_defined1()).context("installing the SIGUSR1 handler")?;
        drop(entered);
        Ok(Signals {
            runtime,
            term,
            int,
            hup,
            usr1,
        })
    }

    /// Waits for SIGTERM or SIGINT; on SIGHUP runs `on_hup`, on SIGUSR1
    /// opens the access log again (as nginx's `USR1`, for log rotation),
    /// and keeps waiting.
    fn wait<F, Fut>(&mut self, on_hup: F) -> anyhow::Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let Signals {
            runtime,
            term,
            int,
            hup,
            usr1,
        } = self;
        runtime.block_on(async {
            loop {
                tokio::select! {
                    _ = term.recv() => return Ok(()),
                    _ = int.recv() => return Ok(()),
                    _ = hup.recv() => on_hup().await,
                    _ = usr1.recv() => match switchyard_proxy::access_log::reopen() {
                        Ok(()) => tracing::info!("SIGUSR1: access log opened again"),
                        Err(err) => tracing::warn!(error = %err, "SIGUSR1: cannot open the access log again; lines go to the old file"),
                    },
                }
            }
        })
    }

    /// While the drain runs: a second SIGTERM or SIGINT (an impatient
    /// Ctrl-C) ends the process at once, with status 1, as Caddy does.
    fn force_on_next(self) {
        let Signals {
            runtime,
            mut term,
            mut int,
            hup,
            usr1,
        } = self;
        drop((hup, usr1));
        std::thread::spawn(move || {
            runtime.block_on(async {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            });
            eprintln!("a second signal: stopping without waiting for in-flight requests");
            std::process::exit(1);
        });
    }
}

/// The one-route command line: `--stable`, `--canary`, `--canary-weight`.
fn one_route(args: &RunArgs) -> anyhow::Result<Config> {
    let canary_bp = match (&args.canary_weight, args.canary.is_empty()) {
        (_, true) => 0,
        (None, false) => 1000,
        (Some(pct), false) => percent_to_basis_points(pct).context("--canary-weight")?,
    };
    let canary = (!args.canary.is_empty()).then(|| args.canary.clone());
    let mut raw = split_config(
        args.listen
            .map_or_else(|| DEFAULT_LISTEN.to_string(), |a| a.to_string()),
        args.stable.clone(),
        canary.unwrap_or_default(),
        ("stable", "canary"),
        canary_bp,
        args.upstream_timeout.clone(),
    );
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        raw.listeners[0].tls = Some(RawListenerTls {
            certificates: vec![RawCertificate {
                cert_file: cert.to_string_lossy().into_owned(),
                key_file: key.to_string_lossy().into_owned(),
                names: Vec::new(),
                default: true,
            }],
        });
    }
    raw.into_config().map_err(|err| {
        // The config was made from the flags: the error names the flag.
        let path = err.path().unwrap_or_default();
        let flag = [
            ("timeouts.response_header", "--upstream-timeout"),
            ("pools.stable", "--stable"),
            ("pools.canary", "--canary"),
            ("routes", "--canary-weight"),
            ("listeners[0].tls", "--tls-cert/--tls-key"),
            ("listeners", "--listen"),
        ]
        .iter()
        .find(|(prefix, _)| path.starts_with(prefix))
        .map_or("the flags", |(_, flag)| flag);
        anyhow::anyhow!("invalid command line: {flag}: {}", err.reason())
    })
}

/// A one-route config: baseline pool, optional second pool, its weight.
fn split_config(
    listen: String,
    baseline: Vec<String>,
    other: Vec<String>,
    (baseline_name, other_name): (&str, &str),
    other_bp: u32,
    upstream_timeout: Option<String>,
) -> RawConfig {
    let mut pools = BTreeMap::new();
    let mut weights = BTreeMap::new();
    pools.insert(
        baseline_name.to_string(),
        RawPool {
            endpoints: baseline.into_iter().map(RawEndpoint::Address).collect(),
            policy: None,
            health_check: None,
            outlier_detection: None,
            tls: None,
        },
    );
    if other.is_empty() {
        weights.insert(baseline_name.to_string(), 10_000);
    } else {
        pools.insert(
            other_name.to_string(),
            RawPool {
                endpoints: other.into_iter().map(RawEndpoint::Address).collect(),
                policy: None,
                health_check: None,
                outlier_detection: None,
                tls: None,
            },
        );
        weights.insert(baseline_name.to_string(), 10_000 - i64::from(other_bp));
        weights.insert(other_name.to_string(), i64::from(other_bp));
    }
    RawConfig {
        listeners: vec![RawListener {
            address: listen,
            tls: None,
        }],
        pools,
        routes: vec![RawRoute {
            name: "default".to_string(),
            matcher: Default::default(),
            split: RawSplit {
                baseline: baseline_name.to_string(),
                weights,
            },
            sticky: None,
            pool_override: None,
            canary_health: None,
            retries: None,
            fast_path: None,
        }],
        timeouts: RawTimeouts {
            response_header: upstream_timeout,
            ..Default::default()
        },
        limits: Default::default(),
        admin: None,
        dns: None,
        access_log: None,
    }
}

/// `10`, `10%`, `2.5`, `0.01` → basis points, exactly (no float rounding).
pub(crate) fn percent_to_basis_points(text: &str) -> anyhow::Result<u32> {
    let trimmed = text.trim().trim_end_matches('%');
    let (whole, fraction) = trimmed.split_once('.').unwrap_or((trimmed, ""));
    if whole.is_empty()
        || fraction.len() > 2
        || !(whole.bytes().chain(fraction.bytes())).all(|b| b.is_ascii_digit())
    {
        bail!("{text:?} must be a percentage from 0 to 100 with at most two decimals");
    }
    // Digits only: a parse fails only when the number is too large.
    let over = || anyhow::anyhow!("{text:?} is over 100%");
    let whole: u64 = whole.parse().map_err(|_| over())?;
    let fraction: u64 = format!("{fraction:0<2}").parse().map_err(|_| over())?;
    let bp = whole.saturating_mul(100).saturating_add(fraction);
    if bp > 10_000 {
        return Err(over());
    }
    Ok(bp as u32)
}

#[cfg(test)]
mod tests {
    use super::percent_to_basis_points;

    #[test]
    fn percentages_convert_exactly() {
        assert_eq!(percent_to_basis_points("10").ok(), Some(1000));
        assert_eq!(percent_to_basis_points("2.5%").ok(), Some(250));
        assert_eq!(percent_to_basis_points("0.01").ok(), Some(1));
        assert_eq!(percent_to_basis_points("100").ok(), Some(10_000));
        assert!(percent_to_basis_points("100.5").is_err());
        assert!(percent_to_basis_points("-1").is_err());
        assert!(percent_to_basis_points("1.234").is_err());
    }
}
