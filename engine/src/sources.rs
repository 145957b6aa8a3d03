//! External sources (docs/sources.md): a connector's `[[sources]]`, each a
//! schema of the script (`crm.customers`), read through providers that push
//! projections and filters down to the database or into the file reader.
//!
//! A source is reachable only because the connector declares it: the SQL
//! policy still refuses any file, URL or table function a script names.
//! Credentials come from workspace secrets ([`SecretValues`]), which never
//! appear in an error: every message from a driver is scrubbed of them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::common::TableReference;
use datafusion::datasource::TableProvider;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::prelude::SessionContext;
use datafusion_table_providers::postgres::PostgresTableFactory;
use datafusion_table_providers::sql::db_connection_pool::postgrespool::PostgresConnectionPool;
use datafusion_table_providers::util::secrets::to_secret_map;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::http::HttpBuilder;
use object_store::{ClientOptions, RetryConfig};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::connector::is_identifier;
use crate::error::{Error, Problem, Result};

mod mysql;
mod query;

/// How long reaching a source may take before the run fails with
/// `source_unavailable`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// One `[[sources]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SourceDef {
    /// The schema the script reads it as (`crm` → `crm.customers`).
    pub name: String,
    /// What it is.
    pub kind: SourceKind,
    /// The workspace secret with its credentials: a `postgres://` or
    /// `mysql://` URL; for `s3`, `ACCESS_KEY_ID:SECRET_ACCESS_KEY`; for
    /// `http`, the `Authorization` header value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Database tables (`customers`, `sales.orders`), each readable under
    /// its last name part.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    /// `postgres`: table name → a query the database runs, read as a table.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub queries: BTreeMap<String, String>,
    /// Files: table name → path under `url` or in `bucket`. A path ending
    /// in `/` is every file under it with the same extension.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
    /// `http`: the base URL the file paths are under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `s3`: the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// `s3`: the region (default `us-east-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// `s3`: an S3-compatible endpoint instead of AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// The kinds of source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A PostgreSQL database.
    Postgres,
    /// A MySQL or MariaDB database.
    Mysql,
    /// CSV, JSON Lines or Parquet files on a web server.
    Http,
    /// CSV, JSON Lines or Parquet files in an S3 bucket.
    S3,
}

impl SourceKind {
    fn as_str(self) -> &'static str {
        match self {
            SourceKind::Postgres => "postgres",
            SourceKind::Mysql => "mysql",
            SourceKind::Http => "http",
            SourceKind::S3 => "s3",
        }
    }

    fn is_database(self) -> bool {
        matches!(self, SourceKind::Postgres | SourceKind::Mysql)
    }
}

impl SourceDef {
    /// The table names the script sees under this source, with what each reads.
    pub fn table_names(&self) -> Vec<(String, String)> {
        if self.kind.is_database() {
            self.tables
                .iter()
                .map(|t| (t.rsplit('.').next().unwrap_or(t).to_string(), t.clone()))
                .chain(self.queries.iter().map(|(k, q)| (k.clone(), q.clone())))
                .collect()
        } else {
            self.files.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        }
    }

