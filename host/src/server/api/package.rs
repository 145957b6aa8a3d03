//! **Dev package** (SPEC §7): `GET /connectors/{c}/dev-package` zips what
//! `weir run` needs to run a connector on a laptop with the same engine:
//!
//! ```text
//! manifest.json   format, engine version, connector id/api_name/version,
//!                 source file {id, name, sha256}, sha256 of every file
//! connector.toml  the definition; its script is script.sql
//! objects.toml    the objects its load steps write to (and their relations')
//! script.sql      the live (or draft) script
//! plugins/        <name>-<version>.wasm of every transform step
//! data/<file>     the given source file, else the connector's sample
//! README.md       how to run it
//! ```
//!
//! A connector holds no secret values (a webhook secret is named by the
//! environment variable that holds it), so none can leak into a package.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use weir_engine::connector::{Connector, PluginRef, SqlSource};
use weir_engine::objects::Objects;

use super::connector_of;
use crate::server::App;
use crate::server::auth::{Caller, Role};
use crate::server::error::{ApiError, ApiResult, Path, ProblemDocument, Query};
use crate::server::state::ConnectorRow;

/// The package format this server writes.
const FORMAT: u32 = 1;

/// `?source_file_id=&version=` of a dev package.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DevPackageParams {
    /// The input file to include (an execution's `source_file_id`); the
    /// connector's sample when absent.
    pub source_file_id: Option<String>,
    /// `live` (default) or `draft`.
    pub version: Option<String>,
}

/// Downloads the connector as a dev package zip for `weir run`.
#[utoipa::path(get, path = "/connectors/{connector}/dev-package", tag = "connectors",
    params(("connector" = String, Path, description = "Connector id or api_name"), DevPackageParams),
    responses(
        (status = 200, content_type = "application/zip", body = Vec<u8>, description = "The package"),
        (status = 401, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, body = ProblemDocument, content_type = "application/problem+json"),
    ))]
pub async fn dev_package(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(c): Path<String>,
    Query(params): Query<DevPackageParams>,
) -> ApiResult<Response> {
    caller.require(Role::Operator)?;
    let row = connector_of(&app, &caller, &c)?;
    let version = match params.version.as_deref() {
        None | Some("live") => row.live_version.ok_or_else(|| {
            ApiError::conflict(
                "no_live_script",
                "the connector has no live SQL script; ask for ?version=draft or publish first",
            )
        })?,
        Some("draft") => row.draft_version,
        Some(other) => {
            return Err(ApiError::invalid(
                "validation_failed",
                format!("version is `live` or `draft`, not `{other}`"),
                vec![],
            ));
        }
    };
    let bytes = tokio::task::spawn_blocking(move || build(&app, &caller, &row, version, params.source_file_id))
        .await
        .map_err(ApiError::internal)??;
    let mut response = bytes.0.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/zip"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}\"", bytes.1)) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// The zip's bytes and its file name.
