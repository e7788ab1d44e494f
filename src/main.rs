use std::path::PathBuf;

use clap::{Parser, Subcommand};
use image_manager::config::Config;

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
    /// Blob store URL (file:///path).
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
    }
}
