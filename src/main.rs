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
        /// Authentication: none (loopback only) or token (default: server.auth, none).
        #[arg(long, value_parser = ["none", "token"])]
        auth: Option<String>,
    },
    /// Manage users: add, list, disable, delete.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage robot accounts (for CI pipelines and ONAP modules).
    Robot {
        #[command(subcommand)]
        command: RobotCommand,
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

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user; the password is read from standard input.
    Add {
        name: String,
        /// A system administrator: may do everything.
        #[arg(long)]
        admin: bool,
        /// Read the password from standard input (the only way to give it).
        #[arg(long, required = true)]
        password_stdin: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List users.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Disable a user: their logins fail from now on.
    Disable {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete a user and their namespace roles.
    Delete {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum RobotCommand {
    /// Create a robot account and print its secret (shown only once). It logs in as robot$NAME.
    Add {
        name: String,
        /// Namespace it may act on (repeat, or separate with commas).
        #[arg(long = "namespace", required = true, value_delimiter = ',')]
        namespaces: Vec<String>,
        /// Actions it may do: pull, push, delete (comma-separated).
        #[arg(long, required = true, value_delimiter = ',')]
        actions: Vec<String>,
        /// Days until it expires (default: never).
        #[arg(long)]
        expires_days: Option<u64>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List robot accounts.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Disable a robot account.
    Disable {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete a robot account.
    Delete {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Open the metadata store for an account command (logs stay quiet).
async fn accounts(store: &StoreArgs) -> anyhow::Result<std::sync::Arc<image_manager::storage::sql::SqlStore>> {
    let config = load(store)?;
    image_manager::server::open_metadata(&config).await
}

fn ms_to_days(ms: Option<i64>) -> String {
    match ms {
        None => "never".into(),
        Some(at) => {
            let left = at - image_manager::storage::now_ms();
            if left <= 0 {
                "expired".into()
            } else {
                format!("in {:.1} days", left as f64 / 86_400_000.0)
            }
        }
    }
}

async fn run_user(command: UserCommand) -> anyhow::Result<()> {
    use image_manager::storage::MetadataStore;
    match command {
        UserCommand::Add { name, admin, store, .. } => {
            let meta = accounts(&store).await?;
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\n', '\r']);
            let user = image_manager::auth::create_user(&*meta, &name, password, admin).await?;
            println!("created user {}{}", user.name, if user.admin { " (admin)" } else { "" });
        }
        UserCommand::List { store } => {
            let meta = accounts(&store).await?;
            for u in meta.users().await? {
                let mut flags = Vec::new();
                if u.admin {
                    flags.push("admin");
                }
                if u.disabled {
                    flags.push("disabled");
                }
                println!("{}\t{}", u.name, flags.join(","));
            }
        }
        UserCommand::Disable { name, store } => {
            let meta = accounts(&store).await?;
            if !meta.user_set_disabled(&name, true).await? {
                anyhow::bail!("no user {name:?}");
            }
            println!("disabled user {name}");
        }
        UserCommand::Delete { name, store } => {
            let meta = accounts(&store).await?;
            if !meta.user_delete(&name).await? {
                anyhow::bail!("no user {name:?}");
            }
            println!("deleted user {name}");
        }
    }
    Ok(())
}

async fn run_robot(command: RobotCommand) -> anyhow::Result<()> {
    use image_manager::storage::MetadataStore;
    match command {
        RobotCommand::Add {
            name,
            namespaces,
            actions,
            expires_days,
            store,
        } => {
            let meta = accounts(&store).await?;
            let (robot, secret) =
                image_manager::auth::create_robot(&*meta, &name, &namespaces, &actions, expires_days).await?;
            eprintln!(
                "created robot {}{} for {} ({}), expires {}; its secret (shown only this once):",
                image_manager::auth::ROBOT_PREFIX,
                robot.name,
                robot.namespaces.join(","),
                robot.actions.join(","),
                ms_to_days(robot.expires_at)
            );
            println!("{secret}");
        }
        RobotCommand::List { store } => {
            let meta = accounts(&store).await?;
            for r in meta.robots().await? {
                println!(
                    "{}{}\t{}\t{}\texpires {}{}",
                    image_manager::auth::ROBOT_PREFIX,
                    r.name,
                    r.namespaces.join(","),
                    r.actions.join(","),
                    ms_to_days(r.expires_at),
                    if r.disabled { "\tdisabled" } else { "" }
                );
            }
        }
        RobotCommand::Disable { name, store } => {
            let meta = accounts(&store).await?;
            if !meta.robot_set_disabled(&name, true).await? {
                anyhow::bail!("no robot {name:?}");
            }
            println!("disabled robot {name}");
        }
        RobotCommand::Delete { name, store } => {
            let meta = accounts(&store).await?;
            if !meta.robot_delete(&name).await? {
                anyhow::bail!("no robot {name:?}");
            }
            println!("deleted robot {name}");
        }
    }
    Ok(())
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
            auth,
        } => {
            let mut config = load(&store)?;
            if let Some(l) = listen {
                config.server.listen = l;
            }
            if let Some(a) = auth {
                config.server.auth = a;
            }
            if log_json {
                config.log.format = "json".into();
            }
            init_logging(&config);
            image_manager::server::serve(config).await
        }
        Command::User { command } => run_user(command).await,
        Command::Robot { command } => run_robot(command).await,
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