fn build(
    app: &App,
    caller: &Caller,
    row: &ConnectorRow,
    version: u32,
    source_file_id: Option<String>,
) -> ApiResult<(Vec<u8>, String)> {
    let mut connector: Connector = serde_json::from_str(&row.definition).map_err(ApiError::internal)?;
    let script = app
        .db
        .sql_version(&row.id, version)?
        .ok_or_else(|| ApiError::internal("a SQL version is missing"))?;
    connector.sql = SqlSource {
        file: Some("script.sql".into()),
        text: None,
    };
    let file_id = source_file_id.or_else(|| row.sample_file_id.clone());
    let file = match &file_id {
        Some(id) => Some(
            app.db
                .file(&caller.workspace_id, id)?
                .ok_or_else(|| ApiError::invalid("unknown_file", format!("there is no file `{id}`"), vec![]))?,
        ),
        None => None,
    };

    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    files.insert(
        "connector.toml".into(),
        connector.to_toml().map_err(ApiError::internal)?.into_bytes(),
    );
    files.insert("script.sql".into(), script.text.into_bytes());
    let objects = objects_of(app, &caller.workspace_id, &connector)?;
    if !objects.objects.is_empty() {
        let text = toml::to_string_pretty(&objects).map_err(ApiError::internal)?;
        files.insert("objects.toml".into(), text.into_bytes());
    }
    for t in &connector.transforms {
        let plugin = PluginRef::parse(&t.plugin).map_err(ApiError::internal)?;
        let stored = match &plugin {
            PluginRef::Named { name, version } => app.db.plugin(&caller.workspace_id, name, version)?,
            PluginRef::Sha256(hex) => app.db.plugin_by_sha(&caller.workspace_id, hex)?,
        }
        .ok_or_else(|| {
            ApiError::conflict(
                "unknown_plugin",
                format!("transform plugin {plugin} is not published in this workspace"),
            )
        })?;
        let bytes = std::fs::read(app.files.path(&stored.sha256)).map_err(ApiError::internal)?;
        files.insert(format!("plugins/{}-{}.wasm", stored.name, stored.version), bytes);
    }
    if let Some(file) = &file {
        let bytes = std::fs::read(app.files.path(&file.sha256)).map_err(ApiError::internal)?;
        files.insert(format!("data/{}", file.name), bytes);
    }
    files.insert(
        "README.md".into(),
        readme(&row.api_name, file.as_ref().map(|f| f.name.as_str())).into_bytes(),
    );

    let hashes: BTreeMap<&str, String> = files
        .iter()
        .map(|(name, bytes)| (name.as_str(), hex::encode(Sha256::digest(bytes))))
        .collect();
    let manifest = serde_json::json!({
        "format": FORMAT,
        "engine_version": env!("CARGO_PKG_VERSION"),
        "connector": {"id": row.id, "api_name": row.api_name, "version": version},
        "source_file": file.as_ref().map(|f| serde_json::json!({"id": f.sha256, "name": f.name, "sha256": f.sha256})),
        "files": hashes,
        "created_at": chrono::Utc::now().to_rfc3339(),
    });
    let manifest = serde_json::to_vec_pretty(&manifest).map_err(ApiError::internal)?;

    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in std::iter::once(("manifest.json", &manifest)).chain(files.iter().map(|(n, b)| (n.as_str(), b)))
    {
        zip.start_file(name, options).map_err(ApiError::internal)?;
        zip.write_all(bytes).map_err(ApiError::internal)?;
    }
    let bytes = zip.finish().map_err(ApiError::internal)?.into_inner();
    Ok((bytes, format!("{}-v{version}.zip", row.api_name)))
}

/// The objects the connector's load steps write to, with the objects their
/// relation fields point to.
fn objects_of(app: &App, workspace_id: &str, connector: &Connector) -> ApiResult<Objects> {
    let all = app.db.object_defs(workspace_id)?;
    let mut wanted: BTreeSet<String> = connector.loads.iter().map(|l| l.object.clone()).collect();
    let mut queue: Vec<String> = wanted.iter().cloned().collect();
    while let Some(name) = queue.pop() {
        if let Some(def) = all.get(&name) {
            for target in def.fields.iter().filter_map(|f| f.object.clone()) {
                if wanted.insert(target.clone()) {
                    queue.push(target);
                }
            }
        }
    }
    Ok(Objects {
        objects: all.objects.into_iter().filter(|o| wanted.contains(&o.name)).collect(),
    })
}

fn readme(api_name: &str, data: Option<&str>) -> String {
    let input = data.map_or_else(String::new, |d| format!(" (its input is data/{d})"));
    format!(
        "# {api_name}: dev package\n\n\
         Runs locally with the same engine as the server{input}:\n\n\
         ```sh\n\
         weir run {api_name}.zip --out out           # or: unzip it and run the directory\n\
         weir run . --input other.csv --dry-run      # another input, nothing written\n\
         ```\n\n\
         `out/output/<scope>.csv`, `out/report.xlsx` and `out/rejected.csv` are what the server\n\
         writes for the same input; load steps write to `out/records.db` (`--db` for another).\n\
         Edit `script.sql`, then `weir package push` sends it back as the connector's draft.\n"
    )
}