    /// The problems of this entry, `sources[i]` being its path.
    fn problems(&self, i: usize) -> Vec<Problem> {
        let at = |key: &str| format!("sources[{i}].{key}");
        let mut problems = Vec::new();
        if !is_identifier(&self.name) {
            problems.push(Problem::new(at("name"), format!("`{}` is not a valid name", self.name)));
        } else if crate::sql::is_reserved_schema(&self.name) {
            problems.push(Problem::new(
                at("name"),
                format!(
                    "`{}` is one of the script's own schemas; choose another name",
                    self.name
                ),
            ));
        }
        if let Some(secret) = &self.secret
            && !is_identifier(secret)
        {
            // Not repeated: a value pasted here by mistake is not shown back.
            problems.push(Problem::new(
                at("secret"),
                "not a secret's name: name a workspace secret ([a-z][a-z0-9_]*), never give its value here",
            ));
        }
        let only = |key: &str, given: bool, problems: &mut Vec<Problem>| {
            if given {
                problems.push(Problem::new(
                    at(key),
                    format!("not for a `{}` source", self.kind.as_str()),
                ));
            }
        };
        if self.kind.is_database() {
            if self.secret.is_none() {
                problems.push(Problem::new(
                    at("secret"),
                    "required: the workspace secret holding the connection URL",
                ));
            }
            if self.tables.is_empty() && self.queries.is_empty() {
                problems.push(Problem::new(at("tables"), "list at least one table (or give a query)"));
            }
            if self.kind == SourceKind::Mysql && !self.queries.is_empty() {
                problems.push(Problem::new(
                    at("queries"),
                    "a `mysql` source reads tables and views: make the query a view in the database",
                ));
            }
            for (name, q) in &self.queries {
                if q.trim().trim_end_matches(';').trim().is_empty() {
                    problems.push(Problem::new(
                        format!("sources[{i}].queries.{name}"),
                        "the query is empty",
                    ));
                }
            }
            only("files", !self.files.is_empty(), &mut problems);
            only("url", self.url.is_some(), &mut problems);
            only("bucket", self.bucket.is_some(), &mut problems);
            let mut seen = Vec::new();
            for (j, (name, table)) in self.table_names().iter().enumerate() {
                let key = match j.checked_sub(self.tables.len()) {
                    None => format!("sources[{i}].tables[{j}]"),
                    Some(_) => format!("sources[{i}].queries.{name}"),
                };
                if !is_identifier(name) {
                    let what = if j < self.tables.len() {
                        format!("`{table}`: ")
                    } else {
                        String::new()
                    };
                    problems.push(Problem::new(
                        key,
                        format!("{what}`{name}` is not a name a script can use; use lowercase letters, digits and `_`"),
                    ));
                } else if seen.contains(name) {
                    problems.push(Problem::new(
                        key,
                        format!("a second table named `{name}` in this source"),
                    ));
                }
                seen.push(name.clone());
            }
        } else {
            only("tables", !self.tables.is_empty(), &mut problems);
            only("queries", !self.queries.is_empty(), &mut problems);
            if self.files.is_empty() {
                problems.push(Problem::new(at("files"), "give at least one file: name = \"path\""));
            }
            for (name, path) in &self.files {
                let key = format!("sources[{i}].files.{name}");
                if !is_identifier(name) {
                    problems.push(Problem::new(key.clone(), format!("`{name}` is not a valid table name")));
                }
                if let Err(message) = FileKind::of(path).and_then(|_| plain_path(path)) {
                    problems.push(Problem::new(key, message));
                }
            }
            match self.kind {
                SourceKind::Http => {
                    only("bucket", self.bucket.is_some(), &mut problems);
                    only("region", self.region.is_some(), &mut problems);
                    only("endpoint", self.endpoint.is_some(), &mut problems);
                    match self.url.as_deref().map(Url::parse) {
                        None => problems.push(Problem::new(at("url"), "required: the base URL of the files")),
                        Some(Ok(u)) if !u.username().is_empty() || u.password().is_some() => problems.push(
                            Problem::new(at("url"), "credentials do not belong in the URL: put them in a secret"),
                        ),
                        Some(Ok(u)) if u.scheme() == "http" && self.secret.is_some() => problems.push(Problem::new(
                            at("url"),
                            "a secret is sent only over https://, never in clear",
                        )),
                        Some(Ok(u)) if matches!(u.scheme(), "http" | "https") => {}
                        Some(_) => problems.push(Problem::new(at("url"), "must be an http:// or https:// URL")),
                    }
                    if self.files.values().any(|p| p.ends_with('/')) {
                        problems.push(Problem::new(
                            at("files"),
                            "a web server cannot list a folder; name each file",
                        ));
                    }
                }
                _ => {
                    only("url", self.url.is_some(), &mut problems);
                    if self.bucket.is_none() {
                        problems.push(Problem::new(at("bucket"), "required"));
                    }
                    if let Some(endpoint) = &self.endpoint
                        && Url::parse(endpoint).is_err()
                    {
                        problems.push(Problem::new(at("endpoint"), "must be a URL"));
                    }
                }
            }
        }
        problems
    }
}

