//! The `weir` commands that drive a server (docs/cli.md): `trigger`,
//! `executions list|get|logs|watch|cancel` and `connectors
//! list|get|apply`, on the same `--server`/`--key` (`WEIR_SERVER`,
//! `WEIR_KEY`) as `weir package`.
//!
//! Every command prints for a person by default and the API's JSON with
//! `--json`. Exit codes: 0 done (a watched run ended `success` or
//! `partial_success`), 1 a watched run ended `failed`, 130 it ended
//! `canceled` or the watch was interrupted (the run goes on), 2 the server
//! refused or could not be reached.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use weir_engine::connector::Connector;
use weir_engine::execution::{Execution, Status};

use crate::package::{ServerArgs, client, refused};

/// `weir trigger`.
#[derive(Debug, clap::Args)]
pub struct TriggerArgs {
    /// The server.
    #[command(flatten)]
    pub server: ServerArgs,
    /// The connector (id or api_name).
    pub connector: String,
    /// The input file to upload and run on.
    pub file: Option<PathBuf>,
    /// Run on a file the server already has (an execution's
    /// `source_file_id`) instead of uploading one.
    #[arg(long, conflicts_with = "file")]
    pub source_file_id: Option<String>,
    /// Do everything except writing records.
    #[arg(long)]
    pub dry_run: bool,
    /// A run parameter, `name=value` (the value read as JSON when it is
    /// JSON, else as text); repeatable.
    #[arg(long = "parameter", short = 'p', value_name = "NAME=VALUE")]
    pub parameters: Vec<String>,
    /// Names the trigger for retries: the same key and request start one
    /// run.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Follow the run to its end with a progress display, then print its
    /// summary and exit as `weir run` does.
    #[arg(long)]
    pub wait: bool,
    /// Print the API's JSON.
    #[arg(long)]
    pub json: bool,
}

