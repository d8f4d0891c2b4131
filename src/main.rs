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
        /// Where the built example tasks are.
        #[arg(long, default_value = "tasks/dist")]
        tasks: PathBuf,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Serve { config, upgrade } => serve(config, upgrade),
        Command::Check { config } => check(config),
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
            tasks,
        } => {
            let addrs = poplar::demo::DemoAddrs {
                edge: listen,
                https,
                origin,
                regions: [("us-east", regions[0]), ("eu-west", regions[1])],
                admin,
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
    let config = match poplar::config::load(&file) {
        Ok(config) => config,
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    // In an upgrade the old process holds the addresses: they are handed over, not bound.
    if !upgrade && let Err(e) = poplar::server::probe_listeners(&config) {
        eprintln!("poplar serve: {e}");
        return ExitCode::FAILURE;
    }
    let server = poplar::server::build(&config, &file, upgrade);
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
