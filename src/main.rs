//! The `poplar` binary: parse the command line, set up logging, call into the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc, as Pingora's own deployments use: about 5% more requests/s than glibc's
/// malloc on the origin and inline paths, at a few MiB more RSS (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit status for a config that does not validate (EX_DATAERR's neighbour EX_USAGE, as
/// sysexits.h has it).
const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "poplar",
    version,
    about = "Edge-compute reverse proxy: wasi:http tasks at the edge, on Pingora and Wasmtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server from a config file.
    Serve {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Take the listening sockets over from the running server (a graceful upgrade):
        /// start this, then send the old process SIGQUIT within 5 s.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config file (and compile its tasks), listing every problem.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print the config file's JSON Schema, for editors to validate and complete configs.
    Schema,
    /// Deploy a component as the current version of a task in a region's registry.
    Deploy {
        /// The task's name.
        name: String,
        /// The wasi:http component.
        file: PathBuf,
        #[command(flatten)]
        region: RegionArgs,
        /// Linear memory it may use (default 64MiB).
        #[arg(long)]
        memory: Option<String>,
        /// Its deadline per request (default 1s).
        #[arg(long)]
        timeout: Option<String>,
        /// The largest request body it takes (default 1MiB).
        #[arg(long)]
        max_body: Option<String>,
    },
    /// List a region's deployed tasks and their versions (or one task's).
    Tasks {
        name: Option<String>,
        #[command(flatten)]
        region: RegionArgs,
    },
    /// Make an earlier version of a task current again.
    Rollback {
        name: String,
        /// The version's digest (`poplar tasks NAME` lists them).
        digest: String,
        #[command(flatten)]
        region: RegionArgs,
    },
    /// Remove a task and all its versions from a region's registry.
    Undeploy {
        name: String,
        #[command(flatten)]
        region: RegionArgs,
    },
    /// Start an origin, two regions and an edge with the example tasks on loopback.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// The edge's HTTPS listener.
        #[arg(long, default_value = "127.0.0.1:8443")]
        https: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9000")]
        origin: SocketAddr,
        /// The two regions' addresses.
        #[arg(long, num_args = 2, default_values = ["127.0.0.1:8181", "127.0.0.1:8182"])]
        regions: Vec<SocketAddr>,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// The first region's admin listener, with its deploy API.
        #[arg(long, default_value = "127.0.0.1:9911")]
        region_admin: SocketAddr,
        /// Where the first region keeps deployed tasks (default: poplar-demo-registry in
        /// the temporary folder, kept across runs).
        #[arg(long, value_name = "DIR")]
        registry: Option<PathBuf>,
        /// Where the built example tasks are.
        #[arg(long, default_value = "tasks/dist")]
        tasks: PathBuf,
    },
}

