//! `weir package`: moves dev packages between a server and this machine.
//!
//! - `pull` downloads a connector's package (`GET …/dev-package`);
//! - `pack` zips a directory (`connector.toml`, `script.sql`, `objects.toml`,
//!   `plugins/`, `data/`) with a manifest of hashes, after loading it the way
//!   `weir run` does, so a package that does not load is never made;
//! - `push` sends a package (or a directory, packed first) to a server,
//!   which creates or updates the connector (`PUT …/package`).
//!
//! The server and key come from `--server` / `--key` or `WEIR_SERVER` /
//! `WEIR_KEY`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use weir_engine::package::Package;

/// Where the server is and how to sign in.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// The server's API base, e.g. http://127.0.0.1:8080/api/v1.
    #[arg(long, env = "WEIR_SERVER", default_value = "http://127.0.0.1:8080/api/v1")]
    pub server: String,
    /// An API key (operator for pull, admin for push).
    #[arg(long, env = "WEIR_KEY", hide_env_values = true)]
    pub key: String,
}

/// `weir package` commands.
#[derive(Debug, clap::Subcommand)]
pub enum PackageCommand {
    /// Download a connector's dev package from a server.
    Pull {
        /// The server.
        #[command(flatten)]
        server: ServerArgs,
        /// The connector (id or api_name).
        connector: String,
        /// Include this file as data/ (an execution's source_file_id).
        #[arg(long)]
        source_file_id: Option<String>,
        /// Package the draft script instead of the live one.
        #[arg(long)]
        draft: bool,
        /// Where to write it (default: `<connector>.zip`).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Zip a connector directory into a package.
    Pack {
        /// The directory.
        dir: PathBuf,
        /// Where to write it (default: <api_name>.zip).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Send a package or directory to a server: creates or updates the
    /// connector, whose script becomes the draft.
    Push {
        /// The server.
        #[command(flatten)]
        server: ServerArgs,
        /// A package zip or a connector directory.
        package: PathBuf,
    },
}

/// Runs a `weir package` command.
pub fn run(command: PackageCommand) -> anyhow::Result<ExitCode> {
    crate::remote::block_on(async {
        match command {
            PackageCommand::Pull {
                server,
                connector,
                source_file_id,
                draft,
                output,
            } => pull(&server, &connector, source_file_id.as_deref(), draft, output).await,
            PackageCommand::Pack { dir, output } => {
                let (bytes, api_name) = pack(&dir)?;
                let output = output.unwrap_or_else(|| PathBuf::from(format!("{api_name}.zip")));
                std::fs::write(&output, bytes).with_context(|| format!("writing {}", output.display()))?;
                println!("{}", output.display());
                Ok(ExitCode::SUCCESS)
            }
            PackageCommand::Push { server, package } => push(&server, &package).await,
        }
    })
}

/// The HTTP client of the commands that call a server.
pub(crate) fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("weir/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("starting the HTTP client")
}

/// A failed answer as one line: the problem's detail when there is one.
pub(crate) async fn refused(response: reqwest::Response) -> anyhow::Error {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let problem: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let detail = problem["detail"].as_str().unwrap_or(text.as_str());
    let errors = problem["errors"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|p| {
                    format!(
                        "\n  {}: {}",
                        p["path"].as_str().unwrap_or(""),
                        p["message"].as_str().unwrap_or("")
                    )
                })
                .collect::<String>()
        })
        .unwrap_or_default();
    anyhow::anyhow!("the server answered {status}: {detail}{errors}")
}