/// A file path stays under its source's URL or bucket: no URL of its own,
/// no `..`, no query or fragment.
fn plain_path(path: &str) -> std::result::Result<(), String> {
    if path.contains("://") || path.contains(['?', '#', '\\']) || path.split('/').any(|part| part == "..") {
        return Err(format!(
            "`{path}`: a path under the source's URL or bucket, without `://`, `..`, `?` or `#`"
        ));
    }
    Ok(())
}

/// The problems of a connector's sources: each entry's, and names used twice.
pub fn problems(sources: &[SourceDef]) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (i, source) in sources.iter().enumerate() {
        problems.extend(source.problems(i));
        if sources[..i].iter().any(|s| s.name == source.name) {
            problems.push(Problem::new(
                format!("sources[{i}].name"),
                format!("a second source named `{}`", source.name),
            ));
        }
    }
    problems
}

/// The secrets a connector's sources need, each once.
pub fn secrets_needed(sources: &[SourceDef]) -> Vec<String> {
    let mut names: Vec<String> = sources.iter().filter_map(|s| s.secret.clone()).collect();
    names.sort();
    names.dedup();
    names
}

/// The environment variable `weir run` reads secret `name` from.
pub fn secret_variable(name: &str) -> String {
    format!("WEIR_SECRET_{}", name.to_uppercase())
}

/// Secret values handed to a run: name → value. Its `Debug` shows names only.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretValues(BTreeMap<String, String>);

