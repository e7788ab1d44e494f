use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use image_manager::config::Config;
use image_manager::core::admin::{namespace_name, Actor};
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
enum SecretsCommand {
    /// Re-seal every VIM's secrets under the current key.
    Rotate {
        #[command(flatten)]
        store: StoreArgs,
    },
}

// Parsed once per process: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
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
        /// PEM certificate chain: serve HTTPS (with --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Serve plain HTTP beyond loopback (only behind a proxy that terminates TLS).
        #[arg(long)]
        allow_plain_http: bool,
        /// Run as a regional relay of the Image Manager at this URL (relay.upstream): serve its
        /// download links and blob pulls from a local cache, fetching each blob once.
        #[arg(long)]
        upstream: Option<String>,
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
    /// Manage namespaces: visibility, members and their roles, quotas.
    Namespace {
        #[command(subcommand)]
        command: NamespaceCommand,
    },
    /// Work with the catalog of a running server: upload VM images and VNF packages.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// VIM secrets at rest: `rotate` re-seals every VIM's credentials under the current key
    /// (`secrets.key`), opening them with the old ones (`secrets.old_keys`).
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
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

/// Where the server is and who we are there.
#[derive(clap::Args)]
struct ClientArgs {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:5000", env = "IMAGE_MANAGER_URL")]
    server: String,
    /// User or robot (robot$NAME) to authenticate as (HTTP Basic).
    #[arg(long, env = "IMAGE_MANAGER_USER")]
    user: Option<String>,
    /// Read the password from standard input (else IMAGE_MANAGER_PASSWORD).
    #[arg(long)]
    password_stdin: bool,
    /// PEM certificate to trust for an HTTPS server (beside the system's roots).
    #[arg(long)]
    ca_cert: Option<PathBuf>,
}