async fn pull(
    server: &ServerArgs,
    connector: &str,
    source_file_id: Option<&str>,
    draft: bool,
    output: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let mut query: Vec<(&str, &str)> = Vec::new();
    if let Some(id) = source_file_id {
        query.push(("source_file_id", id));
    }
    if draft {
        query.push(("version", "draft"));
    }
    let url = format!(
        "{}/connectors/{connector}/dev-package",
        server.server.trim_end_matches('/')
    );
    let response = client()?
        .get(&url)
        .bearer_auth(&server.key)
        .query(&query)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !response.status().is_success() {
        return Err(refused(response).await);
    }
    let bytes = response.bytes().await.context("reading the package")?;
    let output = output.unwrap_or_else(|| PathBuf::from(format!("{connector}.zip")));
    std::fs::write(&output, &bytes).with_context(|| format!("writing {}", output.display()))?;
    println!("{}", output.display());
    Ok(ExitCode::SUCCESS)
}

async fn push(server: &ServerArgs, package: &Path) -> anyhow::Result<ExitCode> {
    let (created, api_name, view) = send(server, package).await?;
    println!(
        "{} {api_name}: draft version {}",
        if created { "created" } else { "updated" },
        view["draft_version"]
    );
    Ok(ExitCode::SUCCESS)
}

/// Sends the connector directory `dir` to `server` as `weir package push`
/// does.
pub(crate) async fn push_dir(server: ServerArgs, dir: &Path) -> anyhow::Result<()> {
    send(&server, dir).await.map(|_| ())
}

/// Sends a package (or a directory, packed first): whether it created the
/// connector, its api_name, and the connector as the server answered.
async fn send(server: &ServerArgs, package: &Path) -> anyhow::Result<(bool, String, serde_json::Value)> {
    let (bytes, api_name) = if package.is_dir() {
        pack(package)?
    } else {
        let loaded = Package::load(package).map_err(|e| anyhow::anyhow!("{e}"))?;
        let bytes = std::fs::read(package).with_context(|| format!("reading {}", package.display()))?;
        (bytes, loaded.connector.api_name)
    };
    let url = format!("{}/connectors/{api_name}/package", server.server.trim_end_matches('/'));
    let response = client()?
        .put(&url)
        .bearer_auth(&server.key)
        .header("content-type", "application/zip")
        .body(bytes)
        .send()
        .await
        .with_context(|| format!("PUT {url}"))?;
    if !response.status().is_success() {
        return Err(refused(response).await);
    }
    let created = response.status() == reqwest::StatusCode::CREATED;
    let view: serde_json::Value = response.json().await.context("reading the answer")?;
    Ok((created, api_name, view))
}

/// Zips a connector directory with a manifest; returns the bytes and the
/// connector's api_name. The directory must load as `weir run` loads it.
pub fn pack(dir: &Path) -> anyhow::Result<(Vec<u8>, String)> {
    let loaded = Package::load(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    collect(dir, dir, &mut files)?;
    files.remove("manifest.json");
    let hashes: BTreeMap<&str, String> = files
        .iter()
        .map(|(name, bytes)| (name.as_str(), hex::encode(Sha256::digest(bytes))))
        .collect();
    let manifest = serde_json::json!({
        "format": 1,
        "engine_version": env!("CARGO_PKG_VERSION"),
        "connector": {"api_name": loaded.connector.api_name},
        "files": hashes,
        "created_at": chrono::Utc::now().to_rfc3339(),
    });
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("manifest.json", options)?;
    zip.write_all(&serde_json::to_vec_pretty(&manifest)?)?;
    for (name, bytes) in &files {
        zip.start_file(name.as_str(), options)?;
        zip.write_all(bytes)?;
    }
    Ok((zip.finish()?.into_inner(), loaded.connector.api_name))
}

/// Every regular file under `dir`, by its path relative to `root` with `/`
/// separators. Links are refused: a package holds files only.
fn collect(root: &Path, dir: &Path, files: &mut BTreeMap<String, Vec<u8>>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            bail!("{} is a link; a package holds regular files only", path.display());
        }
        if kind.is_dir() {
            collect(root, &path, files)?;
        } else {
            let relative = path.strip_prefix(root)?;
            let name = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            files.insert(
                name,
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
            );
        }
    }
    Ok(())
}