impl SecretValues {
    /// Values by name.
    pub fn new(values: BTreeMap<String, String>) -> Self {
        Self(values)
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// The database sources of a run, so that a run that stops early can end
/// the queries it started: a server goes on with a query whose reader has
/// gone (until it next writes to it). A PostgreSQL query is canceled by the
/// session's `application_name`, which names the run; a MySQL one by the
/// connection ids of the run's sessions. The cancel comes from a session of
/// its own: the run's pooled sessions may be the ones busy.
#[derive(Clone)]
pub struct RemoteQueries {
    tag: String,
    /// The connection parameters of each PostgreSQL source reached.
    servers: Arc<std::sync::Mutex<Vec<HashMap<String, String>>>>,
    /// The sessions of each MySQL source reached.
    mysql: Arc<std::sync::Mutex<Vec<Arc<mysql::Sessions>>>>,
}

impl RemoteQueries {
    /// The queries of execution `execution_id`.
    pub fn new(execution_id: &str) -> Self {
        let tag: String = format!("weir {execution_id}")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .take(63)
            .collect();
        Self {
            tag,
            servers: Arc::default(),
            mysql: Arc::default(),
        }
    }

    fn watch(&self, params: HashMap<String, String>) {
        self.servers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(params);
    }

    fn watch_mysql(&self, params: Params) -> Arc<mysql::Sessions> {
        let sessions = mysql::Sessions::new(params);
        self.mysql
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(sessions.clone());
        sessions
    }

    /// Cancels every query the run's sessions still run, on all servers at
    /// once; gives up after 3 seconds (a worker is stopped 5 seconds after
    /// a cancel).
    pub async fn cancel(&self) {
        futures::future::join(self.cancel_postgres(), self.cancel_mysql()).await;
    }

    async fn cancel_mysql(&self) {
        let servers = std::mem::take(&mut *self.mysql.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let cancels = servers.into_iter().map(|sessions| async move {
            let secret = sessions.params.get("connection_string").cloned();
            log_cancel(
                tokio::time::timeout(Duration::from_secs(3), sessions.kill_queries()).await,
                secret.as_deref(),
            );
        });
        futures::future::join_all(cancels).await;
    }

    async fn cancel_postgres(&self) {
        let servers = std::mem::take(&mut *self.servers.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let sql = format!(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity \
             WHERE application_name = '{}' AND pid <> pg_backend_pid()",
            self.tag
        );
        let cancels = servers.into_iter().map(|mut params| {
            let sql = sql.clone();
            let password = params.get("pass").cloned();
            params.insert("application_name".into(), format!("{} cancel", self.tag));
            params.insert("connection_pool_size".into(), "1".into());
            async move {
                let cancel = async {
                    let pool = PostgresConnectionPool::new(to_secret_map(params))
                        .await
                        .map_err(|e| e.to_string())?;
                    let session = pool.connect_direct().await.map_err(|e| e.to_string())?;
                    session.conn.batch_execute(&sql).await.map_err(|e| e.to_string())
                };
                log_cancel(
                    tokio::time::timeout(Duration::from_secs(3), cancel).await,
                    password.as_deref(),
                );
            }
        });
        futures::future::join_all(cancels).await;
    }
}

/// Logs how a cancel of a source's queries went, if not well.
fn log_cancel(
    outcome: std::result::Result<std::result::Result<(), String>, tokio::time::error::Elapsed>,
    password: Option<&str>,
) {
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let e = scrub(&e, password);
            tracing::warn!(error = %e, "canceling a source's query failed");
        }
        Err(_) => tracing::warn!("canceling a source's query took too long"),
    }
}

/// The file formats a file source reads, by extension.
#[derive(Debug, Clone, Copy)]
enum FileKind {
    Csv,
    Tsv,
    Json,
    Parquet,
}

impl FileKind {
    fn of(path: &str) -> std::result::Result<Self, String> {
        match extension(path).to_ascii_lowercase().as_str() {
            "csv" => Ok(FileKind::Csv),
            "tsv" => Ok(FileKind::Tsv),
            "json" | "jsonl" | "ndjson" => Ok(FileKind::Json),
            "parquet" => Ok(FileKind::Parquet),
            _ => Err(format!(
                "`{path}`: name a .csv, .tsv, .jsonl (.json, .ndjson) or .parquet file, or a folder as `orders.parquet/`"
            )),
        }
    }

    fn options(self, path: &str) -> ListingOptions {
        let format: Arc<dyn FileFormat> = match self {
            FileKind::Csv => Arc::new(CsvFormat::default().with_has_header(true)),
            FileKind::Tsv => Arc::new(CsvFormat::default().with_has_header(true).with_delimiter(b'\t')),
            FileKind::Json => Arc::new(JsonFormat::default()),
            FileKind::Parquet => Arc::new(ParquetFormat::default()),
        };
        // A folder `orders.parquet/` reads every `.parquet` file under it.
        ListingOptions::new(format).with_file_extension(format!(".{}", extension(path)))
    }
}

/// The extension of a file (or of a folder, `orders.parquet/`), as written.
fn extension(path: &str) -> &str {
    path.trim_end_matches('/').rsplit_once('.').map_or("", |(_, e)| e)
}

/// Registers, as schemas of `ctx`, the sources among `sources` the script
/// reads (`used`), each reached with its secret from `secrets`.
pub async fn register(
    ctx: &SessionContext,
    sources: &[SourceDef],
    used: &[String],
    secrets: &SecretValues,
    remote: &RemoteQueries,
) -> Result<()> {
    let catalog = ctx
        .catalog("datafusion")
        .ok_or_else(|| Error::Internal("default catalog missing".into()))?;
    for source in sources.iter().filter(|s| used.contains(&s.name)) {
        let secret = match &source.secret {
            Some(name) => Some(secrets.get(name).ok_or_else(|| Error::SourceUnavailable {
                name: source.name.clone(),
                message: format!("the workspace secret `{name}` it needs is not set"),
            })?),
            None => None,
        };
        let unavailable = |message: String| Error::SourceUnavailable {
            name: source.name.clone(),
            message: scrub(&message, secret),
        };
        let tables = tokio::time::timeout(CONNECT_TIMEOUT, open(ctx, source, secret, remote))
            .await
            .map_err(|_| unavailable(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs())))?
            .map_err(unavailable)?;
        let schema = Arc::new(MemorySchemaProvider::new());
        for (name, table) in tables {
            schema
                .register_table(name, table)
                .map_err(|e| Error::Internal(e.to_string()))?;
        }
        catalog
            .register_schema(&source.name, schema)
            .map_err(|e| Error::Internal(e.to_string()))?;
    }
    Ok(())
}

type Tables = Vec<(String, Arc<dyn TableProvider>)>;

/// A provider's connection parameters.
type Params = HashMap<String, String>;

/// Reaches `source` and opens its tables; the error is a driver's message.
async fn open(
    ctx: &SessionContext,
    source: &SourceDef,
    secret: Option<&str>,
    remote: &RemoteQueries,
) -> std::result::Result<Tables, String> {
    match source.kind {
        SourceKind::Postgres => {
            let mut params = postgres_params(secret.unwrap_or_default())?;
            reachable(&params["host"], &params["port"]).await?;
            params.insert("application_name".into(), remote.tag.clone());
            remote.watch(params.clone());
            let pool = PostgresConnectionPool::new(to_secret_map(params))
                .await
                .map_err(|e| e.to_string())?;
            let pool = Arc::new(pool);
            let factory = PostgresTableFactory::new(pool.clone());
            let mut tables = database_tables(source, |t| factory.table_provider(t)).await?;
            for (name, q) in &source.queries {
                tables.push((name.clone(), query::open(pool.clone(), name, q).await?));
            }
            Ok(tables)
        }
        SourceKind::Mysql => {
            let (params, (host, port)) = mysql_params(secret.unwrap_or_default())?;
            reachable(&host, &port).await?;
            let pool = mysql::pool(remote.watch_mysql(params)).await?;
            database_tables(source, |t| mysql::table(&pool, t)).await
        }
        SourceKind::Http | SourceKind::S3 => {
            let (root, store) = file_store(source, secret)?;
            // Each source has a store of its own, under a URL of its own:
            // stores are found by scheme and host, which two sources on one
            // server (or one bucket name at two endpoints) share.
            let own = Url::parse(&format!("weir-source://{}/", source.name)).map_err(|e| e.to_string())?;
            ctx.register_object_store(&own, store);
            let mut tables = Tables::new();
            for (name, path) in &source.files {
                let kind = FileKind::of(path)?;
                let under = format!("{}{}", root.trim_start_matches('/'), path.trim_start_matches('/'));
                let url = own.join(&under).map_err(|e| format!("`{path}`: {e}"))?;
                let url = ListingTableUrl::parse(url.as_str()).map_err(|e| format!("`{path}`: {e}"))?;
                let options = kind.options(path);
                let schema = options
                    .infer_schema(&ctx.state(), &url)
                    .await
                    .map_err(|e| format!("`{path}`: {}", first_line(&e.to_string())))?;
                let config = ListingTableConfig::new(url)
                    .with_listing_options(options)
                    .with_schema(schema);
                let table = ListingTable::try_new(config).map_err(|e| format!("`{path}`: {e}"))?;
                tables.push((name.clone(), Arc::new(table) as Arc<dyn TableProvider>));
            }
            Ok(tables)
        }
    }
}

/// The tables of a database source, each opened by `open` (a provider's
/// factory, which reads the table's columns from the database).
async fn database_tables<F, Fut>(source: &SourceDef, open: F) -> std::result::Result<Tables, String>
where
    F: Fn(TableReference) -> Fut,
    Fut: Future<Output = std::result::Result<Arc<dyn TableProvider>, Box<dyn std::error::Error + Send + Sync>>>,
{
    let mut tables = Tables::new();
    for (name, table) in source.table_names().into_iter().take(source.tables.len()) {
        let provider = open(TableReference::parse_str(&table))
            .await
            .map_err(|e| format!("table `{table}`: {e}"))?;
        tables.push((name, provider));
    }
    Ok(tables)
}

/// The store of a file source and the path its files are under in it.
fn file_store(source: &SourceDef, secret: Option<&str>) -> std::result::Result<(String, Arc<dyn ObjectStore>), String> {
    let client = ClientOptions::new()
        .with_allow_http(true)
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(300));
    // A source that does not answer fails the run soon, not after minutes
    // of retries.
    let retry = RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(15),
        ..RetryConfig::default()
    };
    match source.kind {
        SourceKind::Http => {
            let base = source.url.as_deref().unwrap_or_default();
            let mut root = Url::parse(base).map_err(|e| format!("url: {e}"))?;
            if !root.path().ends_with('/') {
                root.set_path(&format!("{}/", root.path()));
            }
            let mut origin = root.clone();
            origin.set_path("/");
            let mut client = client;
            if let Some(value) = secret {
                let mut headers = http::HeaderMap::new();
                let mut value = http::HeaderValue::from_str(value)
                    .map_err(|_| "the secret is not a valid Authorization header value".to_string())?;
                value.set_sensitive(true);
                headers.insert(http::header::AUTHORIZATION, value);
                client = client.with_default_headers(headers);
            }
            let store = HttpBuilder::new()
                .with_url(origin.as_str())
                .with_client_options(client)
                .with_retry(retry)
                .build()
                .map_err(|e| e.to_string())?;
            Ok((root.path().to_string(), Arc::new(store)))
        }
        _ => {
            let bucket = source.bucket.as_deref().unwrap_or_default();
            let mut builder = AmazonS3Builder::new()
                .with_bucket_name(bucket)
                .with_region(source.region.as_deref().unwrap_or("us-east-1"))
                .with_client_options(client)
                .with_retry(retry);
            if let Some(endpoint) = &source.endpoint {
                builder = builder.with_endpoint(endpoint).with_virtual_hosted_style_request(false);
            }
            builder = match secret {
                Some(value) => {
                    let (key, secret) = value
                        .split_once(':')
                        .ok_or_else(|| "the secret is not ACCESS_KEY_ID:SECRET_ACCESS_KEY".to_string())?;
                    builder
                        .with_access_key_id(key.trim())
                        .with_secret_access_key(secret.trim())
                }
                None => builder.with_skip_signature(true),
            };
            Ok((String::new(), Arc::new(builder.build().map_err(|e| e.to_string())?)))
        }
    }
}