#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum ImageCommand {
    /// Upload a VM disk image (qcow2, raw, vmdk, vhd, vhdx, iso) with a progress bar; prints
    /// the new catalog entry as JSON.
    Upload {
        file: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: String,
        #[arg(long)]
        namespace: Option<String>,
        /// Declared disk format; the server checks it against the bytes.
        #[arg(long)]
        disk_format: Option<String>,
        #[arg(long)]
        container_format: Option<String>,
        /// Minimum disk in bytes.
        #[arg(long)]
        min_disk: Option<u64>,
        /// Minimum RAM in bytes.
        #[arg(long)]
        min_ram: Option<u64>,
        #[arg(long)]
        os_type: Option<String>,
        #[arg(long)]
        os_distro: Option<String>,
        #[arg(long)]
        os_version: Option<String>,
        #[arg(long)]
        architecture: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// key=value (repeat).
        #[arg(long = "label")]
        labels: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Onboard a VNF package (ETSI SOL004 CSAR); prints the package's entry as JSON.
    UploadPackage {
        file: PathBuf,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        version: Option<String>,
        #[arg(long)]
        namespace: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum NamespaceCommand {
    /// List namespaces with their visibility, usage and quota.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Make a namespace public (anonymous pull) or private.
    Visibility {
        namespace: String,
        #[arg(value_parser = ["public", "private"])]
        visibility: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List the members of a namespace and their roles.
    Members {
        namespace: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Give a user a role in a namespace: reader, writer, maintainer or admin.
    MemberSet {
        namespace: String,
        user: String,
        #[arg(value_parser = ["reader", "writer", "maintainer", "admin"])]
        role: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Take a user's role in a namespace away.
    MemberRemove {
        namespace: String,
        user: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Set a namespace's storage quota in bytes, or `none` to remove it.
    Quota {
        namespace: String,
        bytes: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// The admin service on the metadata store, for an account command (logs stay quiet): the
/// same service the admin API uses, acting as the operator (`cli:$USER` in the audit log).
async fn admin(store: &StoreArgs) -> anyhow::Result<image_manager::core::admin::Admin> {
    let config = load(store)?;
    let meta = image_manager::server::open_metadata(&config).await?;
    Ok(image_manager::core::admin::Admin::new(
        meta.clone(),
        meta,
        std::sync::Arc::new(image_manager::auth::Auth::none()),
        config.registry.default_quota_bytes,
    ))
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
    let who = Actor::operator();
    match command {
        UserCommand::Add {
            name,
            admin: is_admin,
            store,
            ..
        } => {
            let admin = admin(&store).await?;
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\n', '\r']);
            let user = admin.system(&who).await?.add_user(&name, password, is_admin).await?;
            println!("created user {}{}", user.name, if user.admin { " (admin)" } else { "" });
        }
        UserCommand::List { store } => {
            let admin = admin(&store).await?;
            for u in admin.system(&who).await?.users().await? {
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
            let admin = admin(&store).await?;
            if !admin.system(&who).await?.disable_user(&name).await? {
                anyhow::bail!("no user {name:?}");
            }
            println!("disabled user {name}");
        }
        UserCommand::Delete { name, store } => {
            let admin = admin(&store).await?;
            if !admin.system(&who).await?.delete_user(&name).await? {
                anyhow::bail!("no user {name:?}");
            }
            println!("deleted user {name}");
        }
    }
    Ok(())
}

async fn run_robot(command: RobotCommand) -> anyhow::Result<()> {
    let who = Actor::operator();
    match command {
        RobotCommand::Add {
            name,
            namespaces,
            actions,
            expires_days,
            store,
        } => {
            let admin = admin(&store).await?;
            let (robot, secret) = admin
                .system(&who)
                .await?
                .add_robot(&name, &namespaces, &actions, expires_days)
                .await?;
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
            let admin = admin(&store).await?;
            for r in admin.system(&who).await?.robots().await? {
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
            let admin = admin(&store).await?;
            if !admin.system(&who).await?.disable_robot(&name).await? {
                anyhow::bail!("no robot {name:?}");
            }
            println!("disabled robot {name}");
        }
        RobotCommand::Delete { name, store } => {
            let admin = admin(&store).await?;
            if !admin.system(&who).await?.delete_robot(&name).await? {
                anyhow::bail!("no robot {name:?}");
            }
            println!("deleted robot {name}");
        }
    }
    Ok(())
}

async fn run_namespace(command: NamespaceCommand) -> anyhow::Result<()> {
    let who = Actor::operator();
    match command {
        NamespaceCommand::List { store } => {
            let admin = admin(&store).await?;
            for ns in admin.namespaces(&who).await? {
                let quota = match ns.own_quota_bytes {
                    Some(q) => q.to_string(),
                    None => "-".into(),
                };
                let visibility = if ns.public { "public" } else { "private" };
                println!("{}\t{visibility}\tused {}\tquota {quota}", ns.name, ns.usage_bytes);
            }
        }
        NamespaceCommand::Visibility {
            namespace,
            visibility,
            store,
        } => {
            namespace_name(&namespace)?;
            let admin = admin(&store).await?;
            let scope = admin.namespace(&who, &namespace).await?;
            scope.set_public(visibility == "public").await?;
            println!("namespace {} is {visibility}", scope.name());
        }
        NamespaceCommand::Members { namespace, store } => {
            namespace_name(&namespace)?;
            let admin = admin(&store).await?;
            for (principal, role) in admin.namespace(&who, &namespace).await?.members().await? {
                println!("{principal}\t{role}");
            }
        }
        NamespaceCommand::MemberSet {
            namespace,
            user,
            role,
            store,
        } => {
            namespace_name(&namespace)?;
            let admin = admin(&store).await?;
            let scope = admin.namespace(&who, &namespace).await?;
            let role = scope.set_member(&user, &role).await?;
            println!("{user} is {} of {}", role.as_str(), scope.name());
        }
        NamespaceCommand::MemberRemove { namespace, user, store } => {
            namespace_name(&namespace)?;
            let admin = admin(&store).await?;
            let scope = admin.namespace(&who, &namespace).await?;
            if !scope.remove_member(&user).await? {
                anyhow::bail!("{user:?} is not a member of {}", scope.name());
            }
            println!("{user} is no longer a member of {}", scope.name());
        }
        NamespaceCommand::Quota {
            namespace,
            bytes,
            store,
        } => {
            namespace_name(&namespace)?;
            let quota = match bytes.as_str() {
                "none" => None,
                n => Some(
                    n.parse::<u64>()
                        .map_err(|_| anyhow::anyhow!("quota {n:?}: a number of bytes or none"))?,
                ),
            };
            let admin = admin(&store).await?;
            let scope = admin.namespace(&who, &namespace).await?;
            match quota {
                Some(q) => {
                    scope.set_quota(Some(q)).await?;
                }
                None => scope.clear_quota().await?,
            }
            println!(
                "quota of {}: {}",
                scope.name(),
                quota.map_or("none".to_string(), |q| format!("{q} bytes"))
            );
        }
    }
    Ok(())
}

/// Stream `file` to `path` on the server with `query`, showing progress; print the answer.
async fn upload_file(
    client: ClientArgs,
    path: &str,
    query: Vec<(String, String)>,
    file: PathBuf,
    content_type: &str,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let password = match (&client.user, client.password_stdin) {
        (None, _) => None,
        (Some(_), true) => {
            let mut p = String::new();
            std::io::stdin().read_line(&mut p)?;
            Some(p.trim_end_matches(['\n', '\r']).to_string())
        }
        (Some(_), false) => Some(
            std::env::var("IMAGE_MANAGER_PASSWORD")
                .map_err(|_| anyhow::anyhow!("--user needs a password: --password-stdin or IMAGE_MANAGER_PASSWORD"))?,
        ),
    };
    let mut builder = reqwest::Client::builder();
    if let Some(ca) = &client.ca_cert {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
    }
    let http = builder.build()?;
    let handle = tokio::fs::File::open(&file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    let size = handle.metadata().await?.len();
    let bar = indicatif::ProgressBar::new(size);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bytes}/{total_bytes} [{bar:40}] {bytes_per_sec}, {eta} left")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let progress = bar.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(handle, 1 << 20).inspect(move |chunk| {
        if let Ok(c) = chunk {
            progress.inc(c.len() as u64);
        }
    });
    let url = format!("{}{path}", client.server.trim_end_matches('/'));
    let mut req = http
        .post(&url)
        .query(&query)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(reqwest::Body::wrap_stream(stream));
    if let (Some(user), Some(pw)) = (&client.user, &password) {
        req = req.basic_auth(user, Some(pw));
    }
    let resp = req.send().await.with_context(|| format!("POST {url}"))?;
    bar.finish_and_clear();
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        let detail = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_string))
            .unwrap_or(text);
        anyhow::bail!("the server refused the upload ({status}): {detail}");
    }
    println!("{text}");
    Ok(())
}

async fn run_image(command: ImageCommand) -> anyhow::Result<()> {
    match command {
        ImageCommand::Upload {
            file,
            name,
            version,
            namespace,
            disk_format,
            container_format,
            min_disk,
            min_ram,
            os_type,
            os_distro,
            os_version,
            architecture,
            description,
            labels,
            client,
        } => {
            let mut q: Vec<(String, String)> = vec![("name".into(), name), ("version".into(), version)];
            let optional = [
                ("namespace", namespace),
                ("disk_format", disk_format),
                ("container_format", container_format),
                ("min_disk", min_disk.map(|v| v.to_string())),
                ("min_ram", min_ram.map(|v| v.to_string())),
                ("os_type", os_type),
                ("os_distro", os_distro),
                ("os_version", os_version),
                ("architecture", architecture),
                ("description", description),
                ("file_name", file.file_name().map(|f| f.to_string_lossy().into_owned())),
            ];
            for (k, v) in optional {
                if let Some(v) = v {
                    q.push((k.into(), v));
                }
            }
            q.extend(labels.into_iter().map(|l| ("label".to_string(), l)));
            upload_file(client, "/api/v1/images", q, file, "application/octet-stream").await
        }
        ImageCommand::UploadPackage {
            file,
            name,
            version,
            namespace,
            client,
        } => {
            let mut q: Vec<(String, String)> = Vec::new();
            for (k, v) in [("name", name), ("version", version), ("namespace", namespace)] {
                if let Some(v) = v {
                    q.push((k.into(), v));
                }
            }
            upload_file(client, "/api/v1/packages", q, file, "application/zip").await
        }
    }
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
            tls_cert,
            tls_key,
            allow_plain_http,
            upstream,
        } => {
            let mut config = load(&store)?;
            if upstream.is_some() {
                config.relay.upstream = upstream;
            }
            if tls_cert.is_some() {
                config.server.tls_cert = tls_cert;
                config.server.tls_key = tls_key;
            }
            if allow_plain_http {
                config.server.allow_plain_http = true;
            }
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
        Command::Namespace { command } => run_namespace(command).await,
        Command::Image { command } => run_image(command).await,
        Command::Secrets {
            command: SecretsCommand::Rotate { store },
        } => {
            let config = load(&store)?;
            let meta = image_manager::server::open_metadata(&config).await?;
            let sealer = image_manager::core::secrets::Sealer::from_config(&config.secrets, &config.server.data_dir)?;
            let vims = image_manager::core::vims::Vims::new(
                meta.clone(),
                meta,
                std::sync::Arc::new(image_manager::auth::Auth::none()),
                std::sync::Arc::new(sealer),
                config.distribution.clone(),
            );
            let n = vims.rotate(&Actor::operator()).await?;
            println!("re-sealed the secrets of {n} VIM(s) under key {}", vims.key_id());
            Ok(())
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