/// `weir executions` commands.
#[derive(Debug, clap::Subcommand)]
pub enum ExecutionsCommand {
    /// A connector's executions, newest first.
    List {
        /// The server.
        #[command(flatten)]
        server: ServerArgs,
        /// The connector (id or api_name).
        connector: String,
        /// Only this status.
        #[arg(long)]
        status: Option<String>,
        /// At most this many (1 to 500).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// An execution: status, stages and counts.
    Get {
        /// The server.
        #[command(flatten)]
        server: ServerArgs,
        /// The execution id.
        id: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// An execution's log lines.
    Logs {
        /// The server.
        #[command(flatten)]
        server: ServerArgs,
        /// The execution id.
        id: String,
        /// Print the API's JSON, a line per log line.
        #[arg(long)]
        json: bool,
    },
    /// Follows an execution to its end, then prints its summary and exits
    /// as `weir run` does.
    Watch {
        /// The server.
        #[command(flatten)]
        server: ServerArgs,
        /// The execution id.
        id: String,
        /// Print the API's JSON of the end.
        #[arg(long)]
        json: bool,
    },
    /// Cancels an execution.
    Cancel {
        /// The server.
        #[command(flatten)]
        server: ServerArgs,
        /// The execution id.
        id: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `weir connectors` commands.
#[derive(Debug, clap::Subcommand)]
pub enum ConnectorsCommand {
    /// The connectors of the key's workspace.
    List {
        /// The server.
        #[command(flatten)]
        server: ServerArgs,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// A connector's definition.
    Get {
        /// The server.
        #[command(flatten)]
        server: ServerArgs,
        /// The connector (id or api_name).
        connector: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Creates or updates a connector from its directory (or its
    /// `connector.toml`): its definition, objects, plugins and script, the
    /// script as the draft. Nothing is sent when the server already has
    /// the same definition and draft.
    Apply {
        /// The server.
        #[command(flatten)]
        server: ServerArgs,
        /// The connector directory, or its `connector.toml`.
        path: PathBuf,
        /// Print what was done as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A server, its key and a client.
struct Remote {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Remote {
    fn new(server: &ServerArgs) -> anyhow::Result<Self> {
        Ok(Self {
            base: server.server.trim_end_matches('/').to_string(),
            key: server.key.clone(),
            http: client()?,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key)
    }

    /// Sends `request`; its JSON, or the server's refusal as an error.
    async fn json(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request
            .send()
            .await
            .with_context(|| format!("reaching {}", self.base))?;
        if !response.status().is_success() {
            return Err(refused(response).await);
        }
        let text = response.text().await.context("reading the answer")?;
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).context("the answer is not JSON")
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.json(self.request(reqwest::Method::GET, path)).await
    }
}

/// Runs `weir trigger`.
pub fn trigger(args: TriggerArgs) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let remote = Remote::new(&args.server)?;
        let parameters = parameters(&args.parameters)?;
        let path = format!("/connectors/{}/runs", args.connector);
        let mut request = remote.request(reqwest::Method::POST, &path);
        if let Some(key) = &args.idempotency_key {
            request = request.header("idempotency-key", key);
        }
        let mut query: Vec<(&str, String)> = Vec::new();
        if args.dry_run {
            query.push(("dry_run", "true".into()));
        }
        request = match (&args.file, &args.source_file_id) {
            (Some(file), _) => {
                let name = file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "upload".into());
                let bytes = tokio::fs::File::open(file)
                    .await
                    .with_context(|| format!("opening {}", file.display()))?;
                query.push(("filename", name));
                if !parameters.is_empty() {
                    query.push(("parameters", serde_json::to_string(&parameters)?));
                }
                request
                    .query(&query)
                    .header("content-type", "application/octet-stream")
                    .body(reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(bytes)))
            }
            (None, Some(id)) => request
                .query(&query)
                .json(&json!({"source_file_id": id, "parameters": parameters})),
            (None, None) => bail!("give the FILE to run on, or --source-file-id of one the server has"),
        };
        let doc = remote.json(request).await?;
        let id = doc["id"].as_str().unwrap_or_default().to_string();
        if !args.wait {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                println!("{id}  {}", doc["status"].as_str().unwrap_or_default());
            }
            return Ok(ExitCode::SUCCESS);
        }
        if !args.json {
            eprintln!("execution {id}");
        }
        watch(&remote, &id, args.json).await
    })
}

/// `name=value` pairs as the run's parameters.
fn parameters(given: &[String]) -> anyhow::Result<BTreeMap<String, Value>> {
    given
        .iter()
        .map(|p| {
            let (name, value) = p
                .split_once('=')
                .with_context(|| format!("--parameter `{p}` is not name=value"))?;
            let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
            Ok((name.to_string(), value))
        })
        .collect()
}

/// Runs `work` on a current-thread runtime: a command's one task.
pub(crate) fn block_on<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(work)
}

/// Follows execution `id` over its event stream until it ends (resuming
/// when the stream drops), showing its progress on a terminal; then its
/// summary and exit code. Ctrl-C stops following and leaves the run alone.
async fn watch(remote: &Remote, id: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let bar = (!as_json && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let followed = tokio::select! {
        followed = follow(remote, id, bar.as_ref()) => followed,
        _ = tokio::signal::ctrl_c() => {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            eprintln!("stopped watching; execution {id} goes on (weir executions watch {id})");
            return Ok(ExitCode::from(130));
        }
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    followed?;
    let doc = remote.get(&format!("/executions/{id}")).await?;
    let execution: Execution = serde_json::from_value(doc.clone()).context("reading the execution")?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        crate::local::print_summary(&execution, started.elapsed());
        if let Some(e) = &execution.error {
            println!("error in {}: {}", e.stage.as_str(), e.message);
        }
    }
    Ok(exit_code(execution.status))
}

/// The exit code of a run that ended `status`, as `weir run`'s.
pub fn exit_code(status: Status) -> ExitCode {
    match status {
        Status::Success | Status::PartialSuccess => ExitCode::SUCCESS,
        Status::Canceled => ExitCode::from(130),
        _ => ExitCode::from(1),
    }
}

/// Reads the execution's event stream until its `end` event; reconnects
/// with `Last-Event-ID` when the stream drops before it.
async fn follow(remote: &Remote, id: &str, bar: Option<&ProgressBar>) -> anyhow::Result<()> {
    let mut last = String::new();
    let mut drops = 0;
    loop {
        let mut request = remote
            .request(reqwest::Method::GET, &format!("/executions/{id}/events"))
            .header("accept", "text/event-stream");
        if !last.is_empty() {
            request = request.header("last-event-id", &last);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("reaching {}", remote.base))?;
        if !response.status().is_success() {
            return Err(refused(response).await);
        }
        let mut stream = response.bytes_stream();
        let mut buffer = String::new();
        let (mut event, mut data) = (String::new(), String::new());
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { break };
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find('\n') {
                let line = buffer[..end].trim_end_matches('\r').to_string();
                buffer.drain(..=end);
                if line.is_empty() {
                    match event.as_str() {
                        "end" => return Ok(()),
                        "execution" => {
                            if let (Some(bar), Ok(doc)) = (bar, serde_json::from_str::<Execution>(&data)) {
                                bar.set_message(crate::local::progress_line(&doc));
                            }
                        }
                        _ => {}
                    }
                    event.clear();
                    data.clear();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                } else if let Some(v) = line.strip_prefix("id:") {
                    last = v.trim().to_string();
                }
            }
        }
        drops += 1;
        if drops > 20 {
            bail!("the event stream of {id} kept dropping");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs a `weir executions` command.
pub fn executions(command: ExecutionsCommand) -> anyhow::Result<ExitCode> {
    block_on(async move {
        match command {
            ExecutionsCommand::List {
                server,
                connector,
                status,
                limit,
                json,
            } => {
                let remote = Remote::new(&server)?;
                let mut query = vec![("limit", limit.to_string())];
                if let Some(s) = status {
                    query.push(("status", s));
                }
                let page = remote
                    .json(
                        remote
                            .request(reqwest::Method::GET, &format!("/connectors/{connector}/executions"))
                            .query(&query),
                    )
                    .await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&page["data"])?);
                } else {
                    for e in page["data"].as_array().into_iter().flatten() {
                        println!(
                            "{}  {:<16} {:<12} {}{}",
                            e["id"].as_str().unwrap_or_default(),
                            e["status"].as_str().unwrap_or_default(),
                            e["trigger_type"].as_str().unwrap_or_default(),
                            e["created_at"].as_str().unwrap_or_default(),
                            if e["is_dry_run"] == true { "  (dry run)" } else { "" }
                        );
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            ExecutionsCommand::Get { server, id, json } => {
                let remote = Remote::new(&server)?;
                let doc = remote.get(&format!("/executions/{id}")).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&doc)?);
                } else {
                    let execution: Execution = serde_json::from_value(doc).context("reading the execution")?;
                    let took = match (execution.started_at, execution.ended_at) {
                        (Some(s), Some(e)) => (e - s).to_std().unwrap_or_default(),
                        (Some(s), None) => (chrono::Utc::now() - s).to_std().unwrap_or_default(),
                        _ => Duration::ZERO,
                    };
                    println!("{id}");
                    crate::local::print_summary(&execution, took);
                    if let Some(e) = &execution.error {
                        println!("error in {}: {}", e.stage.as_str(), e.message);
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            ExecutionsCommand::Logs { server, id, json } => {
                let remote = Remote::new(&server)?;
                let mut cursor: Option<String> = None;
                loop {
                    let mut query = vec![("limit", "500".to_string())];
                    if let Some(c) = &cursor {
                        query.push(("cursor", c.clone()));
                    }
                    let page = remote
                        .json(
                            remote
                                .request(reqwest::Method::GET, &format!("/executions/{id}/logs"))
                                .query(&query),
                        )
                        .await?;
                    for line in page["data"].as_array().into_iter().flatten() {
                        if json {
                            println!("{line}");
                        } else {
                            println!(
                                "{} {:<5} {}",
                                line["at"].as_str().unwrap_or_default(),
                                line["level"].as_str().unwrap_or_default(),
                                line["message"].as_str().unwrap_or_default()
                            );
                        }
                    }
                    match page["next_cursor"].as_str() {
                        Some(next) => cursor = Some(next.to_string()),
                        None => break,
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            ExecutionsCommand::Watch { server, id, json } => watch(&Remote::new(&server)?, &id, json).await,
            ExecutionsCommand::Cancel { server, id, json } => {
                let remote = Remote::new(&server)?;
                let doc = remote
                    .json(remote.request(reqwest::Method::POST, &format!("/executions/{id}/cancel")))
                    .await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&doc)?);
                } else {
                    println!("{id}  {}", doc["status"].as_str().unwrap_or_default());
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// Runs a `weir connectors` command.
pub fn connectors(command: ConnectorsCommand) -> anyhow::Result<ExitCode> {
    block_on(async move {
        match command {
            ConnectorsCommand::List { server, json } => {
                let remote = Remote::new(&server)?;
                let page = remote.get("/connectors?limit=500").await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&page["data"])?);
                } else {
                    for c in page["data"].as_array().into_iter().flatten() {
                        println!(
                            "{:<32} {:<12} {:<12} live {}  draft {}",
                            c["api_name"].as_str().unwrap_or_default(),
                            c["type"].as_str().unwrap_or_default(),
                            c["status"].as_str().unwrap_or_default(),
                            c["live_version"].as_u64().map_or("-".to_string(), |v| format!("v{v}")),
                            c["draft_version"].as_u64().map_or("-".to_string(), |v| format!("v{v}")),
                        );
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            ConnectorsCommand::Get {
                server,
                connector,
                json,
            } => {
                let remote = Remote::new(&server)?;
                let doc = remote.get(&format!("/connectors/{connector}")).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&doc)?);
                } else {
                    let definition: Connector =
                        serde_json::from_value(strip_view(doc.clone())).context("reading the connector")?;
                    println!(
                        "# {} (id {}, live {}, draft v{})",
                        definition.api_name,
                        doc["id"].as_str().unwrap_or_default(),
                        doc["live_version"]
                            .as_u64()
                            .map_or("none".to_string(), |v| format!("v{v}")),
                        doc["draft_version"].as_u64().unwrap_or_default()
                    );
                    print!("{}", definition.to_toml()?);
                }
                Ok(ExitCode::SUCCESS)
            }
            ConnectorsCommand::Apply { server, path, json } => apply(&Remote::new(&server)?, &path, json).await,
        }
    })
}

/// The connector definition in a connector's API view (without the
/// server's fields).
fn strip_view(mut doc: Value) -> Value {
    if let Some(map) = doc.as_object_mut() {
        for key in [
            "id",
            "sample_file_id",
            "live_version",
            "draft_version",
            "created_at",
            "updated_at",
        ] {
            map.remove(key);
        }
    }
    doc
}

/// Creates or updates the connector at `path`, unless the server already
/// has its definition and draft.
async fn apply(remote: &Remote, path: &Path, as_json: bool) -> anyhow::Result<ExitCode> {
    let dir = if path.is_file() {
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    } else {
        path.to_path_buf()
    };
    let package = weir_engine::package::Package::load(&dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let local = &package.connector;
    let response = remote
        .request(reqwest::Method::GET, &format!("/connectors/{}", local.api_name))
        .send()
        .await
        .with_context(|| format!("reaching {}", remote.base))?;
    let existing = match response.status().as_u16() {
        404 => None,
        s if (200..300).contains(&s) => Some(response.json::<Value>().await.context("reading the connector")?),
        _ => return Err(refused(response).await),
    };
    let outcome = match &existing {
        Some(doc) if same(remote, local, &package.script, doc).await? => "unchanged",
        Some(_) => {
            crate::package::push_dir(remote_server(remote), &dir).await?;
            "updated"
        }
        None => {
            crate::package::push_dir(remote_server(remote), &dir).await?;
            "created"
        }
    };
    if as_json {
        println!("{}", json!({"api_name": local.api_name, "outcome": outcome}));
    } else {
        println!("{}  {outcome}", local.api_name);
    }
    Ok(ExitCode::SUCCESS)
}

fn remote_server(remote: &Remote) -> ServerArgs {
    ServerArgs {
        server: remote.base.clone(),
        key: remote.key.clone(),
    }
}

/// Whether the server's connector `doc` has `local`'s definition and
/// `script` as its draft.
async fn same(remote: &Remote, local: &Connector, script: &str, doc: &Value) -> anyhow::Result<bool> {
    let mut theirs: Connector = serde_json::from_value(strip_view(doc.clone())).context("reading the connector")?;
    let mut ours = local.clone();
    // The script is compared as the draft; where it was read from is not
    // part of the definition the server keeps.
    ours.sql = Default::default();
    theirs.sql = Default::default();
    // The status is the server's to switch (publish, then operational).
    ours.status = theirs.status;
    if ours != theirs {
        return Ok(false);
    }
    let sql = remote.get(&format!("/connectors/{}/sql", local.api_name)).await?;
    Ok(sql["draft"]["text"].as_str() == Some(script))
}