/// The provider's parameters for a `postgres://` URL (its parts
/// percent-decoded; `sslmode` and `sslrootcert` the only query parameters).
fn postgres_params(secret: &str) -> std::result::Result<HashMap<String, String>, String> {
    let url = Url::parse(secret).map_err(|_| "the secret is not a postgres:// URL".to_string())?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err("the secret is not a postgres:// URL".into());
    }
    let mut params = HashMap::new();
    let host = url.host_str().unwrap_or("localhost").trim_matches(['[', ']']);
    params.insert("host".into(), host.to_string());
    params.insert("port".into(), url.port().unwrap_or(5432).to_string());
    // The provider writes these into a `key=value` connection string.
    let plain = |what: &str, value: String| {
        if value.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
            Err(format!(
                "the {what} in the URL has a space or quote, which the connection cannot carry"
            ))
        } else {
            Ok(value)
        }
    };
    if !url.username().is_empty() {
        params.insert("user".into(), plain("user name", percent_decode(url.username()))?);
    }
    if let Some(password) = url.password() {
        params.insert("pass".into(), percent_decode(password));
    }
    let db = url.path().trim_start_matches('/');
    if !db.is_empty() {
        params.insert("db".into(), plain("database name", percent_decode(db))?);
    }
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "sslmode" => {
                params.insert("sslmode".into(), value.to_lowercase());
            }
            "sslrootcert" => {
                params.insert("sslrootcert".into(), value.into_owned());
            }
            other => {
                return Err(format!(
                    "the URL parameter `{other}` is not supported (only sslmode, sslrootcert)"
                ));
            }
        }
    }
    Ok(params)
}