/// Which region's deploy API, and the token it needs.
#[derive(clap::Args)]
struct RegionArgs {
    /// The region's admin listener, `http://host:port`.
    #[arg(long, value_name = "URL")]
    region: String,
    /// A file holding the deploy token (default: POPLAR_DEPLOY_TOKEN).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

/// Sends one deploy API request and prints the answer: exit 0 on a 2xx.
fn registry_call(args: &RegionArgs, method: &str, path: &str, body: bytes::Bytes) -> ExitCode {
    let token = match &args.token_file {
        Some(file) => std::fs::read_to_string(file)
            .map(|t| t.trim().to_string())
            .map_err(|e| format!("cannot read {}: {e}", file.display())),
        None => std::env::var(poplar::config::DEPLOY_TOKEN_ENV).map_err(|_| {
            format!(
                "no deploy token: set {} or --token-file",
                poplar::config::DEPLOY_TOKEN_ENV
            )
        }),
    };
    let token = match token {
        Ok(token) => token,
        Err(e) => {
            eprintln!("poplar: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let answer = runtime.map_err(anyhow::Error::from).and_then(|rt| {
        rt.block_on(async {
            let admin = poplar::registry::client::Admin::new(&args.region, token).await?;
            admin.send(method, path, body).await
        })
    });
    match answer {
        Ok((status, text)) if (200..300).contains(&status) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok((status, text)) => {
            eprint!("poplar: the region answered {status}: {text}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("poplar: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn deploy(
    name: &str,
    file: &std::path::Path,
    region: &RegionArgs,
    limits: [(&str, Option<String>); 3],
) -> ExitCode {
    let code = match std::fs::read(file) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("poplar: cannot read {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let query = poplar::registry::client::deploy_query(&poplar::wasm::digest(&code), &limits);
    registry_call(
        region,
        "PUT",
        &format!("/tasks/{name}?{query}"),
        code.into(),
    )
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Serve { config, upgrade } => serve(config, upgrade),
        Command::Check { config } => check(config),
        Command::Deploy {
            name,
            file,
            region,
            memory,
            timeout,
            max_body,
        } => deploy(
            &name,
            &file,
            &region,
            [
                ("memory", memory),
                ("timeout", timeout),
                ("max_body", max_body),
            ],
        ),
        Command::Tasks { name, region } => {
            let path = name.map_or_else(|| "/tasks".to_string(), |n| format!("/tasks/{n}"));
            registry_call(&region, "GET", &path, bytes::Bytes::new())
        }
        Command::Rollback {
            name,
            digest,
            region,
        } => {
            let path = format!("/tasks/{name}/current?digest={digest}");
            registry_call(&region, "POST", &path, bytes::Bytes::new())
        }
        Command::Undeploy { name, region } => registry_call(
            &region,
            "DELETE",
            &format!("/tasks/{name}"),
            bytes::Bytes::new(),
        ),
        Command::Schema => {
            let schema = poplar::config::schema::json_schema();
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Command::Demo {
            listen,
            https,
            origin,
            regions,
            admin,
            region_admin,
            registry,
            tasks,
        } => {
            let addrs = poplar::demo::DemoAddrs {
                edge: listen,
                https,
                origin,
                regions: [("us-east", regions[0]), ("eu-west", regions[1])],
                admin,
                region_admin,
                registry: registry
                    .unwrap_or_else(|| std::env::temp_dir().join("poplar-demo-registry")),
            };
            demo(addrs, tasks)
        }
    }
}

fn demo(addrs: poplar::demo::DemoAddrs, tasks: PathBuf) -> ExitCode {
    match poplar::demo::run(addrs, tasks) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("poplar demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(file: PathBuf, upgrade: bool) -> ExitCode {
    // Pingora's timer thread starts on the first request that sets a timeout, a thread
    // spawn on that request's path (~1 ms of the first answer after start); start it now,
    // beside reading the config.
    drop(pingora::prelude::fast_timeout::fast_timeout(
        std::time::Duration::from_secs(1),
        std::future::ready(()),
    ));
    let config = match poplar::config::load(&file) {
        Ok(config) => config,
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    // In an upgrade the old process holds the addresses: they are handed over, not bound.
    let sockets = match upgrade {
        true => poplar::server::Sockets::Upgrade,
        false => match poplar::server::bind_listeners(&config) {
            Ok(listeners) => poplar::server::Sockets::Bound(listeners),
            Err(e) => {
                eprintln!("poplar serve: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let server = poplar::server::build(&config, &file, sockets);
    match server {
        Ok(server) => {
            log::info!("serving {}", file.display());
            server.run_forever()
        }
        Err(errors) => {
            eprint!("{errors}");
            ExitCode::from(EXIT_BAD_CONFIG)
        }
    }
}

fn check(file: PathBuf) -> ExitCode {
    let checked = poplar::config::load(&file).and_then(|config| {
        poplar::server::load_tasks(&config, &file).map(|(_, tasks)| (config, tasks))
    });
    match checked {
        Ok((config, tasks)) => {
            let (routes, regions, tasks) = (config.routes.len(), config.regions.len(), tasks.len());
            let listeners = config.listeners.len();
            let tls = config.listeners.iter().filter(|l| l.tls.is_some()).count();
            let origins = config.origins.len();
            let what = match config.role {
                poplar::config::Role::Edge => format!(
                    "edge: {listeners} listeners ({tls} TLS), {routes} routes, {tasks} tasks, {regions} regions, {origins} origin pools"
                ),
                poplar::config::Role::Region => format!("region: {tasks} tasks"),
            };
            println!("{}: ok ({what})", file.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprint!("{errors}");
            ExitCode::from(EXIT_BAD_CONFIG)
        }
    }
}
