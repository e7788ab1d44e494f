use std::path::PathBuf;

use clap::{Parser, Subcommand};
use image_manager::config::Config;
use image_manager::core::gc::GcOptions;

#[derive(Parser)]
#[command(name = "image-manager", version, about = "OCI registry and ONAP image catalog")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Flags shared by every command that opens the stores.
#[derive(clap::Args)]
struct StoreArgs {
    /// TOML configuration file (see config/image-manager.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory for the embedded defaults (SQLite file and blob folder).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Metadata database URL (sqlite://PATH, postgres://..., mysql://...).
    #[arg(long)]
    database: Option<String>,
    /// Blob store URL (file:///path or s3://BUCKET/PREFIX?endpoint=URL&region=R&path_style=true).
    #[arg(long)]
    storage: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry server.
    Serve {
        #[command(flatten)]
        store: StoreArgs,
        /// Address to listen on (default 127.0.0.1:5000).
        #[arg(long)]
        listen: Option<String>,
        /// Log as JSON lines instead of human-readable text.
        #[arg(long)]
        log_json: bool,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete what no tag reaches any more: untagged manifests past their retention and the
    /// blobs no manifest references past the grace period, bytes included. Safe while the
    /// server runs and pushes go on.
    Gc {
        #[command(flatten)]
        store: StoreArgs,
        /// Report what would be deleted, and how many bytes, without changing anything.
        #[arg(long)]
        dry_run: bool,
        /// Keep untagged manifests younger than this many seconds (default: gc.untagged_retention_secs).
        #[arg(long, value_name = "SECS")]
        untagged_retention_secs: Option<u64>,
        /// Keep unreferenced blobs linked more recently than this many seconds (default: gc.blob_grace_secs).
        #[arg(long, value_name = "SECS")]
        blob_grace_secs: Option<u64>,
        /// Print the report as JSON, every deleted item included.
        #[arg(long)]
        json: bool,
        /// List every deleted item (a dry run always does).
        #[arg(long)]
        verbose: bool,
    },
}

fn load(store: &StoreArgs) -> anyhow::Result<Config> {
    let mut config = Config::load(store.config.as_deref())?;
    if let Some(d) = &store.data_dir {
        config.server.data_dir = d.clone();
    }
    if let Some(u) = &store.database {
        config.storage.database = u.clone();
    }
    if let Some(u) = &store.storage {
        config.storage.blobs = u.clone();
    }
    Ok(config)
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("image-manager: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            store,
            listen,
            log_json,
        } => {
            let mut config = load(&store)?;
            if let Some(l) = listen {
                config.server.listen = l;
            }
            if log_json {
                config.log.format = "json".into();
            }
            init_logging(&config);
            image_manager::server::serve(config).await
        }
        Command::Migrate { store } => {
            let config = load(&store)?;
            init_logging(&config);
            image_manager::server::open_metadata(&config).await?;
            println!("migrations applied to {}", config.database_url());
            Ok(())
        }
        Command::Gc {
            store,
            dry_run,
            untagged_retention_secs,
            blob_grace_secs,
            json,
            verbose,
        } => {
            let config = load(&store)?;
            init_logging(&config);
            let mut opts = GcOptions::from_config(&config.gc);
            opts.dry_run = dry_run;
            if let Some(s) = untagged_retention_secs {
                opts.untagged_retention_secs = s;
            }
            if let Some(s) = blob_grace_secs {
                opts.blob_grace_secs = s;
            }
            let meta = image_manager::server::open_metadata(&config).await?;
            let blobs = image_manager::server::open_blobs(&config).await?;
            let report = image_manager::core::gc::collect(&*meta, &*blobs, &opts, None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            if dry_run || verbose {
                let verb = if dry_run { "would delete" } else { "deleted" };
                for e in &report.deleted {
                    let what = match &e.repository {
                        Some(repo) => format!("{repo}@{}", e.digest),
                        None => e.digest.clone(),
                    };
                    match e.size {
                        Some(size) => println!("{verb} {} {what} ({size} bytes)", e.kind),
                        None => println!("{verb} {} {what}", e.kind),
                    }
                }
            }
            println!("{}", report.summary());
            Ok(())
        }
    }
}