/// The provider's parameters for a `mysql://` URL, and its host and port;
/// `sslmode` (disabled, preferred, required) is taken out of the URL for
/// the provider, and no other query parameter is passed on.
fn mysql_params(secret: &str) -> std::result::Result<(Params, (String, String)), String> {
    let mut url = Url::parse(secret).map_err(|_| "the secret is not a mysql:// URL".to_string())?;
    if url.scheme() != "mysql" {
        return Err("the secret is not a mysql:// URL".into());
    }
    let mut params = HashMap::new();
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "sslmode" => {
                params.insert("sslmode".to_string(), value.to_lowercase());
            }
            other => return Err(format!("the URL parameter `{other}` is not supported (only sslmode)")),
        }
    }
    url.set_query(None);
    let host = url
        .host_str()
        .unwrap_or("localhost")
        .trim_matches(['[', ']'])
        .to_string();
    let port = url.port().unwrap_or(3306).to_string();
    params.insert("connection_string".into(), url.to_string());
    Ok((params, (host, port)))
}

/// Whether `host:port` takes a connection within 10 seconds; the providers'
/// own connects block their thread for much longer on a host that drops
/// packets.
async fn reachable(host: &str, port: &str) -> std::result::Result<(), String> {
    let port: u16 = port.parse().map_err(|_| format!("`{port}` is not a port"))?;
    match tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot connect to {host}:{port}: {e}")),
        Err(_) => Err(format!("{host}:{port} did not answer within 10s")),
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// `message` without the secret or any part of it a driver might repeat
/// (a URL's password, raw or decoded).
fn scrub(message: &str, secret: Option<&str>) -> String {
    let Some(secret) = secret.filter(|s| !s.is_empty()) else {
        return message.to_string();
    };
    let mut parts = vec![secret.to_string()];
    if let Ok(url) = Url::parse(secret)
        && let Some(password) = url.password()
    {
        parts.push(password.to_string());
        parts.push(percent_decode(password));
    }
    if let Some((_, after)) = secret.split_once(':') {
        parts.push(after.to_string());
    }
    let mut out = message.to_string();
    for part in parts.iter().filter(|p| p.len() >= 3) {
        out = out.replace(part.as_str(), "***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(toml: &str) -> SourceDef {
        toml::from_str(toml).expect("a source")
    }

    #[test]
    fn a_database_source_needs_a_secret_and_tables() {
        let s = source("name = \"crm\"\nkind = \"postgres\"");
        let p = problems(&[s]);
        let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["sources[0].secret", "sources[0].tables"]);
    }

    #[test]
    fn a_source_cannot_take_a_script_schema_or_a_used_name() {
        let a = source("name = \"input\"\nkind = \"http\"\nurl = \"https://x.test/\"\nfiles = { a = \"a.csv\" }");
        let b = source("name = \"web\"\nkind = \"http\"\nurl = \"https://x.test/\"\nfiles = { a = \"a.csv\" }");
        let p = problems(&[a, b.clone(), b]);
        assert!(p[0].message.contains("script's own schemas"), "{p:?}");
        assert_eq!(p[1].path, "sources[2].name");
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn file_paths_need_a_known_format() {
        let s = source(
            "name = \"lake\"\nkind = \"s3\"\nbucket = \"b\"\nfiles = { a = \"a.xml\", b = \"events.parquet/\" }",
        );
        let p = problems(&[s]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].path, "sources[0].files.a");
    }

    #[test]
    fn two_tables_with_one_name_are_refused() {
        let s = source("name = \"crm\"\nkind = \"mysql\"\nsecret = \"db\"\ntables = [\"a.orders\", \"b.orders\"]");
        let p = problems(&[s]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].message.contains("second table named `orders`"));
    }

    #[test]
    fn a_postgres_url_becomes_parameters_without_losing_odd_passwords() {
        let p =
            postgres_params("postgres://weir:p%40ss%20w%2Bd@db.internal:6543/sales?sslmode=disable").expect("params");
        assert_eq!(p["host"], "db.internal");
        assert_eq!(p["port"], "6543");
        assert_eq!(p["user"], "weir");
        assert_eq!(p["pass"], "p@ss w+d");
        assert_eq!(p["db"], "sales");
        assert_eq!(p["sslmode"], "disable");
        assert!(postgres_params("mysql://x@y/z").is_err());
        let e = postgres_params("postgres://u:hunter2@h/db?password=x").expect_err("unknown parameter");
        assert!(!e.contains("hunter2"));
    }

    #[test]
    fn a_mysql_url_gives_its_sslmode_to_the_provider() {
        let (p, at) = mysql_params("mysql://u:pw@127.0.0.1:3307/shop?sslmode=DISABLED").expect("params");
        assert_eq!(p["sslmode"], "disabled");
        assert_eq!(p["connection_string"], "mysql://u:pw@127.0.0.1:3307/shop");
        assert_eq!(at, ("127.0.0.1".to_string(), "3307".to_string()));
        let e = mysql_params("mysql://u:pw@h/shop?socket=/tmp/x").expect_err("only sslmode");
        assert!(e.contains("`socket`"), "{e}");
    }

    #[test]
    fn a_password_keeps_every_character_and_names_with_spaces_are_refused() {
        let p = postgres_params("postgres://u:a&b%3Dc+d@h/db").expect("params");
        assert_eq!(p["pass"], "a&b=c+d");
        assert_eq!(p["host"], "h");
        assert_eq!(p["port"], "5432");
        let e = postgres_params("postgres://u:pw@h/my%20db").expect_err("a space");
        assert!(e.contains("database name"), "{e}");
    }

    #[test]
    fn file_paths_stay_under_their_source_and_secrets_go_only_over_https() {
        for path in ["https://elsewhere.test/a.csv", "../up.csv", "a.csv?x=1", "a.csv#f"] {
            let s = source(&format!(
                "name = \"web\"\nkind = \"http\"\nurl = \"https://x.test/\"\nfiles = {{ a = \"{path}\" }}"
            ));
            assert_eq!(problems(&[s]).len(), 1, "{path}");
        }
        let clear = source(
            "name = \"web\"\nkind = \"http\"\nurl = \"http://x.test/\"\nsecret = \"token\"\nfiles = { a = \"a.csv\" }",
        );
        let p = problems(&[clear]);
        assert!(p[0].message.contains("https"), "{p:?}");
        let inline =
            source("name = \"web\"\nkind = \"http\"\nurl = \"https://u:pw@x.test/\"\nfiles = { a = \"a.csv\" }");
        assert!(problems(&[inline])[0].message.contains("secret"));
        let pasted =
            source("name = \"crm\"\nkind = \"postgres\"\nsecret = \"postgres://u:hunter2@h/db\"\ntables = [\"t\"]");
        assert!(problems(&[pasted]).iter().all(|p| !p.message.contains("hunter2")));
    }

    #[test]
    fn scrubbing_hides_the_secret_and_its_password() {
        let secret = "postgres://weir:s%3Dcret@h/db";
        let message = "failed for postgres://weir:s%3Dcret@h/db with s=cret and s%3Dcret";
        let clean = scrub(message, Some(secret));
        assert!(!clean.contains("cret"), "{clean}");
        assert_eq!(scrub("key AKIA:verysecret", Some("AKIA:verysecret")), "key ***");
    }

    #[test]
    fn secret_values_debug_shows_names_only() {
        let s = SecretValues::new(BTreeMap::from([("db".to_string(), "hunter2".to_string())]));
        assert_eq!(format!("{s:?}"), "{\"db\"}");
    }
}
